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
void consolidate(MPI_Comm comm, const std::string& path, const std::string& out_h5);

}  // namespace shardflow::ckpt
