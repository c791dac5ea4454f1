#pragma once
// The one place shardflow talks to the HDF5 C library: RAII handles, CHECK_HDF5 (throws
// shardflow::Error with file:line, the call and HDF5's own error stack), dtype <-> HDF5
// type mapping, and a process-wide mutex (HDF5 is not built thread-safe; the async save
// thread and the caller never use it at the same time).
#include <hdf5.h>

#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.hpp"
#include "core/error.hpp"

namespace shardflow::ckpt::h5 {

/// HDF5's error stack, most specific error first, one line per entry.
std::string error_stack_message();
[[noreturn]] void throw_hdf5_error(const char* call, const char* file, int line);

/// Calls `call` (an hid_t/herr_t/htri_t expression) and throws on a negative result.
#define CHECK_HDF5(call)                                                                    \
  ([&]() {                                                                                  \
    auto shardflow_h5_rc_ = (call);                                                         \
    if (shardflow_h5_rc_ < 0) ::shardflow::ckpt::h5::throw_hdf5_error(#call, __FILE__, __LINE__); \
    return shardflow_h5_rc_;                                                                \
  }())

/// Every use of HDF5 holds this lock.
std::recursive_mutex& mutex();
/// Turns off HDF5's automatic error printing (errors are reported by CHECK_HDF5).
void init();

/// A move-only owner of an hid_t with its close function.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~Handle() { reset(); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), closer_(o.closer_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      closer_ = o.closer_;
    }
    return *this;
  }
  hid_t id() const { return id_; }
  operator hid_t() const { return id_; }
  bool valid() const { return id_ >= 0; }
  /// Closes now, checking the result (a close can fail, e.g. on a full disk).
  void close();
  void reset() noexcept {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

Handle file_create(const std::string& path);
Handle file_open_read(const std::string& path);
Handle dataset_open(hid_t file, const std::string& name);
/// The file type shardflow stores a dtype as (little-endian; bf16 as u16, f16 as an IEEE
/// half float type).
Handle file_type(DType t);
/// The memory type that reads/writes a dtype's raw bytes unchanged on this host.
Handle memory_type(DType t);
/// True when the dataset's stored type is the one shardflow writes for `t`.
bool type_matches(hid_t dataset, DType t);
/// Dimensions of a dataset (empty for a scalar dataset).
std::vector<hsize_t> dataset_dims(hid_t dataset);
bool link_exists(hid_t file, const std::string& name);

/// Writes a string attribute / an int64 array attribute / a double attribute.
void write_attr_string(hid_t obj, const std::string& name, const std::string& value);
void write_attr_i64(hid_t obj, const std::string& name, const std::vector<long long>& values);
void write_attr_f64(hid_t obj, const std::string& name, double value);
/// Reads a string attribute (throws when missing).
std::string read_attr_string(hid_t obj, const std::string& name);

}  // namespace shardflow::ckpt::h5
