#pragma once
// The xlstm-jax data-parallel / FSDP primitives (xlstm_jax.distributed.data_parallel), on a
// small host-side container of named parameters:
//
//   shard_params          leaves with at most min_weight_size elements (per shard) stay as
//                         they are; others are split over `axis_name` on their largest
//                         unsplit dimension divisible by the axis size (ties: the later
//                         dimension, as numpy's argsort()[::-1] picks); none: unchanged.
//                         Already split over the axis: unchanged. Purely local (a slice).
//   gather_array_with_mean_grads
//                         forward: all-gather along `axis` in gather_dtype; backward:
//                         reduce-scatter the gradient in grad_scatter_dtype and divide by
//                         the axis size (the mean over the axis).
//   gather_params         the above on every parameter split over the axis (others pass).
//   shard_module_params   shard on init, gather for compute, mean-scatter the gradients.
//   sync_gradients        average each gradient over the given axes it is replicated on
//                         (not split over, not pinned to); leave the others.
//
// Values live in f32 (the parameter dtype). Casting to gather_dtype rounds once; gathered
// values are those rounded values. The backward's sum accumulates in f32 whatever
// grad_scatter_dtype is (bf16/f16 sums never add in 16 bit), is divided by the axis size
// in f32, and rounded once to grad_scatter_dtype (JAX divides after the 16-bit psum).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm_set.hpp"
#include "layout/layout.hpp"

namespace shardflow::shard {

/// A named parameter (or gradient): its layout and this rank's box of it, row-major.
struct ShardedParam {
  std::string name;
  Layout layout;
  std::vector<float> data;
};
using ParamList = std::vector<ShardedParam>;

/// A fully replicated parameter holding `data` (the whole tensor, row-major).
ShardedParam replicated_param(std::string name, Shape shape, const MeshShape& mesh, std::vector<float> data);

/// See the header comment. `rank` is this rank's mesh rank.
ParamList shard_params(const ParamList& params, int rank, const std::string& axis_name,
                       std::int64_t min_weight_size = std::int64_t(1) << 18);
/// The dimension shard_params would split (or -1 to leave the parameter as it is).
int shard_dim(const Layout& layout, const std::string& axis_name, std::int64_t min_weight_size);

/// gather_array_with_mean_grads as an operation bound to persistent buffers: one all-gather
/// (forward) and one reduce-scatter (backward) on `axis_comm` (Mpi backend, host buffers).
class GatherWithMeanGrads {
 public:
  /// local_shape: this rank's shard; the gathered shape has local_shape[axis] * axis size.
  /// Throws InputError for an axis out of range or a non-floating dtype (naming it).
  GatherWithMeanGrads(comm::Communicator& axis_comm, Shape local_shape, int axis, DType gather_dtype = DType::F32,
                      DType grad_scatter_dtype = DType::F32);
  ~GatherWithMeanGrads();
  GatherWithMeanGrads(const GatherWithMeanGrads&) = delete;
  GatherWithMeanGrads& operator=(const GatherWithMeanGrads&) = delete;

  const Shape& local_shape() const { return local_; }
  const Shape& full_shape() const { return full_; }
  /// x_full (full_shape) = all_gather(x_local cast to gather_dtype) along the axis.
  void forward(const float* x_local, float* x_full);
  /// g_local (local_shape) = mean over the axis of each rank's g_full block of this rank.
  void backward(const float* g_full, float* g_local);

 private:
  struct Impl;
  Shape local_, full_;
  std::unique_ptr<Impl> impl_;
};

/// One-shot forms of gather_array_with_mean_grads.
std::vector<float> gather_array_forward(comm::Communicator& axis_comm, const std::vector<float>& x,
                                        const Shape& local_shape, int axis, DType gather_dtype = DType::F32);
std::vector<float> gather_array_backward(comm::Communicator& axis_comm, const std::vector<float>& g_full,
                                         const Shape& local_shape, int axis, DType grad_scatter_dtype = DType::F32);

/// gather_params: the gathered parameters, and the backward that maps their gradients to
/// gradients of the sharded parameters. Built once; refresh() re-gathers new values.
class GatheredParams {
 public:
  GatheredParams(const ParamList& sharded, const comm::CommSet& comms, const std::string& axis_name,
                 DType gather_dtype = DType::F32, DType grad_scatter_dtype = DType::F32);
  GatheredParams(GatheredParams&&) noexcept;
  GatheredParams& operator=(GatheredParams&&) noexcept;
  ~GatheredParams();
  /// The gathered parameters (the axis removed from their layouts).
  const ParamList& params() const { return gathered_; }
  /// Gather new values of the same sharded parameters (same names and layouts).
  void refresh(const ParamList& sharded);
  /// Gradients w.r.t. params() (same order and layouts) -> gradients w.r.t. the sharded
  /// parameters: mean-reduce-scattered over the axis where gathered, passed through otherwise.
  ParamList backward(const ParamList& grads) const;

 private:
  ParamList sharded_meta_, gathered_;
  std::vector<std::unique_ptr<GatherWithMeanGrads>> ops_;  // null: not split over the axis
};

GatheredParams gather_params(const ParamList& sharded, const comm::CommSet& comms, const std::string& axis_name,
                             DType gather_dtype = DType::F32, DType grad_scatter_dtype = DType::F32);

/// shard_module_params: owns the sharded parameters of a module (shard_params on init),
/// hands the module gathered parameters, and turns their gradients into gradients of the
/// shards (the mean over the axis).
class ShardedModuleParams {
 public:
  ShardedModuleParams(const ParamList& init, const comm::CommSet& comms, const std::string& axis_name,
                      std::int64_t min_weight_size = std::int64_t(1) << 18, DType gather_dtype = DType::F32,
                      DType grad_scatter_dtype = DType::F32);
  /// What the optimizer updates.
  ParamList& sharded() { return sharded_; }
  const ParamList& sharded() const { return sharded_; }
  /// Gathers the current sharded values: what the module computes with.
  const ParamList& gather();
  /// Gradients w.r.t. gather()'s parameters -> gradients w.r.t. sharded().
  ParamList scatter_grads(const ParamList& grads) const { return gathered_.backward(grads); }

 private:
  ParamList sharded_;
  GatheredParams gathered_;
};

ShardedModuleParams shard_module_params(const ParamList& init, const comm::CommSet& comms, const std::string& axis_name,
                                        std::int64_t min_weight_size = std::int64_t(1) << 18,
                                        DType gather_dtype = DType::F32, DType grad_scatter_dtype = DType::F32);

/// Averages (all-reduce Mean in f32 over the group of axes) each gradient over the axes of
/// `axis_names` that it is replicated on; gradients split over (or pinned to) all of them
/// are left untouched. Throws InputError for an axis the mesh does not have.
void sync_gradients(ParamList& grads, const comm::CommSet& comms, const std::vector<std::string>& axis_names);

}  // namespace shardflow::shard
