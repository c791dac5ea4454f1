#include "comm/node_buffer.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#ifdef __linux__
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "core/memory.hpp"

namespace shardflow::comm {

namespace {
struct Entry {
  std::size_t bytes = 0;
  int fd = -1;
  std::int64_t id = 0, ino = 0;
};
/// This process's node buffers by first byte.
struct Registry {
  std::mutex mu;
  std::map<std::uintptr_t, Entry> by_addr;
  std::int64_t next_id = 1;
};
Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

NodeBuffer::NodeBuffer(std::size_t bytes) {
  if (bytes == 0) return;
#ifdef __linux__
  const int fd = ::memfd_create("shardflow-node-buffer", MFD_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    throw Error("NodeBuffer of " + std::to_string(bytes) + " bytes: memfd_create failed: " + std::strerror(err));
  }
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error("NodeBuffer of " + std::to_string(bytes) + " bytes: ftruncate failed: " + std::strerror(err));
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    ::close(fd);
    throw Error("NodeBuffer of " + std::to_string(bytes) + " bytes: mmap failed: " + std::strerror(err));
  }
  struct stat st {};
  ::fstat(fd, &st);
  data_ = p;
  bytes_ = bytes;
  fd_ = fd;
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  id_ = r.next_id++;
  r.by_addr[reinterpret_cast<std::uintptr_t>(p)] = Entry{bytes, fd, id_, static_cast<std::int64_t>(st.st_ino)};
  memory::note_alloc(p, static_cast<std::int64_t>(bytes));
#else
  throw Error("NodeBuffer of " + std::to_string(bytes) + " bytes: needs Linux");
#endif
}

NodeBuffer::NodeBuffer(NodeBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      bytes_(std::exchange(o.bytes_, 0)),
      fd_(std::exchange(o.fd_, -1)),
      id_(std::exchange(o.id_, 0)) {}

NodeBuffer& NodeBuffer::operator=(NodeBuffer&& o) noexcept {
  if (this != &o) {
    release();
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    fd_ = std::exchange(o.fd_, -1);
    id_ = std::exchange(o.id_, 0);
  }
  return *this;
}

NodeBuffer::~NodeBuffer() { release(); }

void NodeBuffer::release() noexcept {
  if (data_ == nullptr) return;
#ifdef __linux__
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.by_addr.erase(reinterpret_cast<std::uintptr_t>(data_));
  }
  memory::note_free(data_);
  ::munmap(data_, bytes_);
  ::close(fd_);
#endif
  data_ = nullptr;
  bytes_ = 0;
  fd_ = -1;
  id_ = 0;
}

NodeRef NodeBuffer::find(const void* p, std::size_t bytes) {
  NodeRef ref;
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.by_addr.upper_bound(a);
  if (it == r.by_addr.begin()) return ref;
  --it;
  const std::uintptr_t base = it->first;
  if (a - base > it->second.bytes || bytes > it->second.bytes - (a - base)) return ref;
  ref.id = it->second.id;
  ref.fd = it->second.fd;
  ref.ino = it->second.ino;
  ref.bytes = static_cast<std::int64_t>(it->second.bytes);
  ref.offset = static_cast<std::int64_t>(a - base);
  return ref;
}

PeerMapping::PeerMapping(PeerMapping&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      bytes_(std::exchange(o.bytes_, 0)),
      peer_(std::exchange(o.peer_, -1)),
      id_(std::exchange(o.id_, 0)),
      ino_(std::exchange(o.ino_, 0)),
      ref_bytes_(std::exchange(o.ref_bytes_, 0)),
      tried_(std::exchange(o.tried_, false)) {}

PeerMapping& PeerMapping::operator=(PeerMapping&& o) noexcept {
  if (this != &o) {
    release();
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    peer_ = std::exchange(o.peer_, -1);
    id_ = std::exchange(o.id_, 0);
    ino_ = std::exchange(o.ino_, 0);
    ref_bytes_ = std::exchange(o.ref_bytes_, 0);
    tried_ = std::exchange(o.tried_, false);
  }
  return *this;
}

PeerMapping::~PeerMapping() { release(); }

void PeerMapping::release() noexcept {
#ifdef __linux__
  if (data_ != nullptr) ::munmap(data_, bytes_);
#endif
  data_ = nullptr;
  bytes_ = 0;
  tried_ = false;
}

PeerMapping Communicator::map_peer(int peer, const NodeRef& ref) const {
  PeerMapping m;
  m.tried_ = true;
  m.peer_ = peer;
  m.id_ = ref.id;
  m.ino_ = ref.ino;
  m.ref_bytes_ = ref.bytes;
  if (!peer_copies_ || peer < 0 || peer >= size_ || peer == rank_ || ref.id == 0 || ref.bytes <= 0) return m;
  const char* env = std::getenv("SHARDFLOW_NODE_MAP");
  if (env != nullptr && std::string(env) == "0") return m;
#if defined(__linux__) && defined(SYS_pidfd_open) && defined(SYS_pidfd_getfd)
  const auto pid = static_cast<pid_t>(pids_[static_cast<std::size_t>(peer)]);
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  int fd = -1;
  if (pidfd >= 0) {
    fd = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, static_cast<int>(ref.fd), 0));
    ::close(pidfd);
  }
  void* p = MAP_FAILED;
  if (fd >= 0) {
    struct stat st {};
    // the descriptor is still the buffer the peer named (the same file, of its size)
    if (::fstat(fd, &st) == 0 && static_cast<std::int64_t>(st.st_ino) == ref.ino && st.st_size == ref.bytes)
      p = ::mmap(nullptr, static_cast<std::size_t>(ref.bytes), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);  // the mapping keeps the file
  }
  if (p != MAP_FAILED) {
    m.data_ = p;
    m.bytes_ = static_cast<std::size_t>(ref.bytes);
  }
#endif
  return m;
}

}  // namespace shardflow::comm
