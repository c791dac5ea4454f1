#pragma once
// Shard collectives of the training step: all-gather and reduce-scatter of an f32 tensor
// seen as [outer, rows, inner] (any view dimension of a row-major tensor: outer is the
// product of the extents before it, inner of those after it), split along `rows` with the
// uneven rule, moved in a chosen dtype. A shard is the box [outer, rows_i, inner], stored
// contiguously (row-major over the box). With outer = 1 this is the plain dim-0 split.
// The comm layer's collectives take equal blocks, so uneven shards travel in blocks of
// ceil(rows / n) rows; packing (pad, cast) happens when an operation starts and unpacking
// (unpad, cast) when it completes, inside the comm task, so the step needs no extra tasks.
// f32 with n dividing rows and unaliased buffers moves the data in place, with no copy.
#include <Kokkos_Core.hpp>
#include <functional>
#include <memory>

#include "comm/communicator.hpp"
#include "core/dtype.hpp"

namespace shardflow::train::detail {

using FVec = Kokkos::View<float*>;
using BVec = Kokkos::View<std::uint16_t*>;

/// Copies n floats, converting to dtype `to` (f32, bf16 or f16) into raw 16/32-bit storage.
void cast_out(const float* src, void* dst, int64_t n, DType to);
/// Copies n elements of dtype `from` into floats.
void cast_in(const void* src, float* dst, int64_t n, DType from);

/// Strided box copy with a cast, for tensors seen as [outer, rows, inner]:
///   dst[(o·dst_rows + dst_r0 + r)·inner + i] (+)= src[(o·src_rows + src_r0 + r)·inner + i]
/// for o < outer, r < nrows, i < inner. pack_rows reads floats and writes dtype `to`;
/// unpack_rows reads dtype `from` and writes (or, with accumulate, adds to) floats.
void pack_rows(const float* src, int64_t src_rows, int64_t src_r0, void* dst, int64_t dst_rows, int64_t dst_r0,
               int64_t outer, int64_t nrows, int64_t inner, DType to);
void unpack_rows(const void* src, int64_t src_rows, int64_t src_r0, float* dst, int64_t dst_rows, int64_t dst_r0,
                 int64_t outer, int64_t nrows, int64_t inner, DType from, bool accumulate);

class ShardGather {
 public:
  /// shard: this rank's rows (split_extent rows of `rows`); full: rows * cols floats.
  ShardGather(comm::Communicator& c, int64_t rows, int64_t cols, DType dtype, const float* shard, float* full)
      : ShardGather(c, 1, rows, cols, dtype, shard, full) {}
  /// shard: this rank's box [outer, split_extent(rows), inner]; full: outer * rows * inner.
  /// arena: where the staging lives (staging_bytes() of it; pooled with the collectives that
  /// cannot be in flight at the same time, compile::StepProgram::staging_slots), or null to
  /// allocate its own.
  ShardGather(comm::Communicator& c, int64_t outer, int64_t rows, int64_t inner, DType dtype, const float* shard,
              float* full, char* arena = nullptr);
  std::function<bool()> start();
  int64_t staging_bytes() const;

 private:
  comm::Communicator* comm_;
  int64_t outer_, rows_, cols_, n_, me_, block_;
  DType dtype_;
  const float* shard_;
  float* full_;
  bool direct_;
  Kokkos::View<char*> send_, recv_;
  std::unique_ptr<comm::Collective> coll_;
};

class ShardReduceScatter {
 public:
  /// full: rows * cols floats (this rank's contribution); shard_out: this rank's rows.
  /// The result is the mean over the communicator. With accumulate, shard_out += result.
  /// The result is written (or added) when the operation completes, inside the poller
  /// start() returns: two in flight on the same shard_out must complete in issue order
  /// (the trainer makes each wait for the previous one), or a non-accumulating first one
  /// can overwrite what an accumulating second one added.
  ShardReduceScatter(comm::Communicator& c, int64_t rows, int64_t cols, DType dtype, const float* full,
                     float* shard_out, bool accumulate)
      : ShardReduceScatter(c, 1, rows, cols, dtype, full, shard_out, accumulate) {}
  /// full: outer * rows * inner; shard_out: this rank's box [outer, split_extent(rows), inner].
  /// op: Mean (gradients over data-parallel replicas) or Sum (partial sums).
  /// arena: as for ShardGather.
  ShardReduceScatter(comm::Communicator& c, int64_t outer, int64_t rows, int64_t inner, DType dtype, const float* full,
                     float* shard_out, bool accumulate, comm::ReduceOp op = comm::ReduceOp::Mean,
                     char* arena = nullptr);
  std::function<bool()> start();
  int64_t staging_bytes() const;

 private:
  comm::Communicator* comm_;
  int64_t outer_, rows_, cols_, n_, me_, block_;
  DType dtype_;
  const float* full_;
  float* out_;
  bool accumulate_;
  bool direct_;
  Kokkos::View<char*> send_, recv_;
  std::unique_ptr<comm::Collective> coll_;
};

}  // namespace shardflow::train::detail
