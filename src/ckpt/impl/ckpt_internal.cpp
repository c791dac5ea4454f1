#include "ckpt/impl/ckpt_internal.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>

#include "ckpt/checksum.hpp"
#include "comm/control.hpp"
#include "comm/mpi_check.hpp"
#include "core/half.hpp"
#include "core/memory.hpp"
#include "kernels/pack.hpp"

namespace shardflow::ckpt::detail {

namespace fs = std::filesystem;

void agree(MPI_Comm comm, const std::string& local_error) { comm::Control(comm).agree(local_error); }

std::string bcast_string(MPI_Comm comm, const std::string& s, int root) {
  return comm::Control(comm).broadcast(s, root);
}

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  SHARDFLOW_REQUIRE(fd >= 0, "ckpt: cannot open '", path, "' to fsync: ", std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  SHARDFLOW_REQUIRE(rc == 0, "ckpt: fsync of '", path, "' failed: ", std::strerror(err));
}

void write_file_durably(const std::string& path, const std::string& content) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  SHARDFLOW_REQUIRE(fd >= 0, "ckpt: cannot create '", path, "': ", std::strerror(errno));
  size_t done = 0;
  while (done < content.size()) {
    ssize_t w = ::write(fd, content.data() + done, content.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      int err = errno;
      ::close(fd);
      throw Error(::shardflow::detail::concat("ckpt: write to '", path, "' failed: ", std::strerror(err)));
    }
    done += static_cast<size_t>(w);
  }
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  SHARDFLOW_REQUIRE(rc == 0, "ckpt: fsync of '", path, "' failed: ", std::strerror(err));
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SHARDFLOW_REQUIRE_INPUT(in.good(), "ckpt: cannot read '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string join(const std::string& dir, const std::string& rel) { return (fs::path(dir) / rel).string(); }

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

std::string random_nonce() {
  std::random_device rd;
  std::uniform_int_distribution<unsigned long long> d;
  char b[32];
  std::snprintf(b, sizeof b, "%llx-%d", d(rd) & 0xffffffffffULL, static_cast<int>(::getpid()));
  return b;
}

HostBuffer::HostBuffer(std::size_t bytes) : n_(bytes) {
  if (bytes == 0) return;
  constexpr std::size_t kHuge = std::size_t(2) << 20;
  mapped_ = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SHARDFLOW_REQUIRE(p != MAP_FAILED, "ckpt: cannot allocate a host buffer of ", bytes, " bytes: ", std::strerror(errno));
#ifdef MADV_HUGEPAGE
  ::madvise(p, mapped_, MADV_HUGEPAGE);  // a hint: fine when refused
#endif
  p_ = static_cast<unsigned char*>(p);
  memory::note_alloc(p_, static_cast<std::int64_t>(bytes));
}
HostBuffer::~HostBuffer() {
  if (p_) {
    memory::note_free(p_);
    ::munmap(p_, mapped_);
  }
}
HostBuffer::HostBuffer(HostBuffer&& o) noexcept
    : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)), mapped_(std::exchange(o.mapped_, 0)) {}
HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) {
      memory::note_free(p_);
      ::munmap(p_, mapped_);
    }
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
    mapped_ = std::exchange(o.mapped_, 0);
  }
  return *this;
}

FileCache::~FileCache() {
  for (const auto& f : fds_) ::close(f.second);
}

std::string FileCache::where(const std::string& rel, const std::string& tensor) const {
  return ::shardflow::detail::concat("checkpoint ", dir_, ": tensor '", tensor, "': shard file '", join(dir_, rel),
                                     "'");
}

int FileCache::checked_fd(const std::string& rel, const std::string& tensor) {
  auto it = fds_.find(rel);
  if (it != fds_.end()) return it->second;
  using ::shardflow::detail::concat;
  const std::string path = join(dir_, rel);
  auto bad = failed_.find(rel);
  if (bad != failed_.end()) throw InputError(concat(where(rel, tensor), bad->second));
  auto refuse = [&](const std::string& why) {
    failed_[rel] = why;
    throw InputError(concat(where(rel, tensor), why));
  };
  const FileRecord* rec = manifest_->find_file(rel);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    refuse(errno == ENOENT ? std::string(" is missing") : concat(" cannot be opened: ", std::strerror(errno)));
  // The file is checked before anything trusts its metadata (HDF5 would: a damaged size or
  // address field can make it read or allocate out of bounds; restore maps tiles where the
  // manifest says they are).
  std::string why;
  struct stat st {};
  if (!rec) {
    why = " has no size and metadata checksum in the manifest";
  } else if (::fstat(fd, &st) != 0) {
    why = concat(" cannot be examined: ", std::strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    why = " is not a regular file";
  } else if (static_cast<std::int64_t>(st.st_size) != rec->size) {
    why = concat(" has size ", static_cast<std::int64_t>(st.st_size), " bytes but the manifest says ", rec->size,
                 " (truncated or replaced?)");
  } else {
    std::uint32_t crc = 0;
    try {
      crc = file_crc32c_outside(fd, path, rec->size, manifest_->data_ranges(rel));
      if (crc != rec->meta_crc32c) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "stored %08x, computed %08x", rec->meta_crc32c, crc);
        why = concat(": metadata checksum mismatch (", buf, "): the HDF5 structure of the file is damaged");
      }
    } catch (const Error& e) {
      why = concat(": ", e.what());
    }
  }
  if (!why.empty()) {
    ::close(fd);
    refuse(why);
  }
  fds_.emplace(rel, fd);
  return fd;
}

hid_t FileCache::open(const std::string& rel, const std::string& tensor) {
  checked_fd(rel, tensor);
  auto it = files_.find(rel);
  if (it != files_.end()) return it->second.id();
  using ::shardflow::detail::concat;
  auto bad = h5_failed_.find(rel);
  if (bad != h5_failed_.end()) throw InputError(concat(where(rel, tensor), bad->second));
  h5::Handle f;
  try {
    f = h5::file_open_read(join(dir_, rel));
  } catch (const Error& e) {
    h5_failed_[rel] = concat(" cannot be opened (not HDF5?): ", e.what());
    throw InputError(concat(where(rel, tensor), h5_failed_[rel]));
  }
  hid_t id = f.id();
  files_.emplace(rel, std::move(f));
  return id;
}

TileStorage tile_storage(hid_t dataset, const TileGeometry& g, std::size_t nd, std::int64_t k) {
  std::vector<hsize_t> at(nd, 0);
  at[0] = static_cast<hsize_t>(k / g.col_blocks * g.block_rows);
  if (nd >= 2) at[1] = static_cast<hsize_t>(k % g.col_blocks * g.block_cols);
  unsigned mask = 0;
  haddr_t addr = HADDR_UNDEF;
  hsize_t bytes = 0;
  TileStorage r;
  r.found = H5Dget_chunk_info_by_coord(dataset, at.data(), &mask, &addr, &bytes) >= 0 && mask == 0 && addr != HADDR_UNDEF;
  if (r.found) {
    r.offset = static_cast<std::int64_t>(addr);
    r.bytes = static_cast<std::int64_t>(bytes);
  }
  return r;
}

h5::Handle open_shard_dataset(FileCache& files, const TensorRecord& t, const ShardRecord& s) {
  hid_t file = files.open(s.file, t.name);
  const std::string where = ::shardflow::detail::concat("checkpoint ", files.dir(), ": tensor '", t.name, "': file '",
                                                        join(files.dir(), s.file), "'");
  try {
    SHARDFLOW_REQUIRE_INPUT(h5::link_exists(file, s.dataset), where, " has no dataset '", s.dataset, "'");
    h5::Handle ds = h5::dataset_open(file, s.dataset);
    auto dims = h5::dataset_dims(ds);
    Shape got(dims.begin(), dims.end());
    SHARDFLOW_REQUIRE_INPUT(got == s.box.extent, where, ": dataset '", s.dataset, "' has shape ", shape_to_string(got),
                            " but the manifest says ", shape_to_string(s.box.extent));
    SHARDFLOW_REQUIRE_INPUT(h5::type_matches(ds, t.dtype), where, ": dataset '", s.dataset,
                            "' does not hold the manifest's dtype ", dtype_name(t.dtype));
    if (s.tiled) {
      // the tiles where the manifest says: HDF5 chunks of the tile's shape, the first and
      // the last at their places in the run of tiles (the file's metadata checksum, checked
      // before, covers HDF5's chunk index)
      const size_t nd = s.box.extent.size();
      h5::Handle dcpl(CHECK_HDF5(H5Dget_create_plist(ds)), H5Pclose);
      std::vector<hsize_t> chunk(nd, 0), want(s.box.extent.begin(), s.box.extent.end());
      want[0] = static_cast<hsize_t>(s.block_rows);
      if (nd >= 2) want[1] = static_cast<hsize_t>(s.cols_per_block());
      const bool chunked = H5Pget_layout(dcpl) == H5D_CHUNKED &&
                           H5Pget_chunk(dcpl, static_cast<int>(nd), chunk.data()) == static_cast<int>(nd) && chunk == want;
      SHARDFLOW_REQUIRE_INPUT(chunked, where, ": dataset '", s.dataset, "' is not stored in tiles of ",
                              s.block_rows, " x ", s.cols_per_block(), " as the manifest says");
      const TileGeometry g = tile_geometry(t, s);
      const std::int64_t tb = s.tile_bytes(dtype_size(t.dtype)), last = g.row_blocks * g.col_blocks - 1;
      for (const std::int64_t k : {std::int64_t(0), last}) {
        const TileStorage at = tile_storage(ds, g, nd, k);
        const bool ok = at.found && at.offset == s.file_offset + k * tb && at.bytes == tb;
        SHARDFLOW_REQUIRE_INPUT(ok, where, ": dataset '", s.dataset, "': tile ", k, " is not stored at byte ",
                                s.file_offset + k * tb, " as the manifest says");
      }
    } else if (s.numel() > 0) {
      const haddr_t at = H5Dget_offset(ds);
      SHARDFLOW_REQUIRE_INPUT(at != HADDR_UNDEF && static_cast<std::int64_t>(at) == s.file_offset, where, ": dataset '",
                              s.dataset, "' is not stored contiguously at byte ", s.file_offset, " as the manifest says");
    }
    return ds;
  } catch (const InputError&) {
    throw;
  } catch (const Error& e) {
    throw InputError(::shardflow::detail::concat(where, ": cannot read dataset '", s.dataset, "': ", e.what()));
  }
}

TileGeometry tile_geometry(const Shape& extent, std::size_t elem_size, std::int64_t block_rows, std::int64_t block_cols) {
  TileGeometry g;
  g.n0 = extent.empty() ? 1 : extent[0];
  g.n1 = extent.size() >= 2 ? extent[1] : 1;
  g.col_bytes = elem_size;
  for (size_t d = 2; d < extent.size(); ++d) g.col_bytes *= static_cast<std::size_t>(extent[d]);
  g.row_bytes = static_cast<std::size_t>(g.n1) * g.col_bytes;
  g.block_rows = std::max<std::int64_t>(1, block_rows);
  g.block_cols = extent.size() >= 2 && block_cols >= 1 ? block_cols : std::max<std::int64_t>(1, g.n1);
  g.row_blocks = num_blocks(extent, g.block_rows);
  g.col_blocks = extent.size() < 2 || g.n1 == 0 ? 1 : (g.n1 - 1) / g.block_cols + 1;
  return g;
}

TileGeometry tile_geometry(const TensorRecord& t, const ShardRecord& s) {
  return tile_geometry(s.box.extent, dtype_size(t.dtype), s.block_rows, s.cols_per_block());
}

void tile_crcs(const TileGeometry& g, const unsigned char* base, std::size_t stride, std::int64_t rows,
               std::int64_t col0, std::int64_t j_lo, std::int64_t j_hi, std::uint32_t* out) {
  auto seg_begin = [&](std::int64_t j) { return static_cast<std::size_t>(j * g.block_cols - col0) * g.col_bytes; };
  auto seg_len = [&](std::int64_t j) {
    return static_cast<std::size_t>(std::min(g.n1, (j + 1) * g.block_cols) - j * g.block_cols) * g.col_bytes;
  };
  for (std::int64_t j = j_lo; j < j_hi; ++j) out[j - j_lo] = 0;
  if (j_hi - j_lo == 1 && seg_len(j_lo) == stride) {  // one tile of whole, adjacent rows
    out[0] = crc32c(base + seg_begin(j_lo), stride * static_cast<std::size_t>(rows));
    return;
  }
  if (crc32c_strided_is_fast(static_cast<std::size_t>(g.block_cols) * g.col_bytes)) {
    // carry-less-multiply folding runs at full speed along each tile's row segments
    // (crc32c_strided chains one CRC per segment for a narrower last tile)
    for (std::int64_t j = j_lo; j < j_hi; ++j)
      out[j - j_lo] = crc32c_strided(base + seg_begin(j), stride, seg_len(j), static_cast<std::size_t>(rows));
    return;
  }
  // The crc32 instruction has a latency of 3 cycles: three independent streams run at
  // full speed. Tiles of a row go three at a time; each remaining tile (at most two) is
  // split into three row ranges whose CRCs are combined.
  const std::size_t full = static_cast<std::size_t>(g.block_cols) * g.col_bytes;
  std::int64_t groups = 0;  // tiles j_lo .. j_lo + 3*groups - 1 go three at a time
  while (j_lo + 3 * (groups + 1) <= j_hi && seg_len(j_lo + 3 * groups + 2) == full) ++groups;
  const std::int64_t j_rest = j_lo + 3 * groups;
  for (std::int64_t r = 0; r < rows && groups > 0; ++r) {
    const unsigned char* row = base + static_cast<std::size_t>(r) * stride;
    for (std::int64_t j = j_lo; j < j_rest; j += 3) {
      const void* const p[3] = {row + seg_begin(j), row + seg_begin(j + 1), row + seg_begin(j + 2)};
      crc32c_x3(p, full, out + (j - j_lo));
    }
  }
  for (std::int64_t j = j_rest; j < j_hi; ++j) {
    const std::size_t len = seg_len(j);
    const unsigned char* col = base + seg_begin(j);
    auto at = [&](std::int64_t r) { return col + static_cast<std::size_t>(r) * stride; };
    const std::int64_t k = rows / 3;
    std::uint32_t c[3] = {0, 0, 0};
    for (std::int64_t r = 0; r < k; ++r) {
      const void* const p[3] = {at(r), at(k + r), at(2 * k + r)};
      crc32c_x3(p, len, c);
    }
    for (std::int64_t r = 3 * k; r < rows; ++r) c[2] = crc32c(at(r), len, c[2]);
    const std::size_t part = static_cast<std::size_t>(k) * len;
    out[j - j_lo] = crc32c_combine(crc32c_combine(c[0], c[1], part), c[2], static_cast<std::size_t>(rows - 2 * k) * len);
  }
}

Box tile_cover(const TensorRecord& t, const ShardRecord& s, const Box& want) {
  const TileGeometry g = tile_geometry(t, s);
  Box rb{Shape(s.box.extent.size(), 0), s.box.extent};
  if (!s.box.extent.empty()) {
    const std::int64_t lo = want.offset[0] / g.block_rows * g.block_rows;
    const std::int64_t hi = std::min(g.n0, (want.offset[0] + want.extent[0] + g.block_rows - 1) / g.block_rows * g.block_rows);
    rb.offset[0] = lo;
    rb.extent[0] = hi - lo;
  }
  if (s.box.extent.size() >= 2) {
    const std::int64_t lo = want.offset[1] / g.block_cols * g.block_cols;
    const std::int64_t hi = std::min(g.n1, (want.offset[1] + want.extent[1] + g.block_cols - 1) / g.block_cols * g.block_cols);
    rb.offset[1] = lo;
    rb.extent[1] = hi - lo;
  }
  return rb;
}

namespace {
// Whether a restore reads its tiles through a memory map of the shard file (one pass: each
// byte copied into place and checksummed from the same register, no kernel copy before it)
// or with preadv. SHARDFLOW_CKPT_MMAP=0 or 1 decides; otherwise the map, except on network
// file systems, where each page fault becomes a round trip that one large read avoids.
bool map_tiles(int fd) {
  if (const char* e = std::getenv("SHARDFLOW_CKPT_MMAP")) return std::strcmp(e, "0") != 0;
  struct statfs sf {};
  if (::fstatfs(fd, &sf) != 0) return false;
  switch (static_cast<unsigned long>(sf.f_type)) {
    case 0x6969UL:      // NFS
    case 0x0BD00BD0UL:  // Lustre
    case 0x47504653UL:  // GPFS
    case 0xFF534D42UL:  // CIFS
    case 0xFE534D42UL:  // SMB2
    case 0x65735546UL:  // FUSE
    case 0x00C36400UL:  // Ceph
    case 0x19830326UL:  // BeeGFS
      return false;
    default:
      return true;
  }
}

// A read-only map of [lo, hi) of a file (page-aligned below lo); at(off) is file byte off.
struct FileMap {
  void* base = MAP_FAILED;
  std::size_t len = 0;
  std::int64_t start = 0;
  FileMap(int fd, std::int64_t lo, std::int64_t hi) {
    const std::int64_t page = ::sysconf(_SC_PAGESIZE);
    start = lo / page * page;
    len = static_cast<std::size_t>(hi - start);
    base = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
  }
  ~FileMap() {
    if (base != MAP_FAILED) ::munmap(base, len);
  }
  FileMap(const FileMap&) = delete;
  FileMap& operator=(const FileMap&) = delete;
  bool ok() const { return base != MAP_FAILED; }
  const unsigned char* at(std::int64_t off) const { return static_cast<const unsigned char*>(base) + (off - start); }
  // Brings [off, off + n) of the file into the page tables, reading from storage exactly
  // the pages the page cache lacks (a partial read stays partial): first asked for as one
  // readahead each (MADV_WILLNEED, asynchronous, no read-around), then faulted in
  // (MADV_POPULATE_READ, Linux 5.14; where the kernel lacks it the copy faults them in).
  void prefetch(const std::vector<std::pair<std::int64_t, std::int64_t>>& ranges) const {
#ifndef MADV_POPULATE_READ
    constexpr int MADV_POPULATE_READ = 22;  // (older headers lack it)
#endif
    const std::int64_t page = ::sysconf(_SC_PAGESIZE);
    for (int advice : {MADV_WILLNEED, static_cast<int>(MADV_POPULATE_READ)})
      for (const auto& [off, n] : ranges) {
        const std::int64_t a = off / page * page;
        ::madvise(const_cast<unsigned char*>(at(a)), static_cast<std::size_t>(off + n - a), advice);
      }
  }
};
}  // namespace

namespace {
void io_all(int fd, bool write, std::vector<iovec>& iov, std::int64_t at, const std::string& what) {
  std::size_t k = 0;
  while (k < iov.size()) {
    const int cnt = static_cast<int>(std::min<std::size_t>(iov.size() - k, IOV_MAX));
    const ssize_t n = write ? ::pwritev(fd, &iov[k], cnt, static_cast<off_t>(at)) : ::preadv(fd, &iov[k], cnt, static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      throw Error(::shardflow::detail::concat(what, ": ", write ? "write" : "read", " at byte ", at, " failed: ",
                                              std::strerror(errno)));
    if (n == 0) throw Error(::shardflow::detail::concat(what, ": the file ends at byte ", at));
    at += n;
    auto left = static_cast<std::size_t>(n);
    while (left > 0) {
      if (left >= iov[k].iov_len) {
        left -= iov[k].iov_len;
        ++k;
      } else {
        iov[k].iov_base = static_cast<unsigned char*>(iov[k].iov_base) + left;
        iov[k].iov_len -= left;
        left = 0;
      }
    }
  }
}

/// CRC-32C of `rows` segments of `seg` bytes, `stride` apart.
std::uint32_t rows_crc(const unsigned char* first, std::size_t stride, std::size_t seg, std::int64_t rows) {
  if (rows <= 0) return 0;
  if (stride == seg) return crc32c(first, seg * static_cast<std::size_t>(rows));
  return crc32c_strided(first, stride, seg, static_cast<std::size_t>(rows));
}
}  // namespace

void IoStream::add(unsigned char* p, std::size_t n) {
  if (n == 0) return;
  if (!iov_.empty() && static_cast<unsigned char*>(iov_.back().iov_base) + iov_.back().iov_len == p &&
      (zeros_.empty() || iov_.back().iov_base < zeros_.data() || iov_.back().iov_base >= zeros_.data() + zeros_.size()))
    iov_.back().iov_len += n;
  else
    iov_.push_back(iovec{p, n});
  queued_ += n;
  if (iov_.size() >= static_cast<std::size_t>(IOV_MAX) || queued_ >= kMaxBytes) flush_queue();
}

void IoStream::pad(std::size_t n) {
  if (n == 0) return;
  if (zeros_.size() < n) {
    flush();  // queued pieces may point into the old buffer
    zeros_.assign(std::max(n, std::size_t(4096)), 0);
  }
  iov_.push_back(iovec{zeros_.data(), n});
  queued_ += n;
  if (iov_.size() >= static_cast<std::size_t>(IOV_MAX) || queued_ >= kMaxBytes) flush_queue();
}

void IoStream::flush_queue() {
  const std::int64_t cut = (at_ + static_cast<std::int64_t>(queued_)) / kAlignBytes * kAlignBytes;
  if (write_ && cut > at_) {
    flush_first(static_cast<std::size_t>(cut - at_));
    if (iov_.size() < static_cast<std::size_t>(IOV_MAX)) return;
  }
  flush();
}

void IoStream::flush() { flush_first(queued_); }

void IoStream::flush_first(std::size_t bytes) {
  if (iov_.empty() || bytes == 0) return;
  std::vector<iovec> rest;
  if (bytes < queued_) {  // split at `bytes`: the first pieces go now, the others wait
    std::size_t k = 0, sum = 0;
    while (sum + iov_[k].iov_len <= bytes) sum += iov_[k++].iov_len;
    const std::size_t part = bytes - sum;
    rest.assign(iov_.begin() + static_cast<std::ptrdiff_t>(k), iov_.end());
    iov_.resize(k);
    if (part > 0) {
      iov_.push_back(iovec{rest.front().iov_base, part});
      rest.front().iov_base = static_cast<unsigned char*>(rest.front().iov_base) + part;
      rest.front().iov_len -= part;
    }
  }
  io_all(fd_, write_, iov_, at_, what_);
#ifdef __linux__
  // a hint: a file system without it (or an error here) leaves the writeback to fsync. Whole
  // pages only: the last, partial page is written again by the next flush, and a page under
  // writeback would make that write wait (file systems that keep pages stable while written)
  if (write_ && write_behind_) {
    static const std::int64_t page = std::max<std::int64_t>(4096, ::sysconf(_SC_PAGESIZE));
    if (behind_ < 0) behind_ = at_ / page * page;
    const std::int64_t end = (at_ + static_cast<std::int64_t>(bytes)) / page * page;
    if (end > behind_) {
      (void)::sync_file_range(fd_, static_cast<off_t>(behind_), static_cast<off_t>(end - behind_),
                              SYNC_FILE_RANGE_WRITE);
      behind_ = end;
    }
  }
#endif
  at_ += static_cast<std::int64_t>(bytes);
  queued_ -= bytes;
  iov_ = std::move(rest);  // (a read stream's padding landed in zeros_: a sink it never reads back)
}

void tile_io(int fd, bool write, std::int64_t chunk_at, unsigned char* first, std::size_t stride, std::size_t seg,
             std::size_t chunk_row, std::int64_t rows, const std::string& what) {
  IoStream io(fd, write, chunk_at, what);
  for (std::int64_t r = 0; r < rows; ++r) {
    io.add(first + static_cast<std::size_t>(r) * stride, seg);
    if (r + 1 < rows) io.pad(chunk_row - seg);
  }
  io.flush();
}

std::int64_t read_tiles(int fd, hid_t dataset, const TensorRecord& t, const ShardRecord& s, const Box& rb,
                        unsigned char* mem, const Shape& mem_shape, const Shape& mem_start, const std::string& dir,
                        CopyStores stores) {
  using ::shardflow::detail::concat;
  const TileGeometry g = tile_geometry(t, s);
  const Shape& ext = s.box.extent;
  const size_t nd = ext.size();
  const std::string where =
      concat("checkpoint ", dir, ": tensor '", t.name, "': file '", join(dir, s.file), "' dataset '", s.dataset, "'");
  const std::int64_t a0 = nd ? rb.offset[0] : 0, a1 = nd ? rb.offset[0] + rb.extent[0] : 1;
  const std::int64_t c0 = nd >= 2 ? rb.offset[1] : 0, c1 = nd >= 2 ? rb.offset[1] + rb.extent[1] : g.n1;
  SHARDFLOW_REQUIRE(rb.offset.size() == nd && mem_shape.size() == nd && mem_start.size() == nd, where,
                    ": read_tiles: rank mismatch");
  SHARDFLOW_REQUIRE(a0 % g.block_rows == 0 && (a1 % g.block_rows == 0 || a1 == g.n0) && c0 % g.block_cols == 0 &&
                        (c1 % g.block_cols == 0 || c1 == g.n1),
                    where, ": read_tiles: box ", rb.to_string(), " is not made of whole tiles");
  for (size_t d = 2; d < nd; ++d)
    SHARDFLOW_REQUIRE(mem_shape[d] == ext[d] && rb.extent[d] == ext[d] && mem_start[d] == 0, where,
                      ": read_tiles: dimension ", d, " is not whole");
  const std::int64_t j_lo = c0 / g.block_cols, j_hi = c1 == c0 ? j_lo : (c1 - 1) / g.block_cols + 1;
  // memory layout: row stride and the byte of (row a0, column c0)
  const std::size_t stride = nd >= 2 ? static_cast<std::size_t>(mem_shape[1]) * g.col_bytes : g.col_bytes;
  const std::size_t origin = nd >= 2 ? (static_cast<std::size_t>(mem_start[0]) * static_cast<std::size_t>(mem_shape[1]) +
                                        static_cast<std::size_t>(mem_start[1])) * g.col_bytes
                                     : nd == 1 ? static_cast<std::size_t>(mem_start[0]) * g.col_bytes : 0;
  const bool empty = s.numel() == 0 || rb.numel() == 0;
  // tile (b, j) of rows [ra, re) must hash to its recorded CRC
  auto check = [&](std::int64_t b, std::int64_t j, std::int64_t ra, std::int64_t re, std::uint32_t got) {
    const std::uint32_t want = s.crc32c[static_cast<size_t>(b * g.col_blocks + j)];
    if (got == want) return;
    char buf[64];
    std::snprintf(buf, sizeof buf, "stored %08x, computed %08x", want, got);
    const std::int64_t ca = j * g.block_cols, ce = std::min(g.n1, ca + g.block_cols);
    throw InputError(concat(where, ": checksum mismatch in block ", b * g.col_blocks + j, " (rows [", ra, ", ", re, ")",
                            nd >= 2 ? concat(", columns [", ca, ", ", ce, ")") : std::string(), "): ", buf,
                            "; the file is corrupt"));
  };
  if (s.tiled && !empty) {
    // Each tile straight into place and checked: copied from a map of the file with its
    // CRC-32C folded on the way (crc32c_copy_strided), or read with one preadv and its CRC
    // taken right after, while the bytes are still in cache.
    const std::int64_t tb = s.tile_bytes(dtype_size(t.dtype));
    const std::size_t chunk_row = static_cast<std::size_t>(g.block_cols) * g.col_bytes;
    std::unique_ptr<FileMap> map;
    if (map_tiles(fd)) {
      const std::int64_t b_lo = a0 / g.block_rows, b_hi = (a1 + g.block_rows - 1) / g.block_rows;
      const std::int64_t lo = s.file_offset + (b_lo * g.col_blocks + j_lo) * tb;
      const std::int64_t hi = s.file_offset + ((b_hi - 1) * g.col_blocks + j_hi) * tb;
      struct stat st {};
      SHARDFLOW_REQUIRE(::fstat(fd, &st) == 0, where, ": fstat failed: ", std::strerror(errno));
      if (static_cast<std::int64_t>(st.st_size) < hi)
        throw InputError(concat(where, ": the file holds ", static_cast<std::int64_t>(st.st_size),
                                " bytes but its tiles reach byte ", hi, "; the file is truncated"));
      map = std::make_unique<FileMap>(fd, lo, hi);
      if (!map->ok()) {
        map.reset();  // (a file system that cannot map: read instead)
      } else {
        // every column block: the run [lo, hi) is all needed; else the tiles of each row block
        std::vector<std::pair<std::int64_t, std::int64_t>> need;
        if (j_lo == 0 && j_hi == g.col_blocks)
          need.emplace_back(lo, hi - lo);
        else
          for (std::int64_t b = b_lo; b < b_hi; ++b)
            need.emplace_back(s.file_offset + (b * g.col_blocks + j_lo) * tb, (j_hi - j_lo) * tb);
        map->prefetch(need);
      }
    }
    std::int64_t bytes = 0;
    for (std::int64_t b = a0 / g.block_rows; b * g.block_rows < a1; ++b) {
      const std::int64_t ra = b * g.block_rows, re = std::min(a1, ra + g.block_rows);
      for (std::int64_t j = j_lo; j < j_hi; ++j) {
        const std::int64_t ca = j * g.block_cols, ce = std::min(g.n1, ca + g.block_cols);
        const std::size_t seg = static_cast<std::size_t>(ce - ca) * g.col_bytes;
        unsigned char* first = mem + origin + static_cast<std::size_t>(ra - a0) * stride + static_cast<std::size_t>(ca - c0) * g.col_bytes;
        const std::int64_t chunk_at = s.file_offset + (b * g.col_blocks + j) * tb;
        bytes += (re - ra) * static_cast<std::int64_t>(seg);
        if (map) {
          check(b, j, ra, re,
                crc32c_copy_strided(first, stride, map->at(chunk_at), chunk_row, seg, static_cast<std::size_t>(re - ra),
                                    0, stores));
          continue;
        }
        try {
          tile_io(fd, false, chunk_at, first, stride, seg, chunk_row, re - ra, "");
        } catch (const Error& err) {
          throw InputError(concat(where, ": read of block ", b * g.col_blocks + j, " failed", err.what()));
        }
        check(b, j, ra, re, rows_crc(first, stride, seg, re - ra));
      }
    }
    return bytes;
  }
  // rows of the read adjacent in memory: each row block lands as one contiguous run (a 1-d
  // memory space, which HDF5 copies fastest); else an N-d hyperslab of the memory array
  const bool adjacent = nd < 2 || (mem_shape[1] == rb.extent[1] && mem_start[1] == 0);
  h5::Handle mtype, fspace, mspace;
  try {
    mtype = h5::memory_type(t.dtype);
    if (nd && !empty) {
      fspace = h5::Handle(CHECK_HDF5(H5Dget_space(dataset)), H5Sclose);
      if (!adjacent) {
        std::vector<hsize_t> md(mem_shape.begin(), mem_shape.end());
        mspace = h5::Handle(CHECK_HDF5(H5Screate_simple(static_cast<int>(nd), md.data(), nullptr)), H5Sclose);
      }
    }
  } catch (const Error& e) {
    throw InputError(concat(where, ": ", e.what()));
  }
  std::vector<std::uint32_t> got(static_cast<size_t>(std::max<std::int64_t>(0, j_hi - j_lo)));
  std::int64_t bytes = 0;
  for (std::int64_t b = a0 / g.block_rows; b * g.block_rows < a1 || (nd == 0 && b == 0); ++b) {
    const std::int64_t ra = b * g.block_rows, re = std::min(a1, ra + g.block_rows);
    unsigned char* dst = mem + origin + static_cast<std::size_t>(ra - a0) * stride;
    if (!empty) {
      try {
        if (nd == 0) {
          CHECK_HDF5(H5Dread(dataset, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst));
        } else {
          std::vector<hsize_t> fstart(nd, 0), cnt(ext.begin(), ext.end()), mstart(nd, 0);
          fstart[0] = static_cast<hsize_t>(ra);
          cnt[0] = static_cast<hsize_t>(re - ra);
          mstart[0] = static_cast<hsize_t>(mem_start[0] + (ra - a0));
          if (nd >= 2) {
            fstart[1] = static_cast<hsize_t>(c0);
            cnt[1] = static_cast<hsize_t>(c1 - c0);
            mstart[1] = static_cast<hsize_t>(mem_start[1]);
          }
          CHECK_HDF5(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, fstart.data(), nullptr, cnt.data(), nullptr));
          if (adjacent) {
            hsize_t n = 1;
            for (auto c : cnt) n *= c;
            h5::Handle run(CHECK_HDF5(H5Screate_simple(1, &n, nullptr)), H5Sclose);
            CHECK_HDF5(H5Dread(dataset, mtype, run, fspace, H5P_DEFAULT, dst));
          } else {
            CHECK_HDF5(H5Sselect_hyperslab(mspace, H5S_SELECT_SET, mstart.data(), nullptr, cnt.data(), nullptr));
            CHECK_HDF5(H5Dread(dataset, mtype, mspace, fspace, H5P_DEFAULT, mem));
          }
        }
      } catch (const Error& err) {
        throw InputError(concat(where, ": read of rows [", ra, ", ", re, ") failed: ", err.what()));
      }
      bytes += (re - ra) * (c1 - c0) * static_cast<std::int64_t>(g.col_bytes);
      tile_crcs(g, dst, stride, re - ra, c0, j_lo, j_hi, got.data());
    } else {
      std::fill(got.begin(), got.end(), 0u);  // tiles without bytes: the CRC of nothing
    }
    for (std::int64_t j = j_lo; j < j_hi; ++j) check(b, j, ra, re, got[static_cast<size_t>(j - j_lo)]);
  }
  return bytes;
}

bool convertible(DType from, DType to) {
  if (from == to) return true;
  return is_floating(from) == is_floating(to);
}

namespace {
template <class F>
void with_type(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); return;
    case DType::F64: f(double{}); return;
    case DType::BF16: f(bf16{}); return;
    case DType::F16: f(f16{}); return;
    case DType::I32: f(std::int32_t{}); return;
    case DType::I64: f(std::int64_t{}); return;
  }
  throw Error(::shardflow::detail::concat("ckpt: unknown dtype ", static_cast<int>(t)));
}
}  // namespace

void copy_convert(const void* src, DType st, const Shape& src_shape, const Box& src_box, void* dst, DType dt,
                  const Shape& dst_shape, const Box& dst_box) {
  SHARDFLOW_REQUIRE(convertible(st, dt), "ckpt: cannot convert ", dtype_name(st), " to ", dtype_name(dt));
  using Exec = Kokkos::DefaultHostExecutionSpace;
  // 0-d arrays are treated as [1]
  const Shape ss = src_shape.empty() ? Shape{1} : src_shape, ds = dst_shape.empty() ? Shape{1} : dst_shape;
  const Box sb = src_box.extent.empty() ? Box{{0}, {1}} : src_box, db = dst_box.extent.empty() ? Box{{0}, {1}} : dst_box;
  const auto sdesc = kernels::StridedBox::row_major(ss, sb);
  const auto ddesc = kernels::StridedBox::row_major(ds, db);
  with_type(st, [&](auto s_tag) {
    using S = decltype(s_tag);
    with_type(dt, [&](auto d_tag) {
      using D = decltype(d_tag);
      if constexpr (std::is_floating_point<S>::value == std::is_floating_point<D>::value ||
                    std::is_same<S, bf16>::value || std::is_same<S, f16>::value ||
                    std::is_same<D, bf16>::value || std::is_same<D, f16>::value) {
        Kokkos::View<const S*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> sv(
            static_cast<const S*>(src), static_cast<size_t>(numel(ss)));
        Kokkos::View<D*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> dv(static_cast<D*>(dst),
                                                                                       static_cast<size_t>(numel(ds)));
        kernels::copy_box(Exec(), sv, sdesc, dv, ddesc);
      }
    });
  });
  Exec().fence();
}

}  // namespace shardflow::ckpt::detail
