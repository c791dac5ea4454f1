#pragma once
// Checkpoint tools behind `shardflow ckpt inspect|verify|consolidate`.
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "ckpt/manifest.hpp"

namespace shardflow::ckpt {

/// A human-readable summary of a checkpoint (step, metadata, tensors, layouts, shards).
std::string describe(const std::string& path);

struct VerifyReport {
  std::string dir;
  std::int64_t tensors = 0, shards = 0, blocks = 0, bytes = 0;
  std::vector<std::string> problems;  // empty: the checkpoint is good
  bool ok() const { return problems.empty(); }
};

/// Collective. Checks every checksum block of every shard (the shards are spread over the
/// ranks), that every dataset exists with the recorded shape and dtype, and that the shards
/// of every tensor cover it exactly once. Problems are collected, not thrown (except a
/// missing or unreadable manifest). The report is complete on every rank.
VerifyReport verify(MPI_Comm comm, const std::string& path);

/// Collective; rank 0 writes `out_h5`: one dataset per tensor at its full global shape,
/// named exactly as the tensor, f32 for floating tensors (i64 for integer ones), and root
/// attributes `step` plus every int/real/string metadata entry. Written to a temporary
/// name and renamed, so `out_h5` is never half-written.
///
/// Model checkpoints written by `shardflow train` name their parameters in metadata strings
/// "model_shape:<tensor>" = "[d0, d1, ...]" (the tensor's shape in MODEL.md; a tensor may be
/// saved over a view of it, e.g. qkv as [3, A, D, H]). When such entries exist, only those
/// tensors are written (at that shape) unless `include_all`, which adds every other tensor
/// (optimizer moments) at its saved shape.
void consolidate(MPI_Comm comm, const std::string& path, const std::string& out_h5, bool include_all = false);

/// Parses "[d0, d1, ...]" (shape_to_string's format); InputError naming `what` otherwise.
Shape parse_shape(const std::string& text, const std::string& what);

}  // namespace shardflow::ckpt
