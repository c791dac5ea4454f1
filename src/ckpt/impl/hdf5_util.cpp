#include "ckpt/impl/hdf5_util.hpp"

#include <cstring>
#include <regex>
#include <sstream>

namespace shardflow::ckpt::h5 {

namespace {
herr_t walk_cb(unsigned n, const H5E_error2_t* e, void* client) {
  auto* os = static_cast<std::ostringstream*>(client);
  char maj[128] = "", min[128] = "";
  H5Eget_msg(e->maj_num, nullptr, maj, sizeof maj);
  H5Eget_msg(e->min_num, nullptr, min, sizeof min);
  *os << (n ? "; " : "") << (e->func_name ? e->func_name : "?") << ": " << (e->desc ? e->desc : "") << " (" << maj
      << ": " << min << ")";
  return 0;
}
}  // namespace

std::string error_stack_message() {
  std::ostringstream os;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, &os);
  std::string s = os.str();
  return s.empty() ? std::string("no HDF5 error stack") : s;
}

void throw_hdf5_error(const char* call, const char* file, int line) {
  std::string msg = error_stack_message();
  H5Eclear2(H5E_DEFAULT);
  // A failed system call (a full disk, a quota, an I/O error) is what the user can act on:
  // say that, with the file, instead of HDF5's dozen-entry stack.
  static const std::regex sys_error("(H5FD__\\w+): [^;]*filename = '([^']*)'[^;]*errno = ([0-9]+)");
  std::smatch m;
  if (std::regex_search(msg, m, sys_error)) {
    const int e = std::stoi(m[3].str());
    msg = ::shardflow::detail::concat(std::strerror(e), " (errno ", e, " in ", m[1].str(), " on '", m[2].str(), "')");
  }
  ::shardflow::detail::throw_library_error("HDF5", call, msg, file, line);
}

std::recursive_mutex& mutex() {
  static std::recursive_mutex m;
  return m;
}

void init() {
  static std::once_flag once;
  std::call_once(once, [] {
    CHECK_HDF5(H5open());
    CHECK_HDF5(H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr));
  });
}

void Handle::close() {
  if (id_ >= 0 && closer_) {
    hid_t id = std::exchange(id_, H5I_INVALID_HID);
    CHECK_HDF5(closer_(id));
  }
}

namespace {
// POSIX I/O; file locks where the file system has them, no error where it has not (Lustre,
// some NFS): a shard file has one writer and is read only after its checkpoint commits.
Handle file_access() {
  Handle fapl(CHECK_HDF5(H5Pcreate(H5P_FILE_ACCESS)), H5Pclose);
  CHECK_HDF5(H5Pset_fapl_sec2(fapl));
  CHECK_HDF5(H5Pset_file_locking(fapl, 1, 1));
  return fapl;
}
// Reading: no data sieve buffer, so HDF5 reads each contiguous run of a hyperslab with one
// read of exactly its bytes (with its 64 KiB sieve, a column slice of rows shorter than
// 64 KiB would read every byte of those rows). The reader selects whole rows when it needs
// them, which are one run.
Handle file_access_read() {
  Handle fapl = file_access();
  CHECK_HDF5(H5Pset_sieve_buf_size(fapl, 0));
  return fapl;
}
}  // namespace

Handle file_create(const std::string& path) {
  Handle fapl = file_access();
  // HDF5 1.10's file format: a fixed-size, unfiltered chunked dataset allocated early gets
  // the implicit chunk index, its chunks one contiguous run in chunk order (the tiles of a
  // shard, format 3). Readable by HDF5 >= 1.10 (h5py, h5dump).
  CHECK_HDF5(H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110));
  // raw data of 64 KiB and more starts on a 4 KiB page: a tile's 4 KiB row segments are
  // then whole pages of the page cache (half as many partial copies on every read)
  CHECK_HDF5(H5Pset_alignment(fapl, 65536, 4096));
  // that format's root group header would carry its creation times: none (the same state
  // gives the same bytes)
  Handle fcpl(CHECK_HDF5(H5Pcreate(H5P_FILE_CREATE)), H5Pclose);
  CHECK_HDF5(H5Pset_obj_track_times(fcpl, 0));
  return Handle(CHECK_HDF5(H5Fcreate(path.c_str(), H5F_ACC_EXCL, fcpl, fapl)), H5Fclose);
}

Handle file_open_read(const std::string& path) {
  Handle fapl = file_access_read();
  return Handle(CHECK_HDF5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl)), H5Fclose);
}

Handle dataset_open(hid_t file, const std::string& name) {
  return Handle(CHECK_HDF5(H5Dopen2(file, name.c_str(), H5P_DEFAULT)), H5Dclose);
}

namespace {
Handle half_type() {
  // IEEE binary16: sign bit 15, exponent bits 10..14 (bias 15), mantissa bits 0..9.
  Handle t(CHECK_HDF5(H5Tcopy(H5T_IEEE_F32LE)), H5Tclose);
  CHECK_HDF5(H5Tset_fields(t, 15, 10, 5, 0, 10));
  CHECK_HDF5(H5Tset_size(t, 2));
  CHECK_HDF5(H5Tset_precision(t, 16));
  CHECK_HDF5(H5Tset_ebias(t, 15));
  return t;
}
}  // namespace

Handle file_type(DType t) {
  switch (t) {
    case DType::F32: return Handle(CHECK_HDF5(H5Tcopy(H5T_IEEE_F32LE)), H5Tclose);
    case DType::F64: return Handle(CHECK_HDF5(H5Tcopy(H5T_IEEE_F64LE)), H5Tclose);
    case DType::BF16: return Handle(CHECK_HDF5(H5Tcopy(H5T_STD_U16LE)), H5Tclose);
    case DType::F16: return half_type();
    case DType::I32: return Handle(CHECK_HDF5(H5Tcopy(H5T_STD_I32LE)), H5Tclose);
    case DType::I64: return Handle(CHECK_HDF5(H5Tcopy(H5T_STD_I64LE)), H5Tclose);
  }
  throw Error(::shardflow::detail::concat("ckpt: no HDF5 type for dtype ", static_cast<int>(t)));
}

Handle memory_type(DType t) { return file_type(t); }  // little-endian host: identical bytes

bool type_matches(hid_t dataset, DType t) {
  Handle stored(CHECK_HDF5(H5Dget_type(dataset)), H5Tclose);
  Handle want = file_type(t);
  return CHECK_HDF5(H5Tequal(stored, want)) > 0;
}

std::vector<hsize_t> dataset_dims(hid_t dataset) {
  Handle space(CHECK_HDF5(H5Dget_space(dataset)), H5Sclose);
  int nd = CHECK_HDF5(H5Sget_simple_extent_ndims(space));
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  if (nd > 0) CHECK_HDF5(H5Sget_simple_extent_dims(space, dims.data(), nullptr));
  return dims;
}

bool link_exists(hid_t file, const std::string& name) {
  return CHECK_HDF5(H5Lexists(file, name.c_str(), H5P_DEFAULT)) > 0;
}

void write_attr_string(hid_t obj, const std::string& name, const std::string& value) {
  Handle type(CHECK_HDF5(H5Tcopy(H5T_C_S1)), H5Tclose);
  CHECK_HDF5(H5Tset_size(type, value.empty() ? 1 : value.size()));
  CHECK_HDF5(H5Tset_strpad(type, H5T_STR_NULLPAD));
  Handle space(CHECK_HDF5(H5Screate(H5S_SCALAR)), H5Sclose);
  Handle attr(CHECK_HDF5(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT)), H5Aclose);
  std::string v = value.empty() ? std::string(1, '\0') : value;
  CHECK_HDF5(H5Awrite(attr, type, v.data()));
  attr.close();
}

void write_attr_i64(hid_t obj, const std::string& name, const std::vector<long long>& values) {
  Handle space;
  if (values.empty()) {
    space = Handle(CHECK_HDF5(H5Screate(H5S_NULL)), H5Sclose);
  } else {
    hsize_t n = values.size();
    space = Handle(CHECK_HDF5(H5Screate_simple(1, &n, nullptr)), H5Sclose);
  }
  Handle attr(CHECK_HDF5(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT)), H5Aclose);
  if (!values.empty()) CHECK_HDF5(H5Awrite(attr, H5T_NATIVE_LLONG, values.data()));
  attr.close();
}

void write_attr_f64(hid_t obj, const std::string& name, double value) {
  Handle space(CHECK_HDF5(H5Screate(H5S_SCALAR)), H5Sclose);
  Handle attr(CHECK_HDF5(H5Acreate2(obj, name.c_str(), H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT)), H5Aclose);
  CHECK_HDF5(H5Awrite(attr, H5T_NATIVE_DOUBLE, &value));
  attr.close();
}

std::string read_attr_string(hid_t obj, const std::string& name) {
  Handle attr(CHECK_HDF5(H5Aopen(obj, name.c_str(), H5P_DEFAULT)), H5Aclose);
  Handle type(CHECK_HDF5(H5Aget_type(attr)), H5Tclose);
  size_t n = H5Tget_size(type);
  SHARDFLOW_REQUIRE(n > 0, "HDF5 attribute '", name, "' is not a string");
  std::string v(n, '\0');
  Handle mtype(CHECK_HDF5(H5Tcopy(H5T_C_S1)), H5Tclose);
  CHECK_HDF5(H5Tset_size(mtype, n));
  CHECK_HDF5(H5Tset_strpad(mtype, H5T_STR_NULLPAD));
  CHECK_HDF5(H5Aread(attr, mtype, v.data()));
  while (!v.empty() && v.back() == '\0') v.pop_back();
  return v;
}

}  // namespace shardflow::ckpt::h5
