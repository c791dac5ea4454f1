#pragma once
// Dim-0 shard collectives of the training step: all-gather and reduce-scatter of a
// [rows, cols] f32 tensor split by rows with the uneven rule, moved in a chosen dtype.
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

class ShardGather {
 public:
  /// shard: this rank's rows (split_extent rows of `rows`); full: rows * cols floats.
  ShardGather(comm::Communicator& c, int64_t rows, int64_t cols, DType dtype, const float* shard, float* full);
  std::function<bool()> start();
  int64_t staging_bytes() const;

 private:
  comm::Communicator* comm_;
  int64_t rows_, cols_, n_, me_, block_;
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
  ShardReduceScatter(comm::Communicator& c, int64_t rows, int64_t cols, DType dtype, const float* full,
                     float* shard_out, bool accumulate);
  std::function<bool()> start();
  int64_t staging_bytes() const;

 private:
  comm::Communicator* comm_;
  int64_t rows_, cols_, n_, me_, block_;
  DType dtype_;
  const float* full_;
  float* out_;
  bool accumulate_;
  bool direct_;
  Kokkos::View<char*> send_, recv_;
  std::unique_ptr<comm::Collective> coll_;
};

}  // namespace shardflow::train::detail
