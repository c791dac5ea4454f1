// The Mpi backend: host buffers, MPI_I* collectives, progress by MPI_Test.
//
// bf16/f16 reductions never add in 16 bit: the operation widens its input to an f32
// scratch buffer, reduce-scatters in f32 (MPI_SUM/MPI_MAX on MPI_FLOAT), divides by the
// group size for Mean, rounds its block once to 16 bit, and (all_reduce) all-gathers the
// rounded blocks. Each block is reduced on one rank only, so every rank ends with bitwise
// the same result.
#include <algorithm>
#include <cstring>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/impl/convert.hpp"
#include "core/error.hpp"
#include "comm/mpi_check.hpp"
#include "layout/layout.hpp"

namespace shardflow::comm::detail {
namespace {

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::F64:
      return MPI_DOUBLE;
    case DType::BF16:
      return MPI_UINT16_T;  // moved as bits; never reduced in 16 bit
    case DType::F16:
      return MPI_UINT16_T;
    case DType::I32:
      return MPI_INT32_T;
    case DType::I64:
      return MPI_INT64_T;
  }
  throw Error("mpi_type: invalid DType value " + std::to_string(static_cast<int>(t)));
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::Max ? MPI_MAX : MPI_SUM; }

std::vector<int> to_int(const std::vector<std::size_t>& v) {
  std::vector<int> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = static_cast<int>(v[i]);
  return r;
}

/// The derived datatype of `box` (elements of `base`, `esize` bytes each), its offset
/// included, committed: the box's elements in its row-major order.
MPI_Datatype box_type(const kernels::StridedBox& box, MPI_Datatype base, std::size_t esize) {
  const kernels::StridedBox b = box.simplified();
  const auto es = static_cast<MPI_Aint>(esize);
  MPI_Datatype t = base;
  for (int d = b.ndim - 1; d >= 0; --d) {
    MPI_Datatype next = MPI_DATATYPE_NULL;
    if (d == b.ndim - 1 && b.stride[d] == 1)
      CHECK_MPI(MPI_Type_contiguous(static_cast<int>(b.extent[d]), t, &next));
    else
      CHECK_MPI(MPI_Type_create_hvector(static_cast<int>(b.extent[d]), 1, static_cast<MPI_Aint>(b.stride[d]) * es, t,
                                        &next));
    if (t != base) CHECK_MPI(MPI_Type_free(&t));
    t = next;
  }
  MPI_Aint at = static_cast<MPI_Aint>(b.offset) * es;
  MPI_Datatype placed = MPI_DATATYPE_NULL;
  CHECK_MPI(MPI_Type_create_hindexed_block(1, 1, &at, t, &placed));
  if (t != base) CHECK_MPI(MPI_Type_free(&t));
  CHECK_MPI(MPI_Type_commit(&placed));
  return placed;
}

class MpiCollective final : public CollectiveImpl {
 public:
  MpiCollective(MPI_Comm comm, int n, int rank, const CollectivePlan& plan, const void* send, void* recv)
      : comm_(comm), n_(n), rank_(rank), plan_(plan), send_(send), recv_(recv), esize_(dtype_size(plan.dtype)) {
    const bool reduces = plan.kind == CollectiveKind::AllReduce || plan.kind == CollectiveKind::ReduceScatter;
    wide_ = reduces && is_16bit(plan.dtype);
    if (plan.kind == CollectiveKind::AllToAllv && plan.strided()) {
      // one derived datatype per non-empty piece (count 1, displacement 0: the type holds it)
      const MPI_Datatype base = mpi_type(plan.dtype);
      auto types = [&](const std::vector<kernels::StridedBox>& boxes, std::vector<int>& counts,
                       std::vector<MPI_Datatype>& out) {
        for (const auto& b : boxes) {
          const bool some = b.numel() > 0;
          counts.push_back(some ? 1 : 0);
          out.push_back(some ? box_type(b, base, esize_) : base);
          if (some) owned_.push_back(out.back());
        }
      };
      types(plan.send_boxes, scounts_, stypes_);
      types(plan.recv_boxes, rcounts_, rtypes_);
      sdispls_.assign(static_cast<std::size_t>(n_), 0);
      rdispls_.assign(static_cast<std::size_t>(n_), 0);
    } else if (plan.kind == CollectiveKind::AllToAllv) {
      scounts_ = to_int(plan.send_counts);
      sdispls_ = to_int(plan.send_displs);
      rcounts_ = to_int(plan.recv_counts);
      rdispls_ = to_int(plan.recv_displs);
    }
    if (wide_ && plan.kind == CollectiveKind::AllReduce) {
      // Blocks of the reduce-scatter follow the project's uneven rule.
      const auto c = static_cast<int64_t>(plan.count);
      for (int i = 0; i < n_; ++i) {
        rcounts_.push_back(static_cast<int>(split_extent(c, n_, i)));
        rdispls_.push_back(static_cast<int>(split_offset(c, n_, i)));
      }
      acc_.resize(plan.count);
      block_.resize(static_cast<std::size_t>(rcounts_[static_cast<std::size_t>(rank_)]));
    } else if (wide_) {  // reduce_scatter
      acc_.resize(plan.count * static_cast<std::size_t>(n_));
      block_.resize(plan.count);
    }
  }

  ~MpiCollective() override {
    if (req_ != MPI_REQUEST_NULL) {
      MPI_Wait(&req_, MPI_STATUS_IGNORE);
    }
    for (MPI_Datatype& t : owned_) MPI_Type_free(&t);
  }
  MpiCollective(const MpiCollective&) = delete;
  MpiCollective& operator=(const MpiCollective&) = delete;

  void rebind(const void* send, void* recv) override {
    send_ = send;
    recv_ = recv;
  }

  void start() override {
    const auto& p = plan_;
    const int cnt = static_cast<int>(p.count);
    const MPI_Datatype dt = mpi_type(p.dtype);
    phase_ = 1;
    switch (p.kind) {
      case CollectiveKind::AllGather: {
        const char* at_mine = static_cast<const char*>(recv_) + static_cast<std::size_t>(rank_) * p.count * esize_;
        const void* sb = (send_ == at_mine) ? MPI_IN_PLACE : send_;
        CHECK_MPI(MPI_Iallgather(sb, cnt, dt, recv_, cnt, dt, comm_, &req_));
        break;
      }
      case CollectiveKind::AllReduce:
        if (wide_) {
          widen_to_f32(send_, p.dtype, acc_.data(), p.count);
          CHECK_MPI(
              MPI_Ireduce_scatter(acc_.data(), block_.data(), rcounts_.data(), MPI_FLOAT, mpi_op(p.op), comm_, &req_));
        } else {
          const void* sb = (send_ == recv_) ? MPI_IN_PLACE : send_;
          CHECK_MPI(MPI_Iallreduce(sb, recv_, cnt, dt, mpi_op(p.op), comm_, &req_));
        }
        break;
      case CollectiveKind::ReduceScatter:
        if (wide_) {
          widen_to_f32(send_, p.dtype, acc_.data(), p.count * static_cast<std::size_t>(n_));
          CHECK_MPI(MPI_Ireduce_scatter_block(acc_.data(), block_.data(), cnt, MPI_FLOAT, mpi_op(p.op), comm_, &req_));
        } else {
          const void* sb = (send_ == recv_) ? MPI_IN_PLACE : send_;
          CHECK_MPI(MPI_Ireduce_scatter_block(sb, recv_, cnt, dt, mpi_op(p.op), comm_, &req_));
        }
        break;
      case CollectiveKind::Broadcast:
        if (rank_ == p.root && send_ != recv_ && p.count > 0) std::memcpy(recv_, send_, p.count * esize_);
        CHECK_MPI(MPI_Ibcast(recv_, cnt, dt, p.root, comm_, &req_));
        break;
      case CollectiveKind::Send:
        CHECK_MPI(MPI_Isend(send_, cnt, dt, p.root, p.tag, comm_, &req_));
        break;
      case CollectiveKind::Recv:
        CHECK_MPI(MPI_Irecv(recv_, cnt, dt, p.root, p.tag, comm_, &req_));
        break;
      case CollectiveKind::AllToAll:
        CHECK_MPI(MPI_Ialltoall(send_, cnt, dt, recv_, cnt, dt, comm_, &req_));
        break;
      case CollectiveKind::AllToAllv:
        if (p.strided()) {
          CHECK_MPI(MPI_Ialltoallw(send_, scounts_.data(), sdispls_.data(), stypes_.data(), recv_, rcounts_.data(),
                                   rdispls_.data(), rtypes_.data(), comm_, &req_));
          break;
        }
        CHECK_MPI(MPI_Ialltoallv(send_, scounts_.data(), sdispls_.data(), dt, recv_, rcounts_.data(), rdispls_.data(),
                                 dt, comm_, &req_));
        break;
    }
  }

  bool test() override {
    while (phase_ != 0) {
      int flag = 0;
      CHECK_MPI(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE));
      if (!flag) return false;
      advance();
    }
    return true;
  }

  void wait() override {
    while (phase_ != 0) {
      CHECK_MPI(MPI_Wait(&req_, MPI_STATUS_IGNORE));
      advance();
    }
  }

 private:
  // The MPI request of the current phase completed: finish it, maybe start the next.
  void advance() {
    const auto& p = plan_;
    const float divisor = p.op == ReduceOp::Mean ? static_cast<float>(n_) : 1.0f;
    if (p.kind == CollectiveKind::AllReduce && wide_ && phase_ == 1) {
      const auto me = static_cast<std::size_t>(rank_);
      char* mine = static_cast<char*>(recv_) + static_cast<std::size_t>(rdispls_[me]) * esize_;
      narrow_from_f32(block_.data(), divisor, p.dtype, mine, block_.size());
      phase_ = 2;
      CHECK_MPI(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv_, rcounts_.data(), rdispls_.data(),
                                MPI_UINT16_T, comm_, &req_));
      return;
    }
    if (p.kind == CollectiveKind::ReduceScatter && wide_) {
      narrow_from_f32(block_.data(), divisor, p.dtype, recv_, p.count);
    } else if (p.op == ReduceOp::Mean && !wide_ &&
               (p.kind == CollectiveKind::AllReduce || p.kind == CollectiveKind::ReduceScatter)) {
      divide_in_place(recv_, p.dtype, p.count, n_);
    }
    phase_ = 0;
  }

  MPI_Comm comm_;
  int n_, rank_;
  CollectivePlan plan_;
  const void* send_;
  void* recv_;
  std::size_t esize_;
  bool wide_ = false;
  int phase_ = 0;  // 0: idle/complete; 1, 2: the MPI request of that phase is in flight
  MPI_Request req_ = MPI_REQUEST_NULL;
  std::vector<float> acc_, block_;                          // f32 scratch of 16-bit reductions
  std::vector<int> scounts_, sdispls_, rcounts_, rdispls_;  // int arrays MPI wants
  std::vector<MPI_Datatype> stypes_, rtypes_, owned_;       // all_to_allw: per-peer types, those to free
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, const std::string& name) : Communicator(comm, name) { probe_peer_copies(); }
  Backend backend() const override { return Backend::Mpi; }
  bool strided_pieces() const override { return true; }
  std::unique_ptr<CollectiveImpl> bind(const CollectivePlan& plan, const void* send, void* recv) override {
    return std::make_unique<MpiCollective>(mpi_comm(), size(), rank(), plan, send, recv);
  }
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, const std::string& name) {
  return std::make_unique<MpiCommunicator>(comm, name);
}

}  // namespace shardflow::comm::detail
