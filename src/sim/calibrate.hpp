#pragma once
// `shardflow calibrate`: measures this machine and writes a cluster file (`--cluster local`).
//  * GEMM: the model's own gemm path (nn::Linear's forward, input-gradient and weight-gradient
//    products, the BLAS shardflow chose) on one core at square sizes 32 … 1024; the highest
//    of the sizes' rates is the peak, each size's share of it the curve.
//  * Every measurement runs on every rank at once (the ranks of a step compute at once and
//    share the memory system) and takes the median call, each call on the next of several
//    operand sets that together exceed the caches (a step's kernels read what other kernels
//    touched last): the simulation is compared with median steps, not with the fastest
//    moment of warm caches. The file has the slowest rank's figures: a synchronous step
//    waits for its slowest rank at every collective.
//  * Memory: STREAM's triad on 64 MiB arrays (two reads and one write per element) is the
//    bandwidth; the model's SwiGLU, RmsNorm, attention softmax and AdamW kernels, each
//    charged the bytes the simulator counts for it, against it are the elementwise
//    efficiency (capped at 1; the file has the measured value beside it).
//  * Links: with two or more MPI ranks, a ping-pong between ranks 0 and 1 (8 B for the
//    latency, 16 MiB for the bandwidth). A single process has no peer: it estimates MPI's
//    shared-memory transport as two copies through a shared buffer (half the memcpy rate)
//    and says so in the file.
#include <string>

#include <mpi.h>

#include "sim/cluster.hpp"

namespace shardflow::sim {

struct CalibrationOptions {
  bool quick = false;  // fewer repetitions (tests)
};

/// Measures (collective over `comm`: every rank takes part in the link test) and returns the
/// cluster file's text (rank 0's measurement; other ranks get the same text).
std::string calibrate_local(MPI_Comm comm, const CalibrationOptions& options = {});

/// Where `--cluster local` looks and `calibrate` writes by default: $SHARDFLOW_CLUSTERS/local.toml
/// when that is set, else $XDG_CACHE_HOME/shardflow/local.toml, else ~/.cache/shardflow/local.toml.
std::string local_cluster_path();

}  // namespace shardflow::sim
