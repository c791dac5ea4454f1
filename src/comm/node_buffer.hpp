#pragma once
// NodeBuffer: host memory that the other ranks of this node can map into their own address
// space (Linux: an anonymous memory file, memfd, mapped shared). It is a registered buffer in
// the sense of NCCL's user buffers or an MPI shared window: a Resharder with peer copies
// (Resharder::peer_copy()) whose peer's source or destination lies in one copies that piece
// with ordinary loads and stores through a mapping of it, in the same pass as its own walk,
// instead of through the kernel (process_vm_writev); see docs/comm.md, session 26. Any other
// memory still works: the peer then copies through the kernel as before.
//
// A peer maps a node buffer by taking its owner's descriptor (pidfd_getfd, which needs the
// same permission as cross-memory attach) and keeps the mapping (PeerMapping) while the
// operation that made it lives; the memory is released when its owner and every mapping are
// gone.
#include <cstddef>
#include <cstdint>

namespace shardflow::comm {

/// What a peer needs to map the node buffer that holds a range of its owner's memory.
struct NodeRef {
  std::int64_t id = 0;      // unique among its process's node buffers (from 1); 0: no node buffer holds the range
  std::int64_t fd = -1;     // its descriptor in the owner
  std::int64_t ino = 0;     // the descriptor's inode, checked by the peer after taking it
  std::int64_t bytes = 0;   // the buffer's size
  std::int64_t offset = 0;  // the range's first byte in the buffer
  /// As kWords words of a message (a peer sends it, the other rank reads it back).
  static constexpr std::size_t kWords = 5;
  void to_words(std::int64_t* w) const {
    w[0] = id;
    w[1] = fd;
    w[2] = ino;
    w[3] = bytes;
    w[4] = offset;
  }
  static NodeRef from_words(const std::int64_t* w) { return NodeRef{w[0], w[1], w[2], w[3], w[4]}; }
};

class NodeBuffer {
 public:
  NodeBuffer() = default;
  /// `bytes` of zeroed memory (at least one page is mapped; 0 gives an empty buffer). Throws
  /// Error naming the bytes and the system's reason when Linux refuses.
  explicit NodeBuffer(std::size_t bytes);
  NodeBuffer(NodeBuffer&& o) noexcept;
  NodeBuffer& operator=(NodeBuffer&& o) noexcept;
  NodeBuffer(const NodeBuffer&) = delete;
  NodeBuffer& operator=(const NodeBuffer&) = delete;
  ~NodeBuffer();

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }

  /// The node buffer of this process that holds [p, p + bytes) whole; id 0 when none does.
  static NodeRef find(const void* p, std::size_t bytes);

 private:
  void release() noexcept;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  int fd_ = -1;
  std::int64_t id_ = 0;
};

/// A peer's node buffer mapped into this process (Communicator::map_peer()), unmapped when
/// destroyed. Empty (data() null) when the system refused the mapping.
class PeerMapping {
 public:
  PeerMapping() = default;
  PeerMapping(PeerMapping&& o) noexcept;
  PeerMapping& operator=(PeerMapping&& o) noexcept;
  PeerMapping(const PeerMapping&) = delete;
  PeerMapping& operator=(const PeerMapping&) = delete;
  ~PeerMapping();

  /// The buffer's first byte here (null: nothing mapped).
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  /// True when this maps (or failed to map) rank `peer`'s buffer `r`: the same id, inode and size.
  bool same(int peer, const NodeRef& r) const {
    return tried_ && peer_ == peer && id_ == r.id && ino_ == r.ino && ref_bytes_ == r.bytes;
  }

 private:
  friend class Communicator;
  void release() noexcept;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  int peer_ = -1;
  std::int64_t id_ = 0, ino_ = 0, ref_bytes_ = 0;
  bool tried_ = false;
};

}  // namespace shardflow::comm
