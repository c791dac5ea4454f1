#pragma once
// AxisGroups: every derived group of mesh axes that a training step communicates over, named
// once. Each group is a list of axis names in the mesh's declared order (empty: no such
// group, i.e. a group of one rank). Computed from a MeshShape alone, so a step can be
// compiled for any mesh without MPI.
//
// Nomenclature
//   samples       data, fsdp, expert: the global batch is split over these (each rank of the
//                 group takes a contiguous slice of its sequences).
//   batch         samples + context: dense gradients are averaged over it (the context ranks
//                 of a sequence hold partial gradients of its tokens: the loss gradient is
//                 scaled by the context size, so the mean over batch is the right sum).
//   batch_dense   batch without expert: expert weights are not replicated over `expert`, so
//                 their gradients are averaged over this group instead.
//   zero          the ZeRO group that shards gradients / optimizer state / parameters
//                 (strategy.zero_stage >= 1): `fsdp` when it has size > 1, else `data`.
//   replica       batch without zero: the replicas of one ZeRO shard (HSDP averages over it).
//   replica_dense replica without expert (expert weights' replicas).
//   tensor, pipeline, expert, context   the axes themselves, when of size > 1.
//   norm          the gradient norm: zero + pipeline + expert + tensor (each element once).
//   loss          the loss sum: data, fsdp, pipeline, expert, context (of size > 1).
#include <string>
#include <vector>

#include "mesh/mesh_shape.hpp"

namespace shardflow::parallel {

using Axes = std::vector<std::string>;

struct AxisGroups {
  Axes samples, batch, batch_dense, zero, replica, replica_dense, tensor, pipeline, expert, context, norm, loss;

  /// Throws InputError for a zero stage outside 0..3.
  static AxisGroups make(const MeshShape& mesh, int zero_stage);
  /// `axes` in the mesh's declared order (unknown axes: InputError naming the axis).
  static Axes canonical(const MeshShape& mesh, const Axes& axes);
};

/// "data+fsdp" (the key the task graph and the verify pass use for a communicator), "" for none.
std::string group_key(const Axes& axes);

}  // namespace shardflow::parallel
