#pragma once
// The checkpoint manifest (manifest.json in a step directory): what a checkpoint holds and
// where. Restore, verify, inspect and consolidate work from it alone; the Layout a tensor
// was saved with is recorded for information (and resharding), never needed to read it.
// See docs/checkpoint.md for the format.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "layout/layout.hpp"
#include "mesh/mesh_shape.hpp"

namespace shardflow::ckpt {

/// Scalars and opaque state saved with a checkpoint.
struct Metadata {
  std::int64_t step = 0;
  std::map<std::string, std::int64_t> ints;                 // e.g. "data_position"
  std::map<std::string, double> reals;                      // e.g. "loss"
  std::map<std::string, std::string> strings;               // e.g. "deck" (the deck text)
  std::map<std::string, std::vector<std::uint8_t>> blobs;   // e.g. "rng" (opaque bytes)
  bool operator==(const Metadata& o) const {
    return step == o.step && ints == o.ints && reals == o.reals && strings == o.strings && blobs == o.blobs;
  }
};

/// One saved shard: a box of the tensor stored as one dataset of one file. The data is
/// checksummed in blocks of `block_rows` rows of the box's first dimension (a 0-d tensor
/// is one block), one CRC-32C per block, so that a partial read can still be verified.
struct ShardRecord {
  Box box;
  std::string file;     // relative to the step directory
  std::string dataset;  // HDF5 path inside the file
  std::int64_t block_rows = 1;
  std::vector<std::uint32_t> crc32c;
  int writer = -1;  // the rank that wrote it
  std::int64_t numel() const { return box.numel(); }
};

struct TensorRecord {
  std::string name;
  Shape shape;
  DType dtype = DType::F32;
  std::string spec;  // PartitionSpec::to_string() of the layout it was saved with
  MeshShape mesh;
  std::map<std::string, int> pinned;
  std::vector<ShardRecord> shards;
};

struct Manifest {
  static constexpr int kVersion = 1;
  std::int64_t step = 0;
  int world_size = 1;
  std::string created;  // UTC time, ISO 8601
  Metadata meta;
  std::vector<TensorRecord> tensors;

  std::string to_json() const;
  /// Parses manifest text; throws InputError naming `where` on malformed content.
  static Manifest parse(const std::string& text, const std::string& where);
  /// Throws InputError naming `where` and the tensor on: duplicate or invalid tensor
  /// names, shard boxes outside the shape or of the wrong rank, unsafe file paths
  /// (absolute, "..", empty), dataset names other than "/<tensor name>", or a checksum
  /// count that does not match the box. (Coverage is checked by coverage_problem.)
  void validate(const std::string& where) const;
  const TensorRecord* find(const std::string& name) const;
};

/// Rows of the first dimension per checksum block: about block_bytes per block, >= 1.
std::int64_t block_rows_for(const Shape& extent, std::size_t elem_size, std::int64_t block_bytes);
/// Number of checksum blocks of a box with that extent.
std::int64_t num_blocks(const Shape& extent, std::int64_t block_rows);
/// Elements per row of the first dimension (1 for 0-d and 1-d boxes... of 1-d: 1).
std::int64_t row_numel(const Shape& extent);

/// Empty when the shards of `t` cover every element of the tensor exactly once;
/// otherwise a description of the first gap or overlap found.
std::string coverage_problem(const TensorRecord& t);
/// A relative path without "..", ".", empty or absolute components.
bool is_safe_relative_path(const std::string& p);
/// A tensor name that can be an HDF5 dataset name: non-empty, no '/', not "." or "..".
bool is_valid_tensor_name(const std::string& name);

}  // namespace shardflow::ckpt
