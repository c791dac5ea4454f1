#pragma once
// Internals shared by the checkpoint save/restore and the tools (verify, consolidate).
#include <mpi.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ckpt/impl/hdf5_util.hpp"
#include "ckpt/manifest.hpp"

namespace shardflow::ckpt::detail {

/// Collective: returns when `local_error` is empty on every rank; otherwise throws
/// InputError on every rank with the message of the lowest failing rank.
void agree(MPI_Comm comm, const std::string& local_error);
/// Broadcasts a string from `root`.
std::string bcast_string(MPI_Comm comm, const std::string& s, int root);

void fsync_path(const std::string& path, bool directory);
/// Creates `path` (must not exist), writes `content`, fsyncs it.
void write_file_durably(const std::string& path, const std::string& content);
std::string read_text_file(const std::string& path);
std::string join(const std::string& dir, const std::string& rel);

/// A large zero-initialised host buffer from anonymous memory with transparent huge pages
/// requested: no memset, and ~500x fewer page faults than a std::vector of the same size.
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(std::size_t bytes);
  ~HostBuffer();
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  HostBuffer(HostBuffer&& o) noexcept;
  HostBuffer& operator=(HostBuffer&& o) noexcept;
  unsigned char* data() { return p_; }
  const unsigned char* data() const { return p_; }
  std::size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }

 private:
  unsigned char* p_ = nullptr;
  std::size_t n_ = 0;
  std::size_t mapped_ = 0;
};

/// Open shard files of one step directory, by relative path (each opened once).
class FileCache {
 public:
  explicit FileCache(std::string dir) : dir_(std::move(dir)) {}
  /// Opens (once) `rel`; throws InputError naming the tensor and the file when it is
  /// missing or not a readable HDF5 file (e.g. truncated).
  hid_t open(const std::string& rel, const std::string& tensor);
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::map<std::string, h5::Handle> files_;
};

/// Checks that the shard's dataset exists with the recorded extent and dtype (InputError
/// naming tensor and file otherwise); returns it open.
h5::Handle open_shard_dataset(FileCache& files, const TensorRecord& t, const ShardRecord& s);

/// Reads whole checksum blocks [b_lo, b_hi) of a shard (rows [b_lo*R, min(b_hi*R, n0)) of
/// its first dimension, all of the others) into `out` (raw bytes, row-major) and verifies
/// each block's CRC-32C (InputError naming tensor, file, block on mismatch). Returns the
/// first row read.
std::int64_t read_blocks(hid_t dataset, const TensorRecord& t, const ShardRecord& s, std::int64_t b_lo,
                         std::int64_t b_hi, std::vector<unsigned char>& out, const std::string& dir);

/// Same, into `out`, which must hold the rows read (returns the first row read).
std::int64_t read_blocks_into(hid_t dataset, const TensorRecord& t, const ShardRecord& s, std::int64_t b_lo,
                              std::int64_t b_hi, unsigned char* out, const std::string& dir);

/// Copies box `src_box` of a row-major array `src` (shape src_shape, dtype st) into box
/// `dst_box` of a row-major array `dst` (shape dst_shape, dtype dt), converting elements.
/// Float types convert among themselves, integer types among themselves.
void copy_convert(const void* src, DType st, const Shape& src_shape, const Box& src_box, void* dst, DType dt,
                  const Shape& dst_shape, const Box& dst_box);
bool convertible(DType from, DType to);

}  // namespace shardflow::ckpt::detail
