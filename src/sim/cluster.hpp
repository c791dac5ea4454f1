#pragma once
// A cluster's hardware model for `shardflow simulate` (docs/simulator.md): per device the
// peak FLOP/s per dtype, a GEMM efficiency curve by problem size, the memory bandwidth and
// capacity; devices per node; per link level (inside a node, across nodes) the bandwidth,
// latency and efficiency; the collective algorithm per level. Read from TOML files
// (inputs/clusters/*.toml, each constant with its source).
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.hpp"

namespace shardflow::sim {

struct Link {
  double bandwidth_gbs = 0;  // per device, each direction, GB/s (1e9 B/s)
  double latency_us = 0;     // per operation
  double hop_latency_us = 0; // per ring step
  double efficiency = 1;     // fraction of bandwidth a collective reaches
};

struct Cluster {
  std::string name, description, source;  // source: the file it came from
  double peak_f32 = 0, peak_tf32 = 0, peak_bf16 = 0, peak_f16 = 0;  // TFLOP/s, dense
  double memory_gib = 0, memory_bandwidth_gbs = 0, elementwise_efficiency = 1;
  std::vector<std::pair<double, double>> gemm_efficiency;  // (cube root of m·n·k, fraction of peak), ascending
  int devices_per_node = 1;
  /// Communication runs on the core that computes (CPU ranks: MPI copies the bytes while the
  /// executor polls between tasks), so collectives take their time out of the compute
  /// stream instead of overlapping it. [node] comm_on_compute_core; default false (GPUs).
  bool comm_on_compute_core = false;
  /// 16-bit precision runs as rounded f32 (shardflow's host kernels, docs/parallelism.md):
  /// the elementwise kernels move f32, every weight is rounded per use, every matmul output
  /// (forward) or gradient (backward) in a rounding pass, and what a layer keeps is packed
  /// to 16 bits and unpacked in its backward. [device] sixteen_bit_as_f32; default false
  /// (GPU files: 16-bit kernels on 16-bit tensors, as Megatron-LM's are).
  bool sixteen_bit_as_f32 = false;
  /// Nanoseconds to make one attention-dropout mask element (Philox rounds), charged per
  /// element each time a step makes the mask (nn::AttnDropout: forward, twice in the
  /// backward). [device] dropout_mask_ns; default 0 (GPU files: the mask is made inside
  /// memory-bound passes); `calibrate` measures it on CPUs.
  double dropout_mask_ns = 0;
  Link intra, inter;
  std::string intra_algo = "ring", inter_algo = "hierarchical";

  /// Peak FLOP/s of a GEMM whose operands are `dt` (F32 uses the f32 peak).
  double peak_flops(DType dt) const;
  /// Fraction of peak for a GEMM of this size (interpolated in log size, clamped).
  double gemm_fraction(double m, double n, double k) const;
  /// Seconds of one GEMM m × n × k (2·m·n·k FLOPs) with `dt` operands.
  double gemm_seconds(double m, double n, double k, DType dt) const;
  /// Seconds to move `bytes` through device memory at elementwise efficiency.
  double bytes_seconds(double bytes) const;
  /// Node of a global rank (ranks fill nodes in order).
  int node_of(int rank) const { return rank / devices_per_node; }
};

/// Parses a cluster file's text; `where` names it in errors (InputError naming the key).
Cluster parse_cluster(const std::string& text, const std::string& where);
/// A cluster by file path (anything containing '/' or ending in .toml) or by name: the
/// file <name>.toml in $SHARDFLOW_CLUSTERS, then in the source tree's inputs/clusters, then
/// next to the executable's ../share/shardflow/clusters. Throws InputError listing the
/// names available when none matches.
Cluster load_cluster(const std::string& name_or_file);

}  // namespace shardflow::sim
