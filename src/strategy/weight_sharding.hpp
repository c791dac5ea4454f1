#pragma once
// Per-weight sharding strategies (the Modular MAX vocabulary): how one weight is split
// across the `num_devices` devices of one mesh axis (usually `tensor`).
//
// Every strategy is also a Layout: the weight is viewed with a *view shape* (same
// row-major data, more dimensions) and exactly one view dimension is split with the
// project's uneven rule (the first d % n shards get one extra element, or one extra head
// when the split dimension counts heads). This is what the checkpoint and resharding code
// see: view() returns the view shape and the PartitionSpec over it for a mesh axis.
//
//   strategy                       weight            view                split view dim
//   replicate                      any               shape               none
//   rowwise                        [R, ...]          shape               0
//   columnwise                     [R, C, ...]       shape               1
//   axiswise(a)                    any               shape               a
//   stacked_qkv(A, D)              [3·A·D, K]        [3, A, D, K]        1 (heads)
//   head_aware_columnwise(A, D)    [R, A·D]          [R, A, D]           1 (heads)
//   gate_up(a)                     [.., 2F @a, ..]   [.., 2, F, ..]      a + 1
//   expert_parallel                [E, ...]          shape               0 (experts)
//   tensor_parallel(kind, A, D)    by kind: the Megatron rule (see resolve())
//
// Head-aware and expert splits with more devices than heads/experts throw InputError
// naming both numbers (a device would hold no head).
#include <string>
#include <vector>

#include "layout/layout.hpp"
#include "layout/partition_spec.hpp"
#include "model/param_kind.hpp"
#include "strategy/host_tensor.hpp"

namespace shardflow {


/// A weight's view shape and the PartitionSpec over it for one mesh axis.
struct WeightView {
  Shape view_shape;
  PartitionSpec spec;
  /// The split view dimension, or -1 when replicated.
  int split_dim = -1;
  /// For each view dimension, the weight dimension it belongs to (views only refine).
  std::vector<int> weight_dim_of;
};

/// Grouped-query attention under tensor parallelism: query head a uses key/value head
/// a / (heads / kv_heads). True when splitting the heads and the kv heads over `tensor`
/// devices with the uneven rule gives every device exactly the kv heads its query heads use
/// (then the key/value weight is split with grouped_kv); false when some device would need a
/// kv head another device holds (then the key/value weight is replicated over the tensor
/// axis, every device computes all K key/value heads, and its gradient is a partial sum that
/// the tensor axis all-reduces).
bool kv_heads_aligned(int64_t heads, int64_t kv_heads, int tensor);

class WeightSharding {
 public:
  enum class Kind {
    Replicate,
    Rowwise,
    Columnwise,
    Axiswise,
    StackedQkv,
    HeadAwareColumnwise,
    HeadAwareRowwise,
    GroupedKv,
    GateUp,
    ExpertParallel,
    TensorParallel
  };

  static WeightSharding replicate();
  static WeightSharding rowwise();
  static WeightSharding columnwise();
  static WeightSharding axiswise(int axis);
  /// Throws InputError unless num_heads >= 1 and head_dim >= 1.
  static WeightSharding stacked_qkv(int num_heads, int head_dim);
  static WeightSharding head_aware_columnwise(int num_heads, int head_dim);
  /// A query projection [A·D, in]: view [A, D, in], whole heads per device (split on A).
  static WeightSharding head_aware_rowwise(int num_heads, int head_dim);
  /// A stacked key/value projection [2·K·D, in] (K block, V block): view [2, K, D, in],
  /// whole key/value heads per device (split on K); K is read from the weight's shape.
  static WeightSharding grouped_kv(int head_dim);
  /// The gate and up halves of dimension `axis` are split separately.
  static WeightSharding gate_up(int axis = 0);
  static WeightSharding expert_parallel();
  /// The Megatron rule for a parameter kind: qkv → stacked_qkv, attention out →
  /// head_aware_columnwise, gate_up → gate_up(0), down → columnwise, token embedding and
  /// LM head → rowwise (vocabulary parallel), position table, router and norm gains →
  /// replicate, expert gate_up [E, 2F, H] → gate_up(1), expert down [E, H, F] → axiswise(2)
  /// (inside each expert; the expert axis splits dimension 0 separately), query →
  /// head_aware_rowwise, key/value → grouped_kv.
  static WeightSharding tensor_parallel(ParamKind kind, int num_heads = 0, int head_dim = 0);

  Kind kind() const { return kind_; }
  bool is_replicate() const { return kind_ == Kind::Replicate; }
  bool is_rowwise() const { return kind_ == Kind::Rowwise; }
  bool is_columnwise() const { return kind_ == Kind::Columnwise; }
  bool is_axiswise() const { return kind_ == Kind::Axiswise; }
  bool is_stacked_qkv() const { return kind_ == Kind::StackedQkv; }
  bool is_head_aware_columnwise() const { return kind_ == Kind::HeadAwareColumnwise; }
  bool is_head_aware_rowwise() const { return kind_ == Kind::HeadAwareRowwise; }
  bool is_grouped_kv() const { return kind_ == Kind::GroupedKv; }
  bool is_gate_up() const { return kind_ == Kind::GateUp; }
  bool is_expert_parallel() const { return kind_ == Kind::ExpertParallel; }
  bool is_tensor_parallel() const { return kind_ == Kind::TensorParallel; }
  int axis() const { return axis_; }
  int num_heads() const { return heads_; }
  int head_dim() const { return head_dim_; }
  /// For tensor_parallel: the concrete strategy it stands for; otherwise *this.
  WeightSharding resolve() const;
  /// e.g. "stacked_qkv(num_heads=4, head_dim=32)".
  std::string to_string() const;

  /// Throws InputError (naming the weight shape and the numbers) when the strategy does
  /// not fit the weight or cannot give every one of num_devices devices a part.
  void validate(const Shape& weight_shape, int num_devices) const;
  /// The view shape and the spec splitting it over `mesh_axis`.
  WeightView view(const Shape& weight_shape, const std::string& mesh_axis) const;
  /// The Layout over the view shape on `mesh` (mesh_axis must be one of its axes).
  Layout layout(const Shape& weight_shape, const MeshShape& mesh, const std::string& mesh_axis) const;
  /// The box of the view that device `device` of `num_devices` holds.
  Box view_box(const Shape& weight_shape, int device, int num_devices) const;
  /// Shape of device's shard in the weight's own dimensions.
  Shape shard_shape(const Shape& weight_shape, int device, int num_devices) const;

  /// Device `device`'s shard of `weight` (real data; same rank as the weight).
  template <typename T>
  HostTensor<T> shard(const HostTensor<T>& weight, int device, int num_devices) const {
    WeightView v = view(weight.shape, "tensor");
    Box b = view_box(weight.shape, device, num_devices);
    HostTensor<T> piece = extract_box(reshape(weight, v.view_shape), b);
    return reshape(std::move(piece), shard_shape(weight.shape, device, num_devices));
  }
  /// Reassembles a weight of `weight_shape` from the shards of all devices (inverse of shard()).
  template <typename T>
  HostTensor<T> unshard(const std::vector<HostTensor<T>>& shards, const Shape& weight_shape) const {
    const int n = static_cast<int>(shards.size());
    SHARDFLOW_REQUIRE_INPUT(n >= 1, "unshard: no shards given for weight ", shape_to_string(weight_shape));
    WeightView v = view(weight_shape, "tensor");
    HostTensor<T> full(v.view_shape);
    for (int i = 0; i < n; ++i) {
      SHARDFLOW_REQUIRE_INPUT(shards[static_cast<size_t>(i)].shape == shard_shape(weight_shape, i, n),
                              "unshard: shard ", i, " has shape ",
                              shape_to_string(shards[static_cast<size_t>(i)].shape), ", expected ",
                              shape_to_string(shard_shape(weight_shape, i, n)));
      Box b = view_box(weight_shape, i, n);
      insert_box(full, b, reshape(shards[static_cast<size_t>(i)], b.extent));
      if (v.split_dim < 0) break;  // replicated: every shard is the whole weight
    }
    return reshape(std::move(full), weight_shape);
  }

 private:
  WeightSharding(Kind k, int axis, int heads, int head_dim, ParamKind pk = ParamKind::NormGain)
      : kind_(k), axis_(axis), heads_(heads), head_dim_(head_dim), param_kind_(pk) {}
  Kind kind_;
  int axis_ = 0;
  int heads_ = 0;
  int head_dim_ = 0;
  ParamKind param_kind_;
};

}  // namespace shardflow
