#include "strategy/device_mesh_manager.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <sstream>

#include "core/error.hpp"

namespace shardflow {

// ---- model sizes ------------------------------------------------------------------------

double parse_model_size(const std::string& text) {
  SHARDFLOW_REQUIRE_INPUT(!text.empty(), "model size is empty (expected e.g. 7B, 350M or a parameter count)");
  std::string num = text;
  double scale = 1.0;
  const char last = static_cast<char>(std::toupper(static_cast<unsigned char>(text.back())));
  if (last == 'B' || last == 'M' || last == 'K' || last == 'T') {
    num = text.substr(0, text.size() - 1);
    scale = last == 'T' ? 1e12 : last == 'B' ? 1e9 : last == 'M' ? 1e6 : 1e3;
  }
  char* end = nullptr;
  const double v = std::strtod(num.c_str(), &end);
  SHARDFLOW_REQUIRE_INPUT(!num.empty() && end == num.c_str() + num.size() && std::isfinite(v) && v > 0, "model size '",
                          text, "' is not a positive number of parameters (expected e.g. 7B, 350M, 2e9)");
  return v * scale;
}

TransformerDims llama_like_dims(const std::string& model_size) {
  std::string up = model_size;
  for (auto& c : up) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (up == "7B") return {32000, 4096, 32, 32, 11008};
  if (up == "13B") return {32000, 5120, 40, 40, 13824};
  if (up == "30B" || up == "33B") return {32000, 6656, 60, 52, 17920};
  if (up == "65B") return {32000, 8192, 80, 64, 22016};
  if (up == "70B") return {32000, 8192, 80, 64, 28672};
  return llama_like_dims(parse_model_size(model_size));
}

TransformerDims llama_like_dims(double params) {
  SHARDFLOW_REQUIRE_INPUT(params > 0, "model size ", params, " must be > 0 parameters");
  TransformerDims d;
  const double h = std::cbrt(128.0 * params / 12.0);
  d.hidden = std::max<int64_t>(128, static_cast<int64_t>(std::llround(h / 128.0)) * 128);
  d.heads = d.hidden / 128;
  d.layers = std::max<int64_t>(1, std::llround(params / (12.0 * static_cast<double>(d.hidden * d.hidden))));
  d.ffn = (8 * d.hidden / 3 + 255) / 256 * 256;
  return d;
}

double transformer_param_count(const TransformerDims& d) {
  const double h = static_cast<double>(d.hidden), f = static_cast<double>(d.ffn);
  const double per_layer = 4 * h * h + 3 * h * f + 2 * h;
  return static_cast<double>(d.layers) * per_layer + 2 * static_cast<double>(d.vocab) * h + h;
}

// ---- DeviceMeshManager -------------------------------------------------------------------

DeviceMeshManager::DeviceMeshManager(std::vector<int> mesh_shape, std::vector<std::string> axis_names)
    : shape_(create_mesh(mesh_shape, axis_names)) {}

MeshShape DeviceMeshManager::create_mesh(const std::vector<int>& mesh_shape,
                                         const std::vector<std::string>& axis_names) const {
  return MeshShape(axis_names, mesh_shape);
}

MeshShape DeviceMeshManager::create_mesh_from_config(const ParallelismConfig& config) const {
  return config.to_mesh_shape();
}

Mesh DeviceMeshManager::bind(MPI_Comm world) const { return Mesh(shape_, world); }

std::vector<int> DeviceMeshManager::get_optimal_mesh_shape(int device_count, int dimensions) const {
  SHARDFLOW_REQUIRE_INPUT(device_count >= 1, "get_optimal_mesh_shape: device count ", device_count, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(dimensions >= 1, "get_optimal_mesh_shape: number of dimensions ", dimensions,
                          " must be >= 1");
  std::vector<int> best, cur;
  double best_cost = 0;
  // Non-increasing factorisations, largest factor first.
  std::function<void(int, int, int)> rec = [&](int rest, int k, int max_factor) {
    if (k == 1) {
      if (rest > max_factor) return;
      cur.push_back(rest);
      double cost = 0;
      for (int f : cur) cost += std::log(static_cast<double>(f)) * std::log(static_cast<double>(f));
      if (best.empty() || cost < best_cost - 1e-12) {
        best = cur;
        best_cost = cost;
      }
      cur.pop_back();
      return;
    }
    for (int f = std::min(rest, max_factor); f >= 1; --f)
      if (rest % f == 0) {
        cur.push_back(f);
        rec(rest / f, k - 1, f);
        cur.pop_back();
      }
  };
  rec(device_count, dimensions, device_count);
  return best;
}

namespace {
std::vector<int> divisors(int n) {
  std::vector<int> out;
  for (int d = 1; d <= n; ++d)
    if (n % d == 0) out.push_back(d);
  return out;
}
std::string gb(double bytes) {
  std::ostringstream os;
  os.precision(3);
  os << bytes / 1e9 << " GB";
  return os.str();
}
}  // namespace

TransformerMeshPlan DeviceMeshManager::plan_transformer_mesh(int device_count, const TransformerDims& dims,
                                                             double params, int64_t sequence_length, int gpus_per_node,
                                                             double memory_per_device_gib) const {
  SHARDFLOW_REQUIRE_INPUT(device_count >= 1, "optimize_for_transformer: device count ", device_count, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(gpus_per_node >= 1, "optimize_for_transformer: gpus per node ", gpus_per_node,
                          " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(sequence_length >= 1, "optimize_for_transformer: sequence length ", sequence_length,
                          " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(memory_per_device_gib > 0, "optimize_for_transformer: memory per device ",
                          memory_per_device_gib, " GiB must be > 0");
  SHARDFLOW_REQUIRE_INPUT(params > 0, "optimize_for_transformer: parameter count ", params, " must be > 0");
  SHARDFLOW_REQUIRE_INPUT(dims.hidden >= 1 && dims.heads >= 1 && dims.layers >= 1, "optimize_for_transformer: hidden ",
                          dims.hidden, ", heads ", dims.heads, " and layers ", dims.layers, " must be >= 1");
  const double M = memory_per_device_gib * 1024.0 * 1024.0 * 1024.0;
  const double S = static_cast<double>(sequence_length), H = static_cast<double>(dims.hidden),
               A = static_cast<double>(dims.heads);
  auto states = [&](int k) { return 16.0 * params / k; };
  auto act = [&](int t, int p) {
    const double layers = static_cast<double>((dims.layers + p - 1) / p);
    return layers * S * H * (10.0 + 24.0 / t + 5.0 * A * S / (H * t));
  };
  auto fits = [&](int t, int p, int z) { return states(t * p * z) + act(t, p) <= M; };

  TransformerMeshPlan plan;
  plan.memory_bytes = M;
  std::vector<int> tensor_options;
  for (int t : divisors(device_count))
    if (gpus_per_node % t == 0) tensor_options.push_back(t);
  plan.tensor = tensor_options.back();
  bool tensor_fits = false;
  for (int t : tensor_options)
    if (fits(t, 1, 1)) {
      plan.tensor = t;
      tensor_fits = true;
      break;
    }
  std::vector<int> pipe_options;
  for (int p : divisors(device_count / plan.tensor))
    if (p <= dims.layers) pipe_options.push_back(p);
  plan.pipeline = pipe_options.back();
  bool pipeline_fits = false;
  for (int p : pipe_options)
    if (fits(plan.tensor, p, 1)) {
      plan.pipeline = p;
      pipeline_fits = true;
      break;
    }
  plan.replicas = device_count / (plan.tensor * plan.pipeline);
  const int mp = plan.tensor * plan.pipeline;
  if (fits(plan.tensor, plan.pipeline, 1)) {
    plan.shard_states = false;
    plan.state_bytes = states(mp);
  } else {
    SHARDFLOW_REQUIRE_INPUT(
        fits(plan.tensor, plan.pipeline, plan.replicas), "a model of ", params, " parameters does not fit on ",
        device_count, " devices of ", memory_per_device_gib, " GiB: with tensor=", plan.tensor,
        ", pipeline=", plan.pipeline, " and its states sharded over ", plan.replicas, " replicas it still needs ",
        gb(states(mp * plan.replicas) + act(plan.tensor, plan.pipeline)), " per device, more than ", gb(M));
    plan.shard_states = true;
    plan.state_bytes = states(mp * plan.replicas);
  }
  plan.activation_bytes = act(plan.tensor, plan.pipeline);

  std::vector<std::string> names;
  std::vector<int> sizes;
  if (plan.replicas > 1) {
    names.push_back(plan.shard_states ? "fsdp" : "data");
    sizes.push_back(plan.replicas);
  }
  if (plan.pipeline > 1) {
    names.push_back("pipeline");
    sizes.push_back(plan.pipeline);
  }
  if (plan.tensor > 1) {
    names.push_back("tensor");
    sizes.push_back(plan.tensor);
  }
  if (names.empty()) {
    names.push_back("data");
    sizes.push_back(1);
  }
  plan.mesh = MeshShape(names, sizes);
  std::ostringstream os;
  os << "tensor=" << plan.tensor
     << (tensor_fits ? " (the smallest divisor of " : " (no divisor fits: the largest divisor of ") << gpus_per_node
     << " gpus per node" << (tensor_fits ? " that fits" : "") << "), pipeline=" << plan.pipeline
     << (plan.pipeline == 1 ? ""
         : pipeline_fits    ? " (the smallest that fits)"
                            : " (no stage count fits: the largest)")
     << ", " << (plan.shard_states ? "fsdp=" : "data=") << plan.replicas
     << (plan.shard_states ? " (model states sharded, ZeRO-3)" : "") << "; per device: states " << gb(plan.state_bytes)
     << " + activations " << gb(plan.activation_bytes) << " of " << gb(M);
  plan.rationale = os.str();
  return plan;
}

MeshShape DeviceMeshManager::optimize_for_transformer(int device_count, const std::string& model_size,
                                                      int64_t sequence_length, int gpus_per_node,
                                                      double memory_per_device_gib) const {
  const TransformerDims dims = llama_like_dims(model_size);
  return plan_transformer_mesh(device_count, dims, transformer_param_count(dims), sequence_length, gpus_per_node,
                               memory_per_device_gib)
      .mesh;
}

MeshCheck DeviceMeshManager::validate_mesh_config(const std::vector<int>& mesh_shape, int device_count) const {
  if (mesh_shape.empty()) return {false, "mesh shape is empty"};
  long product = 1;
  for (size_t i = 0; i < mesh_shape.size(); ++i) {
    if (mesh_shape[i] < 1)
      return {false, detail::concat("mesh axis ", i, " has size ", mesh_shape[i], " (sizes must be >= 1)")};
    product *= mesh_shape[i];
  }
  if (product != device_count)
    return {false, detail::concat("mesh has ", product, " devices but ", device_count, " are available")};
  return {true, ""};
}

MeshCheck DeviceMeshManager::validate_mesh_config(const std::vector<int>& mesh_shape,
                                                  const std::vector<std::string>& axis_names, int device_count) const {
  try {
    MeshShape m(axis_names, mesh_shape);
  } catch (const InputError& e) {
    return {false, e.what()};
  }
  return validate_mesh_config(mesh_shape, device_count);
}

MeshShape create_device_mesh(const std::vector<int>& mesh_shape, const std::vector<std::string>& axis_names) {
  return DeviceMeshManager().create_mesh(mesh_shape, axis_names);
}

Mesh bind_mesh(const MeshShape& shape, MPI_Comm world) { return Mesh(shape, world); }

}  // namespace shardflow
