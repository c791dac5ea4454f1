#pragma once
// ShardingConfig and ParallelismConfig: how many devices each kind of parallelism uses,
// and the mesh (axis names and sizes) that realises it.
#include <cstdint>
#include <string>
#include <vector>

#include "mesh/mesh_shape.hpp"

namespace shardflow {

struct ShardingConfig {
  int data_parallel_size = 1;
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  /// Devices of a separate `fsdp` axis (parameters sharded, batch split). 1: no such axis.
  int fsdp_parallel_size = 1;
  int expert_parallel_size = 1;
  /// Devices of a `context` axis: every sequence split over them (ring attention). 1: none.
  int context_parallel_size = 1;
  /// FSDP on: parameters are sharded over the `fsdp` axis, or over the `data` axis when
  /// fsdp_parallel_size is 1 (ZeRO-3 on the data-parallel ranks).
  bool fsdp_enabled = false;
  /// Tensors with fewer elements than this stay replicated under FSDP.
  int64_t fsdp_min_weight_size = 1024;

  /// Product of all sizes.
  int get_total_device_count() const;
  /// Throws InputError naming the field and value when a size is < 1 or the min weight size < 0.
  void validate() const;
  /// A default split of `device_count` devices: 1 → nothing; ≤ 4 → all data parallel;
  /// otherwise tensor parallel t = the largest divisor of device_count that is ≤ min(8,
  /// sqrt(device_count)), data parallel = device_count / t (every device is used).
  static ShardingConfig from_device_count(int device_count);
};

struct ParallelismConfig {
  std::vector<int> mesh_shape;
  std::vector<std::string> mesh_axis_names;
  ShardingConfig sharding_config;

  /// Axes with size > 1 in the order data, fsdp, pipeline, expert, tensor; ["data"]=[1]
  /// when nothing is parallel.
  static ParallelismConfig from_sharding_config(const ShardingConfig& config);
  /// True when names and sizes agree in number, names are known and distinct, sizes are
  /// >= 1 and the mesh has as many devices as the sharding config needs.
  bool is_valid() const;
  /// Why is_valid() is false ("" when valid).
  std::string invalid_reason() const;
  /// The MeshShape (throws InputError when invalid). Artifex's axis name "model" is the
  /// tensor-parallel axis: it becomes `tensor`.
  MeshShape to_mesh_shape() const;
  /// mesh_axis_names with "model" read as "tensor".
  std::vector<std::string> canonical_axis_names() const;
};

}  // namespace shardflow
