#include "strategy/sharding_config.hpp"

#include "mesh/axes.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace shardflow {

int ShardingConfig::get_total_device_count() const {
  return data_parallel_size * tensor_parallel_size * pipeline_parallel_size * fsdp_parallel_size *
         expert_parallel_size * context_parallel_size;
}

void ShardingConfig::validate() const {
  const std::pair<const char*, int> sizes[] = {{"data_parallel_size", data_parallel_size},
                                               {"tensor_parallel_size", tensor_parallel_size},
                                               {"pipeline_parallel_size", pipeline_parallel_size},
                                               {"fsdp_parallel_size", fsdp_parallel_size},
                                               {"expert_parallel_size", expert_parallel_size},
                                               {"context_parallel_size", context_parallel_size}};
  for (const auto& s : sizes)
    SHARDFLOW_REQUIRE_INPUT(s.second >= 1, "ShardingConfig: ", s.first, " = ", s.second, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(fsdp_min_weight_size >= 0, "ShardingConfig: fsdp_min_weight_size = ", fsdp_min_weight_size,
                          " must be >= 0");
}

ShardingConfig ShardingConfig::from_device_count(int device_count) {
  SHARDFLOW_REQUIRE_INPUT(device_count >= 1, "ShardingConfig::from_device_count: device count ", device_count,
                          " must be >= 1");
  ShardingConfig c;
  if (device_count <= 4) {
    c.data_parallel_size = device_count;
    return c;
  }
  const int cap = std::min(8, static_cast<int>(std::sqrt(static_cast<double>(device_count))));
  int t = 1;
  for (int d = 1; d <= cap; ++d)
    if (device_count % d == 0) t = d;
  c.tensor_parallel_size = t;
  c.data_parallel_size = device_count / t;
  return c;
}

ParallelismConfig ParallelismConfig::from_sharding_config(const ShardingConfig& config) {
  config.validate();
  ParallelismConfig p;
  p.sharding_config = config;
  const std::pair<const char*, int> axes[] = {{axis::data, config.data_parallel_size},
                                              {axis::fsdp, config.fsdp_parallel_size},
                                              {axis::pipeline, config.pipeline_parallel_size},
                                              {axis::expert, config.expert_parallel_size},
                                              {axis::context, config.context_parallel_size},
                                              {axis::tensor, config.tensor_parallel_size}};
  for (const auto& a : axes)
    if (a.second > 1) {
      p.mesh_axis_names.emplace_back(a.first);
      p.mesh_shape.push_back(a.second);
    }
  if (p.mesh_shape.empty()) {
    p.mesh_axis_names = {axis::data};
    p.mesh_shape = {1};
  }
  return p;
}

std::vector<std::string> ParallelismConfig::canonical_axis_names() const {
  std::vector<std::string> out;
  for (const auto& n : mesh_axis_names) out.push_back(axis::canonical(n));
  return out;
}

std::string ParallelismConfig::invalid_reason() const {
  if (mesh_shape.size() != mesh_axis_names.size())
    return detail::concat("mesh has ", mesh_shape.size(), " sizes but ", mesh_axis_names.size(), " axis names");
  try {
    MeshShape m(canonical_axis_names(), mesh_shape);
    sharding_config.validate();
    if (m.size() != sharding_config.get_total_device_count())
      return detail::concat("mesh ", m.to_string(), " has ", m.size(), " devices but the sharding config needs ",
                            sharding_config.get_total_device_count());
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

bool ParallelismConfig::is_valid() const { return invalid_reason().empty(); }

MeshShape ParallelismConfig::to_mesh_shape() const {
  const std::string why = invalid_reason();
  SHARDFLOW_REQUIRE_INPUT(why.empty(), "invalid parallelism config: ", why);
  return MeshShape(canonical_axis_names(), mesh_shape);
}

}  // namespace shardflow
