#pragma once
// DeviceMeshManager: creates, validates and recommends device meshes (the Artifex
// mesh_utils vocabulary, on shardflow's MeshShape/Mesh).
//
// The transformer mesh rule (optimize_for_transformer), with Ψ parameters, M bytes per
// device, L layers, S sequence length, H hidden, A heads:
//   states(k) = 16·Ψ / k                  mixed-precision Adam model states split k ways
//   act(t, p) = ceil(L / p) · S · H · (10 + 24/t + 5·A·S/(H·t))
//                                         activations of one sequence through a stage's
//                                         layers (Korthikanti et al. 2022, fp16, no
//                                         recomputation, tensor parallel t)
//   fits(t, p, z) = states(t·p·z) + act(t, p) <= M
//   1. tensor t: the smallest divisor of the device count that also divides gpus_per_node
//      with fits(t, 1, 1) — tensor parallelism stays inside a node and is only as large as
//      needed; the largest such divisor when none fits.
//   2. pipeline p: the smallest divisor of device_count / t (and <= L) with fits(t, p, 1);
//      the largest such when none fits.
//   3. the rest d = device_count / (t·p) replicates the model on a `data` axis when
//      fits(t, p, 1); otherwise the replicas shard the model states on an `fsdp` axis
//      (ZeRO-3) when fits(t, p, d); otherwise InputError (the model does not fit).
//   Axes of size 1 are left out (a mesh of one device is data=1).
#include <mpi.h>

#include <string>
#include <vector>

#include "comm/mesh.hpp"
#include "mesh/mesh_shape.hpp"
#include "strategy/sharding_config.hpp"

namespace shardflow {

/// Sizes of a LLaMA-like decoder (no biases, SwiGLU MLP, untied LM head).
struct TransformerDims {
  int64_t vocab = 32000;
  int64_t hidden = 4096;
  int64_t layers = 32;
  int64_t heads = 32;
  int64_t ffn = 11008;
};

/// "7B", "13B", "350M", "1.5B", "2e9" or "6738415616" → number of parameters. Throws
/// InputError naming the text otherwise (or when not > 0).
double parse_model_size(const std::string& text);
/// LLaMA sizes for the names 7B, 13B, 30B/33B, 65B, 70B; otherwise a decoder of about
/// `params` parameters with head size 128, L = H / 128 layers (LLaMA's aspect ratio),
/// H = cbrt(128·Ψ/12) rounded to a multiple of 128, F = 8H/3 rounded up to a multiple of 256.
TransformerDims llama_like_dims(const std::string& model_size);
TransformerDims llama_like_dims(double params);
/// 12·H²·L-style count of the decoder's matrices plus embeddings (no position table).
double transformer_param_count(const TransformerDims& d);

/// Why a mesh is invalid ("" when valid).
struct MeshCheck {
  bool valid = true;
  std::string reason;
  explicit operator bool() const { return valid; }
};

/// The outcome of the transformer rule, with the numbers that decided it.
struct TransformerMeshPlan {
  MeshShape mesh;
  int tensor = 1;
  int pipeline = 1;
  int replicas = 1;             // size of the data or fsdp axis
  bool shard_states = false;    // true: replicas form an `fsdp` axis (ZeRO-3)
  double state_bytes = 0;       // per device
  double activation_bytes = 0;  // per device, one sequence
  double memory_bytes = 0;      // the budget M
  std::string rationale;
};

class DeviceMeshManager {
 public:
  DeviceMeshManager() = default;
  /// Throws InputError (naming the value) for an invalid shape/name combination.
  DeviceMeshManager(std::vector<int> mesh_shape, std::vector<std::string> axis_names);

  const MeshShape& mesh_shape() const { return shape_; }
  /// The MeshShape for sizes and names (InputError naming the value when invalid).
  MeshShape create_mesh(const std::vector<int>& mesh_shape, const std::vector<std::string>& axis_names) const;
  MeshShape create_mesh_from_config(const ParallelismConfig& config) const;
  /// Collective over `world`: binds this manager's shape to the ranks of `world`.
  Mesh bind(MPI_Comm world = MPI_COMM_WORLD) const;

  /// The most balanced factorisation of device_count into `dimensions` factors (the one
  /// minimising Σ log² f_i), factors in non-increasing order: 8,2 → [4,2]; 12,3 → [3,2,2].
  std::vector<int> get_optimal_mesh_shape(int device_count, int dimensions = 2) const;
  /// The transformer rule (see the file comment). model_size as in parse_model_size.
  MeshShape optimize_for_transformer(int device_count, const std::string& model_size, int64_t sequence_length,
                                     int gpus_per_node = 8, double memory_per_device_gib = 80.0) const;
  TransformerMeshPlan plan_transformer_mesh(int device_count, const TransformerDims& dims, double params,
                                            int64_t sequence_length, int gpus_per_node = 8,
                                            double memory_per_device_gib = 80.0) const;
  /// Valid when every size is >= 1 and their product equals device_count.
  MeshCheck validate_mesh_config(const std::vector<int>& mesh_shape, int device_count) const;
  /// Also checks the names (known, distinct, as many as sizes).
  MeshCheck validate_mesh_config(const std::vector<int>& mesh_shape, const std::vector<std::string>& axis_names,
                                 int device_count) const;

 private:
  MeshShape shape_;
};

/// create_device_mesh((2, 4), ("data", "tensor")) → the MeshShape data=2 x tensor=4.
MeshShape create_device_mesh(const std::vector<int>& mesh_shape, const std::vector<std::string>& axis_names);
/// Collective: a Mesh over `world` for the shape (InputError when the sizes differ).
Mesh bind_mesh(const MeshShape& shape, MPI_Comm world = MPI_COMM_WORLD);

}  // namespace shardflow
