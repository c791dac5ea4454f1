#pragma once
// Sharding strategies (the JAX/Artifex vocabulary): each strategy owns one mesh axis and
// proposes PartitionSpecs, either from dimension *names* (get_partition_spec: "batch",
// "sequence", "hidden", "out_features", "in_features", ...) or for a concrete tensor
// shape on a mesh (get_tensor_spec). apply_sharding returns the local shard of real data
// that a rank holds under that spec (the Layout's box, with the project's uneven rule).
//
// Rules (docs/strategies.md has the full text):
// - FSDP dimension choice (xlstm-jax): tensors with fewer than min_weight_size elements
//   stay replicated; otherwise the largest dimension divisible by the axis size (ties →
//   the first), else the largest dimension (ties → the first) split with the uneven rule.
// - Pipeline stages: L layers on p stages, stage s gets L / p + (s < L % p) layers.
// - MultiDimensionalStrategy conflicts: see resolve_sharding_conflicts().
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "layout/layout.hpp"
#include "layout/partition_spec.hpp"
#include "comm/mesh.hpp"
#include "strategy/host_tensor.hpp"
#include "model/param_kind.hpp"
#include "strategy/sharding_config.hpp"

namespace shardflow {

using DimNames = std::vector<std::string>;

class ShardingStrategy {
 public:
  /// mesh_axis: index of axis_name in the mesh's declared axes, or -1 to look it up by
  /// name. Throws InputError for an unknown axis name.
  ShardingStrategy(std::string axis_name, int mesh_axis);
  virtual ~ShardingStrategy() = default;

  /// e.g. "DataParallelStrategy".
  virtual std::string type_name() const = 0;
  /// Higher wins in MultiDimensionalStrategy: tensor 4, expert 3, pipeline 3, FSDP 2, data 1.
  virtual int priority() const = 0;
  const std::string& axis_name() const { return axis_name_; }
  int mesh_axis() const { return mesh_axis_; }

  /// Spec for a tensor described by its dimension names.
  virtual PartitionSpec get_partition_spec(const DimNames& dims) const = 0;
  /// Spec for a concrete tensor on `mesh` (what apply_sharding uses).
  virtual PartitionSpec get_tensor_spec(const Shape& shape, const MeshShape& mesh) const = 0;
  /// Layout of a concrete tensor on `mesh`; checks that the mesh has this axis at mesh_axis.
  virtual Layout get_layout(const Shape& shape, const MeshShape& mesh) const;
  /// Key/value description: axis_name, mesh_axis, and the strategy's own settings.
  virtual std::map<std::string, std::string> get_sharding_constraints() const;

  /// The local shard of `tensor` that `rank` holds under get_layout().
  template <typename T>
  HostTensor<T> apply_sharding(const HostTensor<T>& tensor, const MeshShape& mesh, int rank) const {
    return extract_box(tensor, get_layout(tensor.shape, mesh).box(rank));
  }
  template <typename T>
  HostTensor<T> apply_sharding(const HostTensor<T>& tensor, const Mesh& mesh) const {
    return apply_sharding(tensor, mesh.shape(), mesh.rank());
  }

 protected:
  /// Throws InputError unless the mesh has axis_name (at index mesh_axis when given).
  void check_mesh(const MeshShape& mesh) const;

 private:
  std::string axis_name_;
  int mesh_axis_;
};

/// Splits the batch: ("batch", "sequence", "hidden") → ("data", None, None); a concrete
/// tensor is split on its leading (batch) dimension.
class DataParallelStrategy : public ShardingStrategy {
 public:
  explicit DataParallelStrategy(std::string axis_name = "data", int mesh_axis = -1);
  std::string type_name() const override { return "DataParallelStrategy"; }
  int priority() const override { return 1; }
  PartitionSpec get_partition_spec(const DimNames& dims) const override;
  PartitionSpec get_tensor_spec(const Shape& shape, const MeshShape& mesh) const override;
};

class FSDPStrategy : public ShardingStrategy {
 public:
  FSDPStrategy(std::string axis_name = "fsdp", int mesh_axis = -1, int64_t min_weight_size = 1024);
  std::string type_name() const override { return "FSDPStrategy"; }
  int priority() const override { return 2; }
  int64_t min_weight_size() const { return min_weight_size_; }
  /// True when the tensor has at least min_weight_size elements (and rank >= 1).
  bool should_shard_weight(const Shape& shape) const;
  /// The xlstm-jax dimension rule over the dimensions not marked in `excluded` (may be
  /// empty): the largest divisible by n (ties → first), else the largest (ties → first).
  /// -1 when every dimension is excluded or the shape is 0-d.
  static int choose_shard_dim(const Shape& shape, int64_t n, const std::vector<bool>& excluded = {});
  /// The dimension FSDP splits for this tensor over an axis of size n, or -1 (replicated).
  int shard_dim(const Shape& shape, int64_t n) const;
  /// By names: the leading dimension when it is a weight dimension (out_features,
  /// in_features, features, hidden, vocab, ffn, experts); nothing else.
  PartitionSpec get_partition_spec(const DimNames& dims) const override;
  PartitionSpec get_tensor_spec(const Shape& shape, const MeshShape& mesh) const override;
  /// Gradients are sharded exactly like the weights (reduce-scatter target).
  PartitionSpec get_gradient_partition_spec(const DimNames& dims) const { return get_partition_spec(dims); }
  PartitionSpec get_gradient_partition_spec(const Shape& shape, const MeshShape& mesh) const {
    return get_tensor_spec(shape, mesh);
  }
  std::map<std::string, std::string> get_sharding_constraints() const override;

 private:
  int64_t min_weight_size_;
};

class TensorParallelStrategy : public ShardingStrategy {
 public:
  /// shard_dimension: the dimension name to split ("out_features", "in_features",
  /// "hidden", ...); empty means "hidden".
  TensorParallelStrategy(std::string axis_name = "tensor", int mesh_axis = -1, std::string shard_dimension = "");
  std::string type_name() const override { return "TensorParallelStrategy"; }
  int priority() const override { return 4; }
  const std::string& shard_dimension() const { return shard_dimension_; }
  PartitionSpec get_partition_spec(const DimNames& dims) const override;
  /// 2-D: get_linear_weight_spec(); otherwise the last dimension.
  PartitionSpec get_tensor_spec(const Shape& shape, const MeshShape& mesh) const override;
  /// Over the qkv view [3, A, D, H]: (None, axis, None, None) — whole heads per device.
  PartitionSpec get_attention_qkv_spec() const;
  /// Over the attention-out view [H, A, D]: (None, axis, None) — the input columns of whole heads.
  PartitionSpec get_attention_output_spec() const;
  /// [out, in]: (None, axis) when shard_dimension is "in_features", else (axis, None).
  PartitionSpec get_linear_weight_spec() const;
  /// A model parameter of kind `kind` (Megatron's table, as Modular MAX's per-weight
  /// strategies, WeightSharding::tensor_parallel): the spec over its view shape (qkv
  /// (None, axis, None, None) = get_attention_qkv_spec(), attn.out (None, axis, None) =
  /// get_attention_output_spec(), gate_up on F, down on its input columns, embeddings and
  /// lm_head on the vocabulary, norms, positions and the router replicated). Throws
  /// InputError when the axis cannot split the weight (heads or rows fewer than devices).
  PartitionSpec get_weight_spec(ParamKind kind, const Shape& weight_shape, int num_heads, int head_dim,
                                const MeshShape& mesh) const;
  std::map<std::string, std::string> get_sharding_constraints() const override;

 private:
  std::string shard_dimension_;
};

/// One pipeline transfer: stage `src` sends `what` to stage `dst`.
struct StageTransfer {
  int src = 0;
  int dst = 0;
  std::string what;
  bool operator==(const StageTransfer& o) const { return src == o.src && dst == o.dst && what == o.what; }
};

class PipelineParallelStrategy : public ShardingStrategy {
 public:
  /// Throws InputError when num_stages < 1.
  PipelineParallelStrategy(std::string axis_name = "pipeline", int mesh_axis = -1, int num_stages = 1);
  std::string type_name() const override { return "PipelineParallelStrategy"; }
  int priority() const override { return 3; }
  int num_stages() const { return num_stages_; }
  /// Layers per stage: stage s gets L / p + (s < L % p). Throws InputError when L < p
  /// (a stage would be empty) or L < 1.
  std::vector<int> assign_layers_to_stages(int num_layers) const;
  /// Stage holding layer l of num_layers.
  int stage_of_layer(int layer, int num_layers) const;
  /// (s → s+1, "activations") for every stage but the last.
  std::vector<StageTransfer> get_forward_communication_pattern() const;
  /// (s+1 → s, "activation gradients") for every stage but the first.
  std::vector<StageTransfer> get_backward_communication_pattern() const;
  /// Pipelining splits no tensor: all None.
  PartitionSpec get_partition_spec(const DimNames& dims) const override;
  PartitionSpec get_tensor_spec(const Shape& shape, const MeshShape& mesh) const override;
  /// Replicated inside the stage, held only by the ranks of `stage`.
  Layout get_stage_layout(const Shape& shape, const MeshShape& mesh, int stage) const;
  std::map<std::string, std::string> get_sharding_constraints() const override;

 private:
  int num_stages_;
};

/// Several strategies on one mesh.
///
/// Construction (InputError naming both strategies): two strategies of the same type, or
/// two strategies on the same mesh axis — except DataParallel + FSDP sharing an axis
/// (ZeRO-3: the batch and the weights split over the same ranks). Every strategy's axis
/// must be one of the config's mesh axes.
///
/// Conflict resolution (resolve_sharding_conflicts): proposals are merged in priority
/// order (tensor > pipeline/expert > FSDP > data). A dimension claimed by two strategies is
/// split by both, the higher priority axis most significant (e.g. ('tensor', 'fsdp')). An
/// axis claimed for two different dimensions: when the claimants are DataParallel and
/// FSDP, the FSDP claim stands and the data claim is dropped for that tensor; otherwise
/// InputError naming the tensor, the axis and both strategies.
class MultiDimensionalStrategy {
 public:
  using Entry = std::pair<std::string, std::shared_ptr<const ShardingStrategy>>;
  MultiDimensionalStrategy(std::vector<Entry> strategies, ParallelismConfig config);

  const std::vector<Entry>& strategies() const { return strategies_; }
  const ParallelismConfig& config() const { return config_; }
  const MeshShape& mesh() const { return mesh_; }

  /// Every strategy's get_partition_spec(dims), merged by resolve_sharding_conflicts.
  PartitionSpec get_combined_partition_spec(const std::string& tensor_name, const DimNames& dims) const;
  /// A parameter of concrete shape: tensor parallelism splits per get_tensor_spec, FSDP
  /// picks its dimension among those the higher-priority strategies left unsplit (and
  /// composes onto the TP dimension only when none is left), data and pipeline leave
  /// parameters unsplit.
  PartitionSpec get_combined_partition_spec(const std::string& tensor_name, const Shape& shape) const;
  /// Merges named proposals (strategy name → spec) with the rules above.
  PartitionSpec resolve_sharding_conflicts(const std::string& tensor_name,
                                           const std::vector<std::pair<std::string, PartitionSpec>>& proposed) const;
  Layout get_combined_layout(const std::string& tensor_name, const Shape& shape) const;
  template <typename T>
  HostTensor<T> apply_sharding(const std::string& tensor_name, const HostTensor<T>& tensor, int rank) const {
    return extract_box(tensor, get_combined_layout(tensor_name, tensor.shape).box(rank));
  }

 private:
  const Entry& find(const std::string& name) const;
  std::vector<Entry> strategies_;
  ParallelismConfig config_;
  MeshShape mesh_;
};

}  // namespace shardflow
