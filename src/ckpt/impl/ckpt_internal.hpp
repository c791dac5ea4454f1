#pragma once
// Internals shared by the checkpoint save/restore and the tools (verify, consolidate).
#include <mpi.h>
#include <sys/uio.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ckpt/checksum.hpp"
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
/// The current time, UTC, as 2026-12-02T22:09:31Z.
std::string utc_now();
/// A random name part: 40 random bits in hex and this process's id.
std::string random_nonce();

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

/// Open shard files of one step directory, by relative path (each opened and checked once).
class FileCache {
 public:
  FileCache(std::string dir, const Manifest& manifest) : dir_(std::move(dir)), manifest_(&manifest) {}
  ~FileCache();
  FileCache(const FileCache&) = delete;
  FileCache& operator=(const FileCache&) = delete;
  /// Opens (once) `rel` with POSIX I/O and checks through that descriptor that the file's
  /// size and metadata checksum (every byte outside the raw data of its datasets, HDF5's
  /// headers and chunk indexes included) are the manifest's. Returns the descriptor (the
  /// cache's). Throws InputError naming the tensor and the file when it is missing, has
  /// another size or fails that checksum. A file that passes has, byte for byte, the HDF5
  /// structure save wrote and checked against the manifest (datasets, shapes, dtypes, where
  /// every tile is): restore reads tiled shards through this descriptor without HDF5.
  int checked_fd(const std::string& rel, const std::string& tensor);
  /// checked_fd, then (once) the file opened by HDF5. Throws InputError as checked_fd does,
  /// or when it is not a readable HDF5 file.
  hid_t open(const std::string& rel, const std::string& tensor);
  const std::string& dir() const { return dir_; }

 private:
  std::string where(const std::string& rel, const std::string& tensor) const;
  std::string dir_;
  const Manifest* manifest_;
  std::map<std::string, int> fds_;
  std::map<std::string, h5::Handle> files_;
  std::map<std::string, std::string> failed_, h5_failed_;  // rel -> why (a damaged file is checked once)
};

/// Checks that the shard's dataset exists with the recorded extent, dtype and raw data
/// offset (InputError naming tensor and file otherwise); returns it open.
h5::Handle open_shard_dataset(FileCache& files, const TensorRecord& t, const ShardRecord& s);

/// The checksum tiles of a shard box (see ShardRecord).
struct TileGeometry {
  std::int64_t n0 = 1, n1 = 1;  // rows (first dimension; 1 when 0-d), columns (second; 1 when < 2-d)
  std::int64_t block_rows = 1, block_cols = 1;
  std::int64_t row_blocks = 1, col_blocks = 1;
  std::size_t col_bytes = 0;  // bytes of one column (all further dimensions)
  std::size_t row_bytes = 0;  // n1 * col_bytes
};
TileGeometry tile_geometry(const Shape& extent, std::size_t elem_size, std::int64_t block_rows, std::int64_t block_cols);
TileGeometry tile_geometry(const TensorRecord& t, const ShardRecord& s);

/// Where HDF5 stores tile k (row-major tile order) of a tiled dataset of rank nd: its chunk's
/// byte offset and size; found = false when HDF5 reports none (or a filtered chunk).
struct TileStorage {
  bool found = false;
  std::int64_t offset = -1, bytes = 0;
};
TileStorage tile_storage(hid_t dataset, const TileGeometry& g, std::size_t nd, std::int64_t k);

/// CRC-32C of column tiles j_lo..j_hi-1 over `rows` rows (of one row block): row r starts at
/// base + r*stride with the byte of shard column col0 (<= j_lo*block_cols). out[j - j_lo].
void tile_crcs(const TileGeometry& g, const unsigned char* base, std::size_t stride, std::int64_t rows,
               std::int64_t col0, std::int64_t j_lo, std::int64_t j_hi, std::uint32_t* out);

/// The smallest box of whole checksum tiles holding `want` (shard-local, non-empty): rows
/// and columns rounded out to tile bounds, further dimensions whole.
Box tile_cover(const TensorRecord& t, const ShardRecord& s, const Box& want);

/// Reads the shard-local box `rb` (from tile_cover) of the shard's dataset, tile by tile
/// with one read each (format 3) or with one HDF5 hyperslab read per row block (format 2),
/// and verifies every tile's CRC-32C right after it arrives, while in cache (InputError naming
/// tensor, file and tile on mismatch). The data lands in `mem`, a row-major array of shape
/// `mem_shape` (the manifest's dtype), at `mem_start`; dimensions from the third on must be
/// whole in `mem` (mem_shape[d] == rb.extent[d], mem_start[d] == 0). Returns the bytes read.
/// `stores`: how tiles copied from a map of the file are stored (crc32c_copy_strided):
/// Streaming for a caller's own tensor restored in place, Cached for a buffer read next.
/// A tiled shard (format 3) is read through `fd` (FileCache::checked_fd: its tiles where the
/// manifest says; `dataset` is not used and may be H5I_INVALID_HID); any other through HDF5's
/// `dataset` (open_shard_dataset).
std::int64_t read_tiles(int fd, hid_t dataset, const TensorRecord& t, const ShardRecord& s, const Box& rb,
                        unsigned char* mem, const Shape& mem_shape, const Shape& mem_start, const std::string& dir,
                        CopyStores stores = CopyStores::Cached);

/// Consecutive bytes of a file moved to or from scattered memory with few large
/// preadv/pwritev calls: pieces are queued in file order and go out when IOV_MAX pieces or
/// kMaxBytes are queued, and at flush(). Large writes matter beyond the system calls: the
/// page cache then holds the file in large folios, which every later read copies faster.
class IoStream {
 public:
  static constexpr std::size_t kMaxBytes = std::size_t(8) << 20;
  IoStream(int fd, bool write, std::int64_t at, std::string what)
      : fd_(fd), write_(write), at_(at), what_(std::move(what)) {}
  /// The next n bytes of the file from / into p.
  void add(unsigned char* p, std::size_t n);
  /// The next n bytes of the file are padding: written as zeros, dropped when read.
  void pad(std::size_t n);
  /// Everything queued.
  void flush();
  /// Writing: from now on, each flush also starts the device writeback of the bytes it just
  /// wrote (Linux sync_file_range, SYNC_FILE_RANGE_WRITE; it does not wait for it), so the
  /// disk works while the next pieces are checksummed and copied. Only a head start: the
  /// caller's fsync is still what makes the file durable and reports a failed write.
  void write_behind() { write_behind_ = true; }

 private:
  int fd_;
  bool write_;
  bool write_behind_ = false;
  std::int64_t behind_ = -1;  // the file's writeback has been started up to here (write_behind)
  std::int64_t at_;
  std::string what_;
  std::vector<iovec> iov_;
  std::size_t queued_ = 0;
  std::vector<unsigned char> zeros_;  // every pad piece points into it (a sink when reading)
  /// A write queued past kMaxBytes or IOV_MAX pieces goes out up to the last kAlignBytes
  /// boundary of the file, the rest stays queued: each 2 MiB of the file is then written by
  /// one call, and the page cache can hold it in one huge folio, which a restore's map takes
  /// with one page-table entry instead of 512 (a write ending inside it leaves small ones).
  static constexpr std::int64_t kAlignBytes = std::int64_t(2) << 20;
  void flush_queue();
  /// The first `bytes` bytes queued (a piece split where needed).
  void flush_first(std::size_t bytes);
};

/// Moves one stored tile between the file and a row-major array with one preadv/pwritev
/// (more past IOV_MAX segments): the tile's `rows` row segments of `seg` bytes are at
/// `first + r * stride` in memory and `chunk_row` bytes apart from `chunk_at` in the file
/// (chunk_row >= seg; the padding after each segment but the last is discarded on read,
/// written as zeros). Throws Error naming `what` and the byte on failure or a short file.
void tile_io(int fd, bool write, std::int64_t chunk_at, unsigned char* first, std::size_t stride, std::size_t seg,
             std::size_t chunk_row, std::int64_t rows, const std::string& what);

/// Copies box `src_box` of a row-major array `src` (shape src_shape, dtype st) into box
/// `dst_box` of a row-major array `dst` (shape dst_shape, dtype dt), converting elements.
/// Float types convert among themselves, integer types among themselves.
void copy_convert(const void* src, DType st, const Shape& src_shape, const Box& src_box, void* dst, DType dt,
                  const Shape& dst_shape, const Box& dst_box);
bool convertible(DType from, DType to);

}  // namespace shardflow::ckpt::detail
