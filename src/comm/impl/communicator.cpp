// Backend-independent parts of the communication layer: names, Request, CollectivePlan,
// the Communicator base and its one-shot calls, Collective, CommSet.
#include "comm/communicator.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#ifdef __linux__
#include <sys/uio.h>
#include <unistd.h>
#endif

#include "comm/comm_set.hpp"
#include "comm/control.hpp"
#include "comm/mpi_check.hpp"
#include "core/error.hpp"

namespace shardflow::comm {

namespace detail {
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, const std::string& name);
#ifdef SHARDFLOW_HAVE_NCCL
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm, const std::string& name);
#endif
}  // namespace detail

// ---- names -------------------------------------------------------------------------------
std::string backend_name(Backend b) { return b == Backend::Mpi ? "mpi" : "nccl"; }

Backend parse_backend(const std::string& name) {
  if (name == "mpi") return Backend::Mpi;
  if (name == "nccl") return Backend::Nccl;
  throw InputError("unknown communication backend '" + name + "' (expected mpi or nccl)");
}

std::string reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Mean:
      return "mean";
    case ReduceOp::Max:
      return "max";
  }
  return "?";
}

std::string collective_name(CollectiveKind k) {
  switch (k) {
    case CollectiveKind::AllGather:
      return "all_gather";
    case CollectiveKind::ReduceScatter:
      return "reduce_scatter";
    case CollectiveKind::AllReduce:
      return "all_reduce";
    case CollectiveKind::Broadcast:
      return "broadcast";
    case CollectiveKind::Send:
      return "send";
    case CollectiveKind::Recv:
      return "recv";
    case CollectiveKind::AllToAll:
      return "all_to_all";
    case CollectiveKind::AllToAllv:
      return "all_to_allv";
  }
  return "?";
}

bool nccl_built() {
#ifdef SHARDFLOW_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

// ---- Request -----------------------------------------------------------------------------
Request& Request::operator=(Request&& o) noexcept {
  if (this != &o) {
    if (pending_) {
      try {
        pending_->wait();
      } catch (...) {
      }
    }
    pending_ = o.pending_;
    owned_ = std::move(o.owned_);
    o.pending_ = nullptr;
  }
  return *this;
}

Request::~Request() {
  if (pending_) {
    try {
      pending_->wait();
    } catch (...) {  // a destructor cannot report; wait() would have thrown it
    }
  }
}

bool Request::test() {
  if (!pending_) return true;
  if (!pending_->test()) return false;
  pending_ = nullptr;
  return true;
}

void Request::wait() {
  if (!pending_) return;
  detail::Pending* p = pending_;
  pending_ = nullptr;  // even if wait throws, the operation is no longer in flight here
  p->wait();
}

// ---- CollectivePlan ----------------------------------------------------------------------
CollectivePlan CollectivePlan::all_gather(DType t, std::size_t count) {
  CollectivePlan p;
  p.kind = CollectiveKind::AllGather;
  p.dtype = t;
  p.count = count;
  return p;
}
CollectivePlan CollectivePlan::reduce_scatter(DType t, std::size_t count, ReduceOp op) {
  CollectivePlan p;
  p.kind = CollectiveKind::ReduceScatter;
  p.dtype = t;
  p.count = count;
  p.op = op;
  return p;
}
CollectivePlan CollectivePlan::all_reduce(DType t, std::size_t count, ReduceOp op) {
  CollectivePlan p;
  p.kind = CollectiveKind::AllReduce;
  p.dtype = t;
  p.count = count;
  p.op = op;
  return p;
}
CollectivePlan CollectivePlan::broadcast(DType t, std::size_t count, int root) {
  CollectivePlan p;
  p.kind = CollectiveKind::Broadcast;
  p.dtype = t;
  p.count = count;
  p.root = root;
  return p;
}
CollectivePlan CollectivePlan::send(DType t, std::size_t count, int peer, int tag) {
  CollectivePlan p;
  p.kind = CollectiveKind::Send;
  p.dtype = t;
  p.count = count;
  p.root = peer;
  p.tag = tag;
  return p;
}
CollectivePlan CollectivePlan::recv(DType t, std::size_t count, int peer, int tag) {
  CollectivePlan p = send(t, count, peer, tag);
  p.kind = CollectiveKind::Recv;
  return p;
}
CollectivePlan CollectivePlan::all_to_all(DType t, std::size_t count) {
  CollectivePlan p;
  p.kind = CollectiveKind::AllToAll;
  p.dtype = t;
  p.count = count;
  return p;
}

namespace {
std::vector<std::size_t> prefix(const std::vector<std::size_t>& counts) {
  std::vector<std::size_t> d(counts.size(), 0);
  for (std::size_t i = 1; i < counts.size(); ++i) d[i] = d[i - 1] + counts[i - 1];
  return d;
}
std::size_t extent_of(const std::vector<std::size_t>& counts, const std::vector<std::size_t>& displs) {
  std::size_t e = 0;
  for (std::size_t i = 0; i < counts.size(); ++i)
    if (counts[i] > 0) e = std::max(e, displs[i] + counts[i]);
  return e;
}
}  // namespace

CollectivePlan CollectivePlan::all_to_allv(DType t, std::vector<std::size_t> send_counts,
                                           std::vector<std::size_t> recv_counts, std::vector<std::size_t> send_displs,
                                           std::vector<std::size_t> recv_displs) {
  CollectivePlan p;
  p.kind = CollectiveKind::AllToAllv;
  p.dtype = t;
  if (send_displs.empty()) send_displs = prefix(send_counts);
  if (recv_displs.empty()) recv_displs = prefix(recv_counts);
  p.send_counts = std::move(send_counts);
  p.recv_counts = std::move(recv_counts);
  p.send_displs = std::move(send_displs);
  p.recv_displs = std::move(recv_displs);
  return p;
}

CollectivePlan CollectivePlan::all_to_allw(DType t, std::vector<kernels::StridedBox> send_boxes,
                                           std::vector<kernels::StridedBox> recv_boxes) {
  CollectivePlan p;
  p.kind = CollectiveKind::AllToAllv;
  p.dtype = t;
  for (const auto& b : send_boxes) {
    p.send_counts.push_back(static_cast<std::size_t>(b.numel()));
    p.send_displs.push_back(0);
  }
  for (const auto& b : recv_boxes) {
    p.recv_counts.push_back(static_cast<std::size_t>(b.numel()));
    p.recv_displs.push_back(0);
  }
  p.send_boxes = std::move(send_boxes);
  p.recv_boxes = std::move(recv_boxes);
  return p;
}

namespace {
/// One past the largest element any non-empty box touches.
std::size_t span_of(const std::vector<kernels::StridedBox>& boxes) {
  std::size_t e = 0;
  for (const auto& b : boxes)
    if (b.numel() > 0) e = std::max(e, static_cast<std::size_t>(b.span_end()));
  return e;
}
}  // namespace

std::size_t CollectivePlan::send_elems(int n, int rank) const {
  const auto un = static_cast<std::size_t>(n);
  switch (kind) {
    case CollectiveKind::AllGather:
      return count;
    case CollectiveKind::ReduceScatter:
      return count * un;
    case CollectiveKind::AllReduce:
      return count;
    case CollectiveKind::Broadcast:
      return rank == root ? count : 0;
    case CollectiveKind::Send:
      return count;
    case CollectiveKind::Recv:
      return 0;
    case CollectiveKind::AllToAll:
      return count * un;
    case CollectiveKind::AllToAllv:
      return strided() ? span_of(send_boxes) : extent_of(send_counts, send_displs);
  }
  return 0;
}

std::size_t CollectivePlan::recv_elems(int n, int rank) const {
  const auto un = static_cast<std::size_t>(n);
  switch (kind) {
    case CollectiveKind::AllGather:
      return count * un;
    case CollectiveKind::ReduceScatter:
      return count;
    case CollectiveKind::AllReduce:
      return count;
    case CollectiveKind::Broadcast:
      return count;
    case CollectiveKind::Send:
      return 0;
    case CollectiveKind::Recv:
      return count;
    case CollectiveKind::AllToAll:
      return count * un;
    case CollectiveKind::AllToAllv:
      return strided() ? span_of(recv_boxes) : extent_of(recv_counts, recv_displs);
  }
  return 0;
}

void CollectivePlan::validate(int n, int rank) const {
  const std::string what = collective_name(kind) + " (" + dtype_name(dtype) + ")";
  constexpr std::size_t int_max = static_cast<std::size_t>(INT_MAX);
  const bool reduces = kind == CollectiveKind::AllReduce || kind == CollectiveKind::ReduceScatter;
  if (reduces) {
    SHARDFLOW_REQUIRE_INPUT(!(op == ReduceOp::Mean && !is_floating(dtype)), what,
                            ": reduction 'mean' is not defined for the integer dtype ", dtype_name(dtype));
  }
  if (kind == CollectiveKind::Broadcast || kind == CollectiveKind::Send || kind == CollectiveKind::Recv) {
    SHARDFLOW_REQUIRE_INPUT(root >= 0 && root < n, what, ": ", kind == CollectiveKind::Broadcast ? "root " : "peer ",
                            root, " is not a rank of a group of ", n);
    SHARDFLOW_REQUIRE_INPUT(tag >= 0 && tag <= 32767, what, ": tag ", tag, " is outside [0, 32767]");
  }
  if (kind == CollectiveKind::AllToAllv) {
    const auto un = static_cast<std::size_t>(n);
    SHARDFLOW_REQUIRE_INPUT(
        send_counts.size() == un && recv_counts.size() == un && send_displs.size() == un && recv_displs.size() == un,
        what, ": counts/displacements have lengths ", send_counts.size(), "/", send_displs.size(), " (send) and ",
        recv_counts.size(), "/", recv_displs.size(), " (recv) but the group has ", n, " ranks");
    if (strided()) {
      SHARDFLOW_REQUIRE_INPUT(send_boxes.size() == un && recv_boxes.size() == un, what, ": ", send_boxes.size(),
                              " send and ", recv_boxes.size(), " receive boxes but the group has ", n, " ranks");
      for (std::size_t i = 0; i < un; ++i) {
        SHARDFLOW_REQUIRE_INPUT(send_counts[i] == static_cast<std::size_t>(send_boxes[i].numel()) &&
                                    recv_counts[i] == static_cast<std::size_t>(recv_boxes[i].numel()),
                                what, ": the counts for peer ", i, " differ from its boxes ",
                                send_boxes[i].to_string(), " and ", recv_boxes[i].to_string());
        for (const auto* b : {&send_boxes[i], &recv_boxes[i]}) {
          bool ok = b->offset >= 0;
          for (int d = 0; d < b->ndim; ++d) ok = ok && b->extent[d] >= 0 && b->stride[d] >= 0;
          SHARDFLOW_REQUIRE_INPUT(ok, what, ": box ", b->to_string(), " for peer ", i,
                                  " has a negative extent, stride or offset");
        }
      }
    }
    for (std::size_t i = 0; i < un; ++i) {
      SHARDFLOW_REQUIRE_INPUT(send_counts[i] <= int_max && recv_counts[i] <= int_max && send_displs[i] <= int_max &&
                                  recv_displs[i] <= int_max,
                              what, ": count or displacement for peer ", i, " exceeds the int range of MPI");
    }
  } else {
    SHARDFLOW_REQUIRE_INPUT(count * static_cast<std::size_t>(n) <= int_max, what, ": count ", count, " x ", n,
                            " ranks exceeds the int range of MPI");
  }
  (void)rank;
}

std::string CollectivePlan::to_string() const {
  std::string s = collective_name(kind) + "(" + dtype_name(dtype);
  if (kind == CollectiveKind::AllReduce || kind == CollectiveKind::ReduceScatter) s += ", " + reduce_op_name(op);
  if (kind == CollectiveKind::AllToAllv) {
    std::size_t tot = 0;
    for (auto c : send_counts) tot += c;
    s += ", send total " + std::to_string(tot);
    if (strided()) s += ", strided pieces";
  } else {
    s += ", count " + std::to_string(count);
  }
  if (kind == CollectiveKind::Broadcast) s += ", root " + std::to_string(root);
  if (kind == CollectiveKind::Send || kind == CollectiveKind::Recv)
    s += ", peer " + std::to_string(root) + ", tag " + std::to_string(tag);
  return s + ")";
}

namespace {
/// The plan is valid for the communicator's group and its backend can bind it (InputError).
void check_bindable(const CollectivePlan& plan, const Communicator& comm) {
  plan.validate(comm.size(), comm.rank());
  SHARDFLOW_REQUIRE_INPUT(!plan.strided() || comm.strided_pieces(), plan.to_string(), " on communicator '", comm.name(),
                          "': its backend moves contiguous pieces only (pack them first)");
}
}  // namespace

// ---- Communicator ------------------------------------------------------------------------
Communicator::Communicator(MPI_Comm comm, std::string name) : mpi_comm_(comm), name_(std::move(name)) {
  SHARDFLOW_REQUIRE(comm != MPI_COMM_NULL, "Communicator '", name_, "': MPI communicator is MPI_COMM_NULL");
  CHECK_MPI(MPI_Comm_size(comm, &size_));
  CHECK_MPI(MPI_Comm_rank(comm, &rank_));
}

void Communicator::barrier() const { CHECK_MPI(MPI_Barrier(mpi_comm_)); }

namespace {
/// A word each process holds at a known address: a peer that reads it back through
/// cross-memory attach and finds the value derived from this process's id can copy.
volatile std::uint64_t peer_probe_word = 0;
constexpr std::uint64_t kPeerProbeMagic = 0x53484152444650ull;  // "SHARDFP"
}  // namespace

void Communicator::probe_peer_copies() {
  peer_copies_ = false;
  pids_.clear();
#ifdef __linux__
  // some rank of the group is on another node: every rank finds the same, so all stop here
  // (no allgather of every rank's address over a large group)
  if (Control(mpi_comm_).node_ranks() != size_) return;
  const char* env = std::getenv("SHARDFLOW_PEER_COPY");
  int ok = env != nullptr && std::string(env) == "0" ? 0 : 1;
  const auto pid = static_cast<std::uint64_t>(::getpid());
  peer_probe_word = kPeerProbeMagic ^ pid;
  const std::uint64_t mine[2] = {pid, static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&peer_probe_word))};
  std::vector<std::uint64_t> all(2 * static_cast<std::size_t>(size_));
  CHECK_MPI(MPI_Allgather(mine, 2, MPI_UINT64_T, all.data(), 2, MPI_UINT64_T, mpi_comm_));
  for (int q = 0; ok && q < size_; ++q) {
    if (q == rank_) continue;
    std::uint64_t word = 0;
    const auto uq = static_cast<std::size_t>(q);
    struct iovec local {
      &word, sizeof word
    };
    struct iovec remote {
      reinterpret_cast<void*>(static_cast<std::uintptr_t>(all[2 * uq + 1])), sizeof word
    };
    const ssize_t n = ::process_vm_readv(static_cast<pid_t>(all[2 * uq]), &local, 1, &remote, 1, 0);
    ok = n == static_cast<ssize_t>(sizeof word) && word == (kPeerProbeMagic ^ all[2 * uq]) ? 1 : 0;
  }
  CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_LAND, mpi_comm_));
  if (!ok) return;
  for (int q = 0; q < size_; ++q) pids_.push_back(static_cast<long>(all[2 * static_cast<std::size_t>(q)]));
  peer_copies_ = true;
#endif
}

void Communicator::copy_peer(int peer, bool write, const PeerRun* local, std::size_t nlocal, const PeerRun* remote,
                             std::size_t nremote) const {
  SHARDFLOW_REQUIRE(peer_copies_, "communicator '", name_, "': copy_peer to rank ", peer,
                    " but its ranks cannot copy each other's memory (peer_copies() is false)");
  SHARDFLOW_REQUIRE(peer >= 0 && peer < size_ && peer != rank_, "communicator '", name_, "': copy_peer to rank ", peer,
                    " (rank ", rank_, " of ", size_, ")");
  SHARDFLOW_REQUIRE(nlocal <= kMaxPeerRuns && nremote <= kMaxPeerRuns, "communicator '", name_, "': copy_peer with ",
                    nlocal, " local and ", nremote, " remote runs (at most ", kMaxPeerRuns, " each)");
#ifdef __linux__
  std::size_t total = 0, rtotal = 0;
  struct iovec lv[kMaxPeerRuns], rv[kMaxPeerRuns];
  for (std::size_t i = 0; i < nlocal; ++i) {
    lv[i] = {reinterpret_cast<void*>(local[i].addr), local[i].bytes};
    total += local[i].bytes;
  }
  for (std::size_t i = 0; i < nremote; ++i) {
    rv[i] = {reinterpret_cast<void*>(remote[i].addr), remote[i].bytes};
    rtotal += remote[i].bytes;
  }
  SHARDFLOW_REQUIRE(total == rtotal, "communicator '", name_, "': copy_peer to rank ", peer, " with ", total,
                    " local bytes but ", rtotal, " remote");
  // a copy may stop short (at a run's end); go on from there
  std::size_t li = 0, ri = 0, done = 0;
  while (done < total) {
    const auto pid = static_cast<pid_t>(pids_[static_cast<std::size_t>(peer)]);
    const ssize_t n = write ? ::process_vm_writev(pid, lv + li, nlocal - li, rv + ri, nremote - ri, 0)
                            : ::process_vm_readv(pid, lv + li, nlocal - li, rv + ri, nremote - ri, 0);
    if (n <= 0) {
      const int err = errno;
      throw Error("communicator '" + name_ + "': " + (write ? "writing " : "reading ") + std::to_string(total - done) +
                  " bytes " + (write ? "to" : "from") + " the memory of rank " + std::to_string(peer) +
                  " failed: " + (n < 0 ? std::strerror(err) : "nothing copied"));
    }
    done += static_cast<std::size_t>(n);
    for (auto [v, i] : {std::make_pair(lv, &li), std::make_pair(rv, &ri)}) {  // past the n bytes copied
      auto m = static_cast<std::size_t>(n);
      while (m > 0 && m >= v[*i].iov_len) m -= v[(*i)++].iov_len;
      if (m > 0) {
        v[*i].iov_base = static_cast<char*>(v[*i].iov_base) + m;
        v[*i].iov_len -= m;
      }
    }
  }
#else
  (void)write, (void)local, (void)remote;
  throw Error("communicator '" + name_ + "': copy_peer needs Linux");
#endif
}

Request Communicator::start(const CollectivePlan& plan, const void* send, void* recv) {
  check_bindable(plan, *this);
  auto impl = bind(plan, send, recv);
  impl->start();
  return Request(std::unique_ptr<detail::Pending>(std::move(impl)));
}

Request Communicator::all_gather(const void* send, void* recv, std::size_t count, DType t) {
  return start(CollectivePlan::all_gather(t, count), send, recv);
}
Request Communicator::reduce_scatter(const void* send, void* recv, std::size_t count, DType t, ReduceOp op) {
  return start(CollectivePlan::reduce_scatter(t, count, op), send, recv);
}
Request Communicator::all_reduce(const void* send, void* recv, std::size_t count, DType t, ReduceOp op) {
  return start(CollectivePlan::all_reduce(t, count, op), send, recv);
}
Request Communicator::broadcast(const void* send, void* recv, std::size_t count, DType t, int root) {
  return start(CollectivePlan::broadcast(t, count, root), send, recv);
}
Request Communicator::send(const void* buf, std::size_t count, DType t, int peer, int tag) {
  return start(CollectivePlan::send(t, count, peer, tag), buf, nullptr);
}
Request Communicator::recv(void* buf, std::size_t count, DType t, int peer, int tag) {
  return start(CollectivePlan::recv(t, count, peer, tag), nullptr, buf);
}
Request Communicator::all_to_all(const void* send, void* recv, std::size_t count, DType t) {
  return start(CollectivePlan::all_to_all(t, count), send, recv);
}
Request Communicator::all_to_allv(const void* send, void* recv, const CollectivePlan& plan) {
  SHARDFLOW_REQUIRE_INPUT(plan.kind == CollectiveKind::AllToAllv, "all_to_allv on communicator '", name_,
                          "' was given a ", collective_name(plan.kind), " plan");
  return start(plan, send, recv);
}

// ---- Collective --------------------------------------------------------------------------
Collective::Collective(Communicator& comm, CollectivePlan plan, const void* send, void* recv)
    : comm_(&comm), plan_(std::move(plan)) {
  check_bindable(plan_, comm);
  impl_ = comm.bind(plan_, send, recv);
}

Collective::~Collective() {
  if (impl_) {
    try {
      impl_->wait();
    } catch (...) {
    }
  }
}

Request Collective::start() {
  SHARDFLOW_REQUIRE(impl_->test(), "Collective ", plan_.to_string(), " on '", comm_->name(),
                    "' started while its previous run is still pending");
  impl_->start();
  return Request(impl_.get());
}

void Collective::rebind(const void* send, void* recv) {
  SHARDFLOW_REQUIRE(impl_->test(), "Collective ", plan_.to_string(), " on '", comm_->name(),
                    "' rebound while a run is pending");
  impl_->rebind(send, recv);
}

std::unique_ptr<Communicator> make_communicator(Backend backend, MPI_Comm comm, const std::string& name) {
  if (backend == Backend::Mpi) return detail::make_mpi_communicator(comm, name);
#ifdef SHARDFLOW_HAVE_NCCL
  return detail::make_nccl_communicator(comm, name);
#else
  throw Error("communicator '" + name + "': backend nccl requested but shardflow was built without NCCL");
#endif
}

// ---- CommSet -----------------------------------------------------------------------------
namespace {
std::string group_name(const std::vector<std::string>& axes) {
  std::string s;
  for (const auto& a : axes) s += (s.empty() ? "" : "+") + a;
  return s.empty() ? "self" : s;
}
}  // namespace

CommSet::CommSet(const Mesh& mesh, Backend backend) : mesh_(&mesh), backend_(backend) {
  const auto& names = mesh.shape().axis_names();
  const int k = static_cast<int>(names.size());
  // Every non-empty subset, in a fixed order on every rank (creation is collective).
  for (int mask = 1; mask < (1 << k); ++mask) {
    std::vector<std::string> axes;
    for (int a = 0; a < k; ++a)
      if (mask & (1 << a)) axes.push_back(names[static_cast<size_t>(a)]);
    comms_[axes] = make_communicator(backend, mesh.comm(axes), group_name(axes));
  }
  comms_[{}] = make_communicator(backend, mesh.comm(std::vector<std::string>{}), "self");
  world_ = make_communicator(backend, mesh.world(), "world");
}

Communicator& CommSet::axis(const std::string& name) const {
  SHARDFLOW_REQUIRE_INPUT(mesh_->shape().has_axis(name), "CommSet: the mesh ", mesh_->shape().to_string(),
                          " has no axis '", name, "'");
  return *comms_.at({name});
}

Communicator& CommSet::group(const std::vector<std::string>& axes) const {
  for (const auto& a : axes)
    SHARDFLOW_REQUIRE_INPUT(mesh_->shape().has_axis(a), "CommSet: the mesh ", mesh_->shape().to_string(),
                            " has no axis '", a, "'");
  auto key = mesh_->canonical_axes(axes);
  auto it = comms_.find(key);
  SHARDFLOW_REQUIRE_INPUT(it != comms_.end(), "CommSet: no communicator for the axis group '", group_name(axes), "'");
  return *it->second;
}

}  // namespace shardflow::comm
