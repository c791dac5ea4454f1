#include "strategy/sharding_strategy.hpp"
#include "strategy/weight_sharding.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace shardflow {

// ---- ShardingStrategy ---------------------------------------------------------------------

ShardingStrategy::ShardingStrategy(std::string axis_name, int mesh_axis)
    : axis_name_(std::move(axis_name)), mesh_axis_(mesh_axis) {
  const auto& known = known_axis_names();
  SHARDFLOW_REQUIRE_INPUT(std::find(known.begin(), known.end(), axis_name_) != known.end(),
                          "sharding strategy: unknown mesh axis '", axis_name_, "'");
  SHARDFLOW_REQUIRE_INPUT(mesh_axis_ >= -1, "sharding strategy on axis '", axis_name_, "': mesh_axis ", mesh_axis_,
                          " must be >= 0 (or -1 to look it up)");
}

void ShardingStrategy::check_mesh(const MeshShape& mesh) const {
  const int idx = mesh.axis_index(axis_name_);  // throws naming the axis when absent
  SHARDFLOW_REQUIRE_INPUT(mesh_axis_ < 0 || mesh_axis_ == idx, type_name(), ": axis '", axis_name_,
                          "' was given as mesh axis ", mesh_axis_, " but it is axis ", idx, " of mesh ",
                          mesh.to_string());
}

Layout ShardingStrategy::get_layout(const Shape& shape, const MeshShape& mesh) const {
  check_mesh(mesh);
  return Layout(shape, get_tensor_spec(shape, mesh), mesh);
}

std::map<std::string, std::string> ShardingStrategy::get_sharding_constraints() const {
  return {{"type", type_name()}, {"axis_name", axis_name_}, {"mesh_axis", std::to_string(mesh_axis_)}};
}

// ---- DataParallelStrategy -------------------------------------------------------------------

DataParallelStrategy::DataParallelStrategy(std::string axis_name, int mesh_axis)
    : ShardingStrategy(std::move(axis_name), mesh_axis) {}

PartitionSpec DataParallelStrategy::get_partition_spec(const DimNames& dims) const {
  PartitionSpec s = PartitionSpec::replicated(dims.size());
  for (size_t d = 0; d < dims.size(); ++d)
    if (dims[d] == "batch") s[d] = {axis_name()};
  return s;
}

PartitionSpec DataParallelStrategy::get_tensor_spec(const Shape& shape, const MeshShape& mesh) const {
  SHARDFLOW_REQUIRE_INPUT(!shape.empty(), type_name(), ": a 0-d tensor has no batch dimension to split");
  PartitionSpec s = PartitionSpec::replicated(shape.size());
  s[0] = {axis_name()};
  return s;
}

// ---- FSDPStrategy ---------------------------------------------------------------------------

FSDPStrategy::FSDPStrategy(std::string axis_name, int mesh_axis, int64_t min_weight_size)
    : ShardingStrategy(std::move(axis_name), mesh_axis), min_weight_size_(min_weight_size) {
  SHARDFLOW_REQUIRE_INPUT(min_weight_size_ >= 0, "FSDPStrategy: min_weight_size ", min_weight_size_, " must be >= 0");
}

bool FSDPStrategy::should_shard_weight(const Shape& shape) const {
  return !shape.empty() && numel(shape) >= min_weight_size_;
}

int FSDPStrategy::choose_shard_dim(const Shape& shape, int64_t n, const std::vector<bool>& excluded) {
  SHARDFLOW_REQUIRE(n >= 1, "FSDP: axis size ", n, " must be >= 1");
  auto allowed = [&](size_t d) { return excluded.empty() || !excluded.at(d); };
  int best = -1;
  for (size_t d = 0; d < shape.size(); ++d)
    if (allowed(d) && shape[d] % n == 0 && shape[d] > 0 && (best < 0 || shape[d] > shape[static_cast<size_t>(best)]))
      best = static_cast<int>(d);
  if (best >= 0) return best;
  for (size_t d = 0; d < shape.size(); ++d)
    if (allowed(d) && (best < 0 || shape[d] > shape[static_cast<size_t>(best)])) best = static_cast<int>(d);
  return best;
}

int FSDPStrategy::shard_dim(const Shape& shape, int64_t n) const {
  if (!should_shard_weight(shape)) return -1;
  return choose_shard_dim(shape, n);
}

PartitionSpec FSDPStrategy::get_partition_spec(const DimNames& dims) const {
  static const DimNames weight_dims{"out_features", "in_features", "features", "hidden", "vocab", "ffn", "experts"};
  PartitionSpec s = PartitionSpec::replicated(dims.size());
  if (!dims.empty() && std::find(weight_dims.begin(), weight_dims.end(), dims[0]) != weight_dims.end())
    s[0] = {axis_name()};
  return s;
}

PartitionSpec FSDPStrategy::get_tensor_spec(const Shape& shape, const MeshShape& mesh) const {
  PartitionSpec s = PartitionSpec::replicated(shape.size());
  const int d = shard_dim(shape, mesh.axis_size(axis_name()));
  if (d >= 0) s[static_cast<size_t>(d)] = {axis_name()};
  return s;
}

std::map<std::string, std::string> FSDPStrategy::get_sharding_constraints() const {
  auto c = ShardingStrategy::get_sharding_constraints();
  c["min_weight_size"] = std::to_string(min_weight_size_);
  return c;
}

// ---- TensorParallelStrategy -----------------------------------------------------------------

TensorParallelStrategy::TensorParallelStrategy(std::string axis_name, int mesh_axis, std::string shard_dimension)
    : ShardingStrategy(std::move(axis_name), mesh_axis), shard_dimension_(std::move(shard_dimension)) {}

PartitionSpec TensorParallelStrategy::get_partition_spec(const DimNames& dims) const {
  const std::string& target = shard_dimension_.empty() ? std::string("hidden") : shard_dimension_;
  PartitionSpec s = PartitionSpec::replicated(dims.size());
  for (size_t d = 0; d < dims.size(); ++d)
    if (dims[d] == target) {
      s[d] = {axis_name()};
      break;  // an axis splits one dimension only
    }
  return s;
}

PartitionSpec TensorParallelStrategy::get_tensor_spec(const Shape& shape, const MeshShape& mesh) const {
  SHARDFLOW_REQUIRE_INPUT(!shape.empty(), type_name(), ": a 0-d tensor cannot be split");
  if (shape.size() == 2) return get_linear_weight_spec();
  PartitionSpec s = PartitionSpec::replicated(shape.size());
  s[shape.size() - 1] = {axis_name()};
  return s;
}

PartitionSpec TensorParallelStrategy::get_attention_qkv_spec() const {
  return PartitionSpec{{}, {axis_name()}, {}, {}};
}

PartitionSpec TensorParallelStrategy::get_attention_output_spec() const { return PartitionSpec{{}, {axis_name()}, {}}; }

PartitionSpec TensorParallelStrategy::get_linear_weight_spec() const {
  if (shard_dimension_ == "in_features") return PartitionSpec{{}, {axis_name()}};
  return PartitionSpec{{axis_name()}, {}};
}

PartitionSpec TensorParallelStrategy::get_weight_spec(ParamKind kind, const Shape& weight_shape, int num_heads,
                                                      int head_dim, const MeshShape& mesh) const {
  check_mesh(mesh);
  const WeightSharding ws = WeightSharding::tensor_parallel(kind, num_heads, head_dim);
  const WeightView v = ws.view(weight_shape, axis_name());
  if (kind == ParamKind::KeyValue) {
    // grouped-query attention: split the kv heads only where each device's query heads use
    // exactly its kv heads; otherwise every device keeps all of them (kv_heads_aligned)
    const int64_t kv = v.view_shape.at(1);
    if (!kv_heads_aligned(num_heads, kv, mesh.axis_size(axis_name())))
      return PartitionSpec::replicated(v.view_shape.size());
  }
  if (v.split_dim >= 0) ws.validate(weight_shape, mesh.axis_size(axis_name()));
  return v.spec;
}

std::map<std::string, std::string> TensorParallelStrategy::get_sharding_constraints() const {
  auto c = ShardingStrategy::get_sharding_constraints();
  c["shard_dimension"] = shard_dimension_.empty() ? "hidden" : shard_dimension_;
  return c;
}

// ---- PipelineParallelStrategy ---------------------------------------------------------------

PipelineParallelStrategy::PipelineParallelStrategy(std::string axis_name, int mesh_axis, int num_stages)
    : ShardingStrategy(std::move(axis_name), mesh_axis), num_stages_(num_stages) {
  SHARDFLOW_REQUIRE_INPUT(num_stages_ >= 1, "PipelineParallelStrategy: num_stages ", num_stages_, " must be >= 1");
}

std::vector<int> PipelineParallelStrategy::assign_layers_to_stages(int num_layers) const {
  SHARDFLOW_REQUIRE_INPUT(num_layers >= 1, "pipeline: number of layers ", num_layers, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(num_layers >= num_stages_, "pipeline: ", num_stages_, " stages but only ", num_layers,
                          " layers (every stage needs at least one layer)");
  std::vector<int> out(static_cast<size_t>(num_stages_));
  for (int s = 0; s < num_stages_; ++s)
    out[static_cast<size_t>(s)] = static_cast<int>(split_extent(num_layers, num_stages_, s));
  return out;
}

int PipelineParallelStrategy::stage_of_layer(int layer, int num_layers) const {
  SHARDFLOW_REQUIRE_INPUT(layer >= 0 && layer < num_layers, "pipeline: layer ", layer, " out of range [0, ", num_layers,
                          ")");
  auto counts = assign_layers_to_stages(num_layers);
  int first = 0;
  for (int s = 0; s < num_stages_; ++s) {
    first += counts[static_cast<size_t>(s)];
    if (layer < first) return s;
  }
  throw Error("pipeline: layer assignment does not cover layer " + std::to_string(layer));
}

std::vector<StageTransfer> PipelineParallelStrategy::get_forward_communication_pattern() const {
  std::vector<StageTransfer> out;
  for (int s = 0; s + 1 < num_stages_; ++s) out.push_back({s, s + 1, "activations"});
  return out;
}

std::vector<StageTransfer> PipelineParallelStrategy::get_backward_communication_pattern() const {
  std::vector<StageTransfer> out;
  for (int s = num_stages_ - 1; s >= 1; --s) out.push_back({s, s - 1, "activation gradients"});
  return out;
}

PartitionSpec PipelineParallelStrategy::get_partition_spec(const DimNames& dims) const {
  return PartitionSpec::replicated(dims.size());
}

PartitionSpec PipelineParallelStrategy::get_tensor_spec(const Shape& shape, const MeshShape& mesh) const {
  return PartitionSpec::replicated(shape.size());
}

Layout PipelineParallelStrategy::get_stage_layout(const Shape& shape, const MeshShape& mesh, int stage) const {
  check_mesh(mesh);
  SHARDFLOW_REQUIRE_INPUT(mesh.axis_size(axis_name()) == num_stages_, type_name(), ": ", num_stages_,
                          " stages but mesh axis '", axis_name(), "' has size ", mesh.axis_size(axis_name()));
  SHARDFLOW_REQUIRE_INPUT(stage >= 0 && stage < num_stages_, type_name(), ": stage ", stage, " out of range [0, ",
                          num_stages_, ")");
  return Layout(shape, PartitionSpec::replicated(shape.size()), mesh, {{axis_name(), stage}});
}

std::map<std::string, std::string> PipelineParallelStrategy::get_sharding_constraints() const {
  auto c = ShardingStrategy::get_sharding_constraints();
  c["num_stages"] = std::to_string(num_stages_);
  return c;
}

// ---- MultiDimensionalStrategy ---------------------------------------------------------------

namespace {
std::string describe(const MultiDimensionalStrategy::Entry& e) {
  return "'" + e.first + "' (" + e.second->type_name() + ")";
}
bool dp_fsdp_pair(const ShardingStrategy& a, const ShardingStrategy& b) {
  auto t1 = a.type_name(), t2 = b.type_name();
  return (t1 == "DataParallelStrategy" && t2 == "FSDPStrategy") ||
         (t1 == "FSDPStrategy" && t2 == "DataParallelStrategy");
}
}  // namespace

MultiDimensionalStrategy::MultiDimensionalStrategy(std::vector<Entry> strategies, ParallelismConfig config)
    : strategies_(std::move(strategies)), config_(std::move(config)), mesh_(config_.to_mesh_shape()) {
  for (size_t i = 0; i < strategies_.size(); ++i) {
    const auto& a = strategies_[i];
    SHARDFLOW_REQUIRE_INPUT(a.second != nullptr, "multi-dimensional strategy: strategy '", a.first, "' is null");
    SHARDFLOW_REQUIRE_INPUT(mesh_.has_axis(a.second->axis_name()), "multi-dimensional strategy: strategy ", describe(a),
                            " uses mesh axis '", a.second->axis_name(), "' which mesh ", mesh_.to_string(),
                            " does not have");
    if (a.second->mesh_axis() >= 0)
      SHARDFLOW_REQUIRE_INPUT(a.second->mesh_axis() == mesh_.axis_index(a.second->axis_name()),
                              "multi-dimensional strategy: strategy ", describe(a), " gives axis '",
                              a.second->axis_name(), "' index ", a.second->mesh_axis(), " but it is axis ",
                              mesh_.axis_index(a.second->axis_name()), " of mesh ", mesh_.to_string());
    for (size_t j = 0; j < i; ++j) {
      const auto& b = strategies_[j];
      SHARDFLOW_REQUIRE_INPUT(a.first != b.first, "multi-dimensional strategy: two strategies are named '", a.first,
                              "'");
      SHARDFLOW_REQUIRE_INPUT(a.second->type_name() != b.second->type_name(), "conflicting strategies ", describe(b),
                              " and ", describe(a), ": two strategies of the same type");
      SHARDFLOW_REQUIRE_INPUT(a.second->axis_name() != b.second->axis_name() || dp_fsdp_pair(*a.second, *b.second),
                              "conflicting strategies ", describe(b), " and ", describe(a), " both use mesh axis '",
                              a.second->axis_name(), "'");
    }
    if (auto* pp = dynamic_cast<const PipelineParallelStrategy*>(a.second.get()))
      SHARDFLOW_REQUIRE_INPUT(pp->num_stages() == mesh_.axis_size(pp->axis_name()), "strategy ", describe(a), " has ",
                              pp->num_stages(), " stages but mesh axis '", pp->axis_name(), "' has size ",
                              mesh_.axis_size(pp->axis_name()));
  }
}

const MultiDimensionalStrategy::Entry& MultiDimensionalStrategy::find(const std::string& name) const {
  for (const auto& e : strategies_)
    if (e.first == name) return e;
  throw InputError("multi-dimensional strategy has no strategy named '" + name + "'");
}

PartitionSpec MultiDimensionalStrategy::resolve_sharding_conflicts(
    const std::string& tensor_name, const std::vector<std::pair<std::string, PartitionSpec>>& proposed) const {
  if (proposed.empty()) return PartitionSpec();
  const size_t nd = proposed.front().second.ndim();
  std::vector<std::pair<const Entry*, const PartitionSpec*>> order;
  for (const auto& p : proposed) {
    SHARDFLOW_REQUIRE_INPUT(p.second.ndim() == nd, "tensor '", tensor_name, "': strategy '", p.first, "' proposes ",
                            p.second.to_string(), " with ", p.second.ndim(), " dimensions, others ", nd);
    order.emplace_back(&find(p.first), &p.second);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto& x, const auto& y) {
    return x.first->second->priority() > y.first->second->priority();
  });
  PartitionSpec out = PartitionSpec::replicated(nd);
  std::map<std::string, std::pair<const Entry*, size_t>> owner;  // axis → (strategy, dim)
  for (const auto& [entry, spec] : order) {
    for (size_t d = 0; d < nd; ++d)
      for (const auto& axis : (*spec)[d]) {
        auto it = owner.find(axis);
        if (it != owner.end()) {
          if (it->second.second == d) continue;  // the same claim again
          SHARDFLOW_REQUIRE_INPUT(dp_fsdp_pair(*it->second.first->second, *entry->second), "tensor '", tensor_name,
                                  "': strategies ", describe(*it->second.first), " and ", describe(*entry),
                                  " both split mesh axis '", axis, "' (dimensions ", it->second.second, " and ", d,
                                  ")");
          continue;  // FSDP (higher priority) keeps the axis; the data claim is dropped
        }
        owner[axis] = {entry, d};
        out[d].push_back(axis);
      }
  }
  out.validate(mesh_);
  return out;
}

PartitionSpec MultiDimensionalStrategy::get_combined_partition_spec(const std::string& tensor_name,
                                                                    const DimNames& dims) const {
  std::vector<std::pair<std::string, PartitionSpec>> proposed;
  for (const auto& e : strategies_) proposed.emplace_back(e.first, e.second->get_partition_spec(dims));
  if (proposed.empty()) return PartitionSpec::replicated(dims.size());
  return resolve_sharding_conflicts(tensor_name, proposed);
}

PartitionSpec MultiDimensionalStrategy::get_combined_partition_spec(const std::string& tensor_name,
                                                                    const Shape& shape) const {
  std::vector<std::pair<std::string, PartitionSpec>> proposed;
  std::vector<bool> split(shape.size(), false);
  std::vector<const Entry*> sorted;
  for (const auto& e : strategies_) sorted.push_back(&e);
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const Entry* x, const Entry* y) { return x->second->priority() > y->second->priority(); });
  for (const Entry* e : sorted) {
    const ShardingStrategy& s = *e->second;
    PartitionSpec p = PartitionSpec::replicated(shape.size());
    if (auto* fsdp = dynamic_cast<const FSDPStrategy*>(&s)) {
      if (fsdp->should_shard_weight(shape)) {
        const int64_t n = mesh_.axis_size(s.axis_name());
        int d = FSDPStrategy::choose_shard_dim(shape, n, split);
        if (d < 0) d = FSDPStrategy::choose_shard_dim(shape, n);  // every dim split: compose onto one
        if (d >= 0) p[static_cast<size_t>(d)] = {s.axis_name()};
      }
    } else if (dynamic_cast<const TensorParallelStrategy*>(&s)) {
      if (!shape.empty()) p = s.get_tensor_spec(shape, mesh_);
    }
    // Data and pipeline parallelism leave parameters unsplit.
    for (size_t d = 0; d < shape.size(); ++d)
      if (!p[d].empty()) split[d] = true;
    proposed.emplace_back(e->first, p);
  }
  if (proposed.empty()) return PartitionSpec::replicated(shape.size());
  return resolve_sharding_conflicts(tensor_name, proposed);
}

Layout MultiDimensionalStrategy::get_combined_layout(const std::string& tensor_name, const Shape& shape) const {
  return Layout(shape, get_combined_partition_spec(tensor_name, shape), mesh_);
}

}  // namespace shardflow
