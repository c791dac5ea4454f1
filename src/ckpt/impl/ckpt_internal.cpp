#include "ckpt/impl/ckpt_internal.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <Kokkos_Core.hpp>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ckpt/checksum.hpp"
#include "core/half.hpp"
#include "core/mpi_check.hpp"
#include "kernels/pack.hpp"

namespace shardflow::ckpt::detail {

namespace fs = std::filesystem;

void agree(MPI_Comm comm, const std::string& local_error) {
  int rank = 0;
  CHECK_MPI(MPI_Comm_rank(comm, &rank));
  int mine = local_error.empty() ? INT_MAX : rank, first = INT_MAX;
  CHECK_MPI(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm));
  if (first == INT_MAX) return;
  std::string msg = bcast_string(comm, local_error, first);
  int size = 1;
  CHECK_MPI(MPI_Comm_size(comm, &size));
  if (size > 1) msg = ::shardflow::detail::concat(msg, " (rank ", first, ")");
  throw InputError(msg);
}

std::string bcast_string(MPI_Comm comm, const std::string& s, int root) {
  long long n = static_cast<long long>(s.size());
  CHECK_MPI(MPI_Bcast(&n, 1, MPI_LONG_LONG, root, comm));
  std::string out = s;
  out.resize(static_cast<size_t>(n));
  if (n > 0) CHECK_MPI(MPI_Bcast(out.data(), static_cast<int>(n), MPI_CHAR, root, comm));
  return out;
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
}
HostBuffer::~HostBuffer() {
  if (p_) ::munmap(p_, mapped_);
}
HostBuffer::HostBuffer(HostBuffer&& o) noexcept
    : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)), mapped_(std::exchange(o.mapped_, 0)) {}
HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) ::munmap(p_, mapped_);
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
    mapped_ = std::exchange(o.mapped_, 0);
  }
  return *this;
}

hid_t FileCache::open(const std::string& rel, const std::string& tensor) {
  auto it = files_.find(rel);
  if (it != files_.end()) return it->second.id();
  const std::string path = join(dir_, rel);
  std::error_code ec;
  SHARDFLOW_REQUIRE_INPUT(fs::is_regular_file(path, ec), "checkpoint ", dir_, ": tensor '", tensor, "': shard file '",
                          path, "' is missing");
  h5::Handle f;
  try {
    f = h5::file_open_read(path);
  } catch (const Error& e) {
    throw InputError(::shardflow::detail::concat("checkpoint ", dir_, ": tensor '", tensor, "': shard file '", path,
                                                 "' cannot be opened (truncated or not HDF5?): ", e.what()));
  }
  hid_t id = f.id();
  files_.emplace(rel, std::move(f));
  return id;
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
    return ds;
  } catch (const InputError&) {
    throw;
  } catch (const Error& e) {
    throw InputError(::shardflow::detail::concat(where, ": cannot read dataset '", s.dataset, "': ", e.what()));
  }
}

std::int64_t read_blocks(hid_t dataset, const TensorRecord& t, const ShardRecord& s, std::int64_t b_lo,
                         std::int64_t b_hi, std::vector<unsigned char>& out, const std::string& dir) {
  const Shape& ext = s.box.extent;
  const std::int64_t n0 = ext.empty() ? 1 : ext[0];
  const std::int64_t r_lo = b_lo * s.block_rows;
  const std::int64_t r_hi = std::min(n0, b_hi * s.block_rows);
  out.resize(static_cast<size_t>((r_hi - r_lo) * row_numel(ext)) * dtype_size(t.dtype));
  return read_blocks_into(dataset, t, s, b_lo, b_hi, out.data(), dir);
}

std::int64_t read_blocks_into(hid_t dataset, const TensorRecord& t, const ShardRecord& s, std::int64_t b_lo,
                              std::int64_t b_hi, unsigned char* out, const std::string& dir) {
  const std::size_t esize = dtype_size(t.dtype);
  const Shape& ext = s.box.extent;
  const std::int64_t n0 = ext.empty() ? 1 : ext[0];
  const std::int64_t row = row_numel(ext);
  const std::int64_t r_lo = b_lo * s.block_rows;
  const std::string where = ::shardflow::detail::concat("checkpoint ", dir, ": tensor '", t.name, "': file '",
                                                        join(dir, s.file), "' dataset '", s.dataset, "'");
  const std::size_t row_bytes = static_cast<std::size_t>(row) * esize;
  h5::Handle mtype;
  h5::Handle fspace;
  try {
    mtype = h5::memory_type(t.dtype);
    if (!ext.empty()) fspace = h5::Handle(CHECK_HDF5(H5Dget_space(dataset)), H5Sclose);
  } catch (const Error& e) {
    throw InputError(::shardflow::detail::concat(where, ": ", e.what()));
  }
  // block by block: each block is checksummed right after it is read, while in cache
  for (std::int64_t b = b_lo; b < b_hi; ++b) {
    const std::int64_t a = b * s.block_rows;
    const std::int64_t e = std::min(n0, (b + 1) * s.block_rows);
    unsigned char* dst = out + static_cast<size_t>(a - r_lo) * row_bytes;
    try {
      if (ext.empty()) {
        CHECK_HDF5(H5Dread(dataset, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst));
      } else if (e > a && row > 0) {
        std::vector<hsize_t> start(ext.size(), 0), cnt(ext.begin(), ext.end());
        start[0] = static_cast<hsize_t>(a);
        cnt[0] = static_cast<hsize_t>(e - a);
        CHECK_HDF5(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start.data(), nullptr, cnt.data(), nullptr));
        hsize_t n = static_cast<hsize_t>((e - a) * row);
        h5::Handle mspace(CHECK_HDF5(H5Screate_simple(1, &n, nullptr)), H5Sclose);
        CHECK_HDF5(H5Dread(dataset, mtype, mspace, fspace, H5P_DEFAULT, dst));
      }
    } catch (const Error& err) {
      throw InputError(::shardflow::detail::concat(where, ": read of rows [", a, ", ", e, ") failed: ", err.what()));
    }
    const std::uint32_t got = crc32c(dst, static_cast<size_t>(e - a) * row_bytes);
    const std::uint32_t want = s.crc32c[static_cast<size_t>(b)];
    if (got != want) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "stored %08x, computed %08x", want, got);
      throw InputError(::shardflow::detail::concat(where, ": checksum mismatch in block ", b, " (rows [", a, ", ", e,
                                                   ")): ", buf, "; the file is corrupt"));
    }
  }
  return r_lo;
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
