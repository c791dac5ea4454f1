#pragma once
// Communicator: collectives over one group of ranks (a mesh axis or a group of axes) with a
// backend tag. The Mpi backend works on host memory; the Nccl backend on device memory of
// the rank's GPU (the header needs no nccl.h: the backend lives behind this interface).
//
// Three layers (Cabana):
//   CollectivePlan (plan.hpp)  what moves: kind, dtype, counts, peers;
//   Collective                 an operation bound to persistent send/recv buffers (and its
//                              own scratch, allocated once): start() returns a Request and
//                              allocates nothing, step after step;
//   Backend                    the tag of the Communicator that runs it.
//
// Every operation is non-blocking. Ranks of one communicator must start its collectives in
// the same order. bf16/f16 reductions convert to f32, reduce, and round once: the 16-bit
// all_reduce is an f32 reduce-scatter followed by an all-gather of the rounded blocks, so
// every rank holds bitwise the same result.
#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/node_buffer.hpp"
#include "comm/plan.hpp"
#include "comm/request.hpp"
#include "comm/types.hpp"

namespace shardflow::comm {

namespace detail {
/// A collective bound to buffers, as a backend implements it.
class CollectiveImpl : public Pending {
 public:
  /// Start it (the previous run must be complete).
  virtual void start() = 0;
  virtual void rebind(const void* send, void* recv) = 0;
};
}  // namespace detail

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual Backend backend() const = 0;
  /// True when the backend binds all_to_allw plans (strided pieces moved in place).
  virtual bool strided_pieces() const { return false; }
  int size() const { return size_; }
  int rank() const { return rank_; }

  /// True when this rank can copy to and from the host memory of every other rank of the
  /// group directly, with one copy and no message (Linux cross-memory attach,
  /// process_vm_readv / process_vm_writev): every rank of the group is on this node and
  /// reading a word of each peer worked. Probed collectively when the communicator is made
  /// (the Mpi backend); the same on every rank. SHARDFLOW_PEER_COPY=0 in the environment of
  /// any rank turns it off for the group.
  bool peer_copies() const { return peer_copies_; }
  /// Most runs on either side of one copy_peer() call (the kernel's IOV_MAX).
  static constexpr std::size_t kMaxPeerRuns = 1024;
  /// One contiguous run of bytes in a process's address space.
  struct PeerRun {
    std::uintptr_t addr = 0;
    std::size_t bytes = 0;
  };
  /// One copy between this rank's memory and rank `peer`'s (peer_copies() must be true):
  /// `write`: the bytes of the `local` runs, in order, into the `remote` runs (addresses in
  /// the peer's address space); else the remote runs' bytes into the local runs. Both lists
  /// hold at most kMaxPeerRuns runs and the same number of bytes. The peer takes no part:
  /// the caller's protocol makes sure its memory is there and may be read or written.
  /// Throws Error naming the peer and the system's reason when the copy fails.
  void copy_peer(int peer, bool write, const PeerRun* local, std::size_t nlocal, const PeerRun* remote,
                 std::size_t nremote) const;
  /// Maps rank `peer`'s node buffer `ref` (NodeBuffer::find() on the peer, sent here) into
  /// this process, so that this rank copies to and from it with ordinary loads and stores.
  /// The mapping is empty (data() null) when it cannot be made: peer_copies() false, `ref`
  /// names no buffer, SHARDFLOW_NODE_MAP=0 in this rank's environment, or the system
  /// refuses (then copy with copy_peer()). The peer's buffer
  /// must be alive while this runs (the caller's protocol, as for copy_peer()).
  PeerMapping map_peer(int peer, const NodeRef& ref) const;
  /// e.g. "fsdp" or "data+fsdp" or "world".
  const std::string& name() const { return name_; }
  /// The MPI communicator of the group (the Nccl backend bootstraps from it).
  MPI_Comm mpi_comm() const { return mpi_comm_; }

  /// Binds a validated plan to buffers (backend-specific memory). Used by Collective.
  virtual std::unique_ptr<detail::CollectiveImpl> bind(const CollectivePlan& plan, const void* send, void* recv) = 0;

  // ---- one-shot, non-blocking calls (each binds a plan and starts it) ----------------
  Request all_gather(const void* send, void* recv, std::size_t count, DType t);
  Request reduce_scatter(const void* send, void* recv, std::size_t count, DType t, ReduceOp op);
  Request all_reduce(const void* send, void* recv, std::size_t count, DType t, ReduceOp op);
  Request broadcast(const void* send, void* recv, std::size_t count, DType t, int root);
  Request send(const void* buf, std::size_t count, DType t, int peer, int tag = 0);
  Request recv(void* buf, std::size_t count, DType t, int peer, int tag = 0);
  Request all_to_all(const void* send, void* recv, std::size_t count, DType t);
  Request all_to_allv(const void* send, void* recv, const CollectivePlan& plan);
  /// Binds any plan and starts it.
  Request start(const CollectivePlan& plan, const void* send, void* recv);

  /// Blocks until every rank of the group arrives (an MPI barrier on the group).
  void barrier() const;

 protected:
  Communicator(MPI_Comm comm, std::string name);
  /// Sets peer_copies() (collective over the group): a backend on host memory calls it from
  /// its constructor.
  void probe_peer_copies();

 private:
  MPI_Comm mpi_comm_;
  std::string name_;
  int size_ = 1;
  int rank_ = 0;
  bool peer_copies_ = false;
  std::vector<long> pids_;  // by rank, when peer_copies_
};

/// The operation layer: a plan bound once to persistent buffers.
class Collective {
 public:
  /// Validates the plan against the communicator (InputError naming the value).
  Collective(Communicator& comm, CollectivePlan plan, const void* send, void* recv);
  Collective(Collective&&) noexcept = default;
  Collective& operator=(Collective&&) noexcept = default;
  ~Collective();

  /// Start one run; throws Error when the previous run is still pending.
  Request start();
  /// Point the operation at other buffers of the same sizes (no allocation).
  void rebind(const void* send, void* recv);
  const CollectivePlan& plan() const { return plan_; }
  Communicator& communicator() const { return *comm_; }

 private:
  Communicator* comm_;
  CollectivePlan plan_;
  std::unique_ptr<detail::CollectiveImpl> impl_;
};

/// A communicator over `comm` (not duplicated; it must outlive the result).
/// Backend::Nccl throws Error when this build has no NCCL backend.
std::unique_ptr<Communicator> make_communicator(Backend backend, MPI_Comm comm, const std::string& name);

}  // namespace shardflow::comm
