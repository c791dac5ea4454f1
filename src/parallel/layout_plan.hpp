#pragma once
// LayoutPlan: the one place that decides where every tensor of a training run lives. From a
// model description, a mesh and the strategy options it places each parameter, its gradient
// and its optimizer state, for every rank of the mesh (no MPI: any world size, any rank).
// The trainer, the planner (`shardflow plan`), the checkpoints (through the trainer's state
// tensors) and `shardflow compile` read their layouts from here and from nowhere else.
//
// Nomenclature
//   view          the parameter's view shape (ModelDescription): qkv [3, A, D, H], ... The
//                 tensor, expert and ZeRO splits are splits of view dimensions.
//   tensor_dim    view dim split over `tensor` (WeightSharding::tensor_parallel's choice for
//                 the parameter's kind: heads, F or V), -1 when replicated over tensor.
//   expert_dim    view dim split over `expert` (0 for expert weights), -1 otherwise.
//   tensor box    what a rank holds after the tensor and expert splits (its `local` box).
//   zero_dim      view dim the ZeRO group splits (FSDPStrategy::choose_shard_dim among the
//                 dims tensor/expert left unsplit), -1 when the tensor stays replicated
//                 (fewer than fsdp_min_weight_size elements, or no dim left).
//   unit          the parameters fetched together: 0 embeddings, 1 + l layer l, L + 1 head.
//   stage         pipeline stage holding the parameter (chunk mod p, interleaved 1F1B).
// Roles: Param is ZeRO-split only at stage 3, Grad at stage >= 2, OptimizerState at >= 1.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "layout/layout.hpp"
#include "model/model_description.hpp"
#include "parallel/axis_groups.hpp"

namespace shardflow::parallel {

struct ParamPlacement {
  ParamInfo info;
  int tensor_dim = -1, expert_dim = -1, zero_dim = -1;
  int unit = 0, stage = 0;
  bool zero_sharded() const { return zero_dim >= 0; }
  bool is_expert_weight = false;  // an expert weight [E, ...] (split over `expert` when it has size > 1)
};

/// Bytes a rank holds of persistent training state (the trainer's f32 buffers).
struct StateBytes {
  int64_t params = 0, grads = 0, optimizer = 0;
  int64_t total() const { return params + grads + optimizer; }
};

class LayoutPlan {
 public:
  /// Validates that the mesh can shard the model with these options (InputError naming the
  /// key and value: more tensor devices than heads, an expert axis on a dense model, more
  /// pipeline chunks than layers, mesh.fsdp > 1 with zero_stage 0, ...).
  LayoutPlan(const ModelDescription& model, const MeshShape& mesh, const StrategyOptions& options,
             int virtual_stages = 1);

  const MeshShape& mesh() const { return mesh_; }
  const StrategyOptions& options() const { return options_; }
  const AxisGroups& groups() const { return groups_; }
  const ModelConfig& model() const { return model_; }
  const std::vector<ParamPlacement>& params() const { return params_; }
  /// InputError naming the parameter when unknown.
  const ParamPlacement& param(const std::string& name) const;

  /// Pipeline chunks (p · virtual stages) and the chunk of every layer.
  int chunks() const { return chunks_; }
  const std::vector<int>& layer_chunk() const { return layer_chunk_; }

  /// The layout of p's `role` on the mesh.
  Layout layout(const ParamPlacement& p, TensorRole role) const;
  /// The PartitionSpec of p's role (over its view shape).
  PartitionSpec spec(const ParamPlacement& p, TensorRole role) const;
  /// Human-readable reasons for p's placement ("tensor: stacked_qkv on heads (view dim 1); zero(fsdp): view dim 3").
  std::string rule(const ParamPlacement& p) const;
  /// Persistent state `rank` holds (f32 parameters, gradients, AdamW moments, including the
  /// ZeRO-1/2 shard staging buffers the trainer keeps): what `train --summary` reports.
  StateBytes state_bytes(int rank) const;

 private:
  ModelConfig model_;
  MeshShape mesh_;
  StrategyOptions options_;
  AxisGroups groups_;
  int chunks_ = 1;
  std::vector<int> layer_chunk_;
  std::vector<ParamPlacement> params_;
  std::unordered_map<std::string, size_t> index_;  // (hashed: 768 names of a 128-layer model)
};

}  // namespace shardflow::parallel
