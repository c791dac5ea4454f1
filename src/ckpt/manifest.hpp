#pragma once
// The checkpoint manifest (manifest.json in a step directory): what a checkpoint holds and
// where. Restore, verify, inspect and consolidate work from it alone; the Layout a tensor
// was saved with is recorded for information (and resharding), never needed to read it.
// See docs/checkpoint.md for the format.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ckpt/checksum.hpp"
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

/// One saved shard: a box of the tensor stored as one dataset of one file. The
/// data is checksummed in tiles, one CRC-32C per tile, so that a partial read can still be
/// verified: tile (i, j) is rows [i*block_rows, (i+1)*block_rows) of the box's first
/// dimension times indices [j*block_cols, (j+1)*block_cols) of its second (clipped to the
/// box), all further dimensions whole, its elements in row-major order; crc32c[i*ncols + j]
/// where ncols = number of column tiles. A 0-d box is one tile; 0-d and 1-d boxes have one
/// column tile (block_cols 1).
struct ShardRecord {
  Box box;
  std::string file;     // relative to the step directory
  std::string dataset;  // HDF5 path inside the file
  std::int64_t block_rows = 1;
  std::vector<std::uint32_t> crc32c;
  int writer = -1;  // the rank that wrote it
  /// Indices of the second dimension per tile; 0 = the whole extent (one column tile).
  std::int64_t block_cols = 0;
  /// Byte offset of the dataset's raw data in its file; -1 when it has none (an empty box).
  /// The data is [file_offset, file_offset + stored_bytes(dtype size)).
  std::int64_t file_offset = -1;
  /// Format 3: the dataset is stored in tiles (HDF5 chunks of block_rows x block_cols x the
  /// further dimensions, each one contiguous run, padded at the box's far edges), tile
  /// (i, j) at file_offset + (i * col_blocks() + j) * tile_bytes: a restore reads any tile
  /// with one read. Format 2 (and 0-d boxes): one contiguous row-major dataset.
  bool tiled = false;
  /// Whether format 3 stores a shard of this box in tiles (rank >= 1 and not empty).
  static bool tiles(const Box& b) { return !b.extent.empty() && b.numel() > 0; }
  std::int64_t numel() const { return box.numel(); }
  /// Bytes of one stored tile (format 3; padding included).
  std::int64_t tile_bytes(std::size_t elem_size) const;
  /// Bytes of raw data the shard occupies in its file (0 for an empty box).
  std::int64_t stored_bytes(std::size_t elem_size) const;
  /// block_cols as stored: >= 1 (the second extent, or 1, when block_cols is 0).
  std::int64_t cols_per_block() const;
  /// Number of column tiles (1 for 0-d and 1-d boxes).
  std::int64_t col_blocks() const;
};

/// One shard file: its size and the CRC-32C of its bytes outside the raw data of its
/// datasets (the HDF5 superblock, object headers, B-trees, heaps, free space), checked with
/// plain POSIX reads before HDF5 parses the file (see file_metadata_crc32c).
struct FileRecord {
  std::string name;  // relative to the step directory
  std::int64_t size = 0;
  std::uint32_t meta_crc32c = 0;
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
  /// 3: shards of rank >= 1 are stored tile by tile (ShardRecord::tiled). 2: shard files
  /// carry a size and metadata checksum ("files"), shards a file_offset and column tiles
  /// (block_cols), datasets contiguous; still read. Version 1 manifests are refused (their
  /// shard files cannot be checked before HDF5 parses them).
  static constexpr int kVersion = 3;
  int version = kVersion;  // of the parsed text
  std::int64_t step = 0;
  int world_size = 1;
  std::string created;  // UTC time, ISO 8601
  Metadata meta;
  std::vector<TensorRecord> tensors;
  std::vector<FileRecord> files;  // every file a shard names, once

  std::string to_json() const;
  /// Parses manifest text; throws InputError naming `where` on malformed content.
  static Manifest parse(const std::string& text, const std::string& where);
  /// Throws InputError naming `where` and the tensor on: duplicate or invalid tensor
  /// names, shard boxes outside the shape or of the wrong rank, unsafe file paths
  /// (absolute, "..", empty), dataset names other than "/<tensor name>", or a checksum
  /// count that does not match the box, a shard file without a file record (or a record
  /// without shards), a data range outside its file or overlapping another. (Coverage is
  /// checked by coverage_problem.)
  void validate(const std::string& where) const;
  const TensorRecord* find(const std::string& name) const;
  const FileRecord* find_file(const std::string& name) const;
  /// The raw data ranges of every shard stored in `file`, sorted by offset.
  std::vector<ByteRange> data_ranges(const std::string& file) const;
};

/// Rows of the first dimension per checksum block: about block_bytes per block, >= 1.
std::int64_t block_rows_for(const Shape& extent, std::size_t elem_size, std::int64_t block_bytes);
/// Indices of the second dimension per checksum tile: tiles about `run_bytes` wide (a
/// tile's row segment), at most the extent (1 for 0-d and 1-d boxes).
std::int64_t block_cols_for(const Shape& extent, std::size_t elem_size, std::int64_t run_bytes);
/// Number of row blocks of a box with that extent (one column tile per row block).
std::int64_t num_blocks(const Shape& extent, std::int64_t block_rows);
/// Number of checksum tiles of a box: row blocks x column tiles (block_cols 0: whole width).
std::int64_t num_blocks(const Shape& extent, std::int64_t block_rows, std::int64_t block_cols);
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
