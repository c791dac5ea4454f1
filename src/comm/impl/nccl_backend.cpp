// The Nccl backend: device buffers, collectives enqueued on the communicator's CUDA stream,
// completion tracked by a CUDA event (test = cudaEventQuery, wait = cudaEventSynchronize).
// Several NCCL calls that go together (all_to_all(v) as send/recv pairs) are grouped with
// ncclGroupStart/End. Communicators are bootstrapped with a unique id broadcast over the
// group's MPI communicator; the device is the rank's node-local index modulo the devices.
//
// bf16/f16 reductions: widen to an f32 device scratch, reduce-scatter in f32, divide for
// Mean and round each block once, all-gather the rounded blocks (identical on every rank).
#include <mpi.h>

#include <cstring>

#include "comm/communicator.hpp"
#include "comm/impl/cuda_kernels.hpp"
#include "comm/impl/nccl_check.hpp"
#include "core/error.hpp"
#include "comm/mpi_check.hpp"

namespace shardflow::comm::detail {
namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32:
      return ncclFloat32;
    case DType::F64:
      return ncclFloat64;
    case DType::BF16:
      return ncclBfloat16;
    case DType::F16:
      return ncclFloat16;
    case DType::I32:
      return ncclInt32;
    case DType::I64:
      return ncclInt64;
  }
  throw Error("nccl_type: invalid DType value " + std::to_string(static_cast<int>(t)));
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Max ? ncclMax : ncclSum; }

/// Node-local rank of this process in MPI_COMM_WORLD modulo the visible devices.
int pick_device() {
  int ndev = 0;
  CHECK_CUDA(cudaGetDeviceCount(&ndev));
  SHARDFLOW_REQUIRE(ndev > 0, "Nccl backend: no CUDA device is visible to this rank");
  MPI_Comm local = MPI_COMM_NULL;
  CHECK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local));
  int lrank = 0;
  CHECK_MPI(MPI_Comm_rank(local, &lrank));
  CHECK_MPI(MPI_Comm_free(&local));
  return lrank % ndev;
}

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) {
    if (bytes > 0) {
      CHECK_CUDA(cudaMalloc(&ptr_, bytes));
      CHECK_CUDA(cudaMemset(ptr_, 0, bytes));
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

class NcclCollective final : public CollectiveImpl {
 public:
  NcclCollective(ncclComm_t comm, cudaStream_t stream, int n, int rank, const CollectivePlan& plan, const void* send,
                 void* recv)
      : comm_(comm),
        stream_(stream),
        n_(n),
        rank_(rank),
        plan_(plan),
        send_(send),
        recv_(recv),
        esize_(dtype_size(plan.dtype)) {
    CHECK_CUDA(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    const bool reduces = plan.kind == CollectiveKind::AllReduce || plan.kind == CollectiveKind::ReduceScatter;
    wide_ = reduces && is_16bit(plan.dtype);
    const auto un = static_cast<std::size_t>(n);
    if (wide_ && plan.kind == CollectiveKind::AllReduce) {
      block_count_ = (plan.count + un - 1) / un;               // padded equal blocks (NCCL needs them)
      acc_ = DeviceBuffer(block_count_ * un * sizeof(float));  // zeroed padding stays zero
      block_ = DeviceBuffer(block_count_ * sizeof(float));
      if (block_count_ * un != plan.count) stage_ = DeviceBuffer(block_count_ * un * esize_);
    } else if (wide_) {
      block_count_ = plan.count;
      acc_ = DeviceBuffer(plan.count * un * sizeof(float));
      block_ = DeviceBuffer(plan.count * sizeof(float));
    }
  }
  ~NcclCollective() override {
    if (pending_) cudaEventSynchronize(done_);
    cudaEventDestroy(done_);
  }

  void rebind(const void* send, void* recv) override {
    send_ = send;
    recv_ = recv;
  }

  void start() override {
    const auto& p = plan_;
    const ncclDataType_t dt = nccl_type(p.dtype);
    const float divisor = p.op == ReduceOp::Mean ? static_cast<float>(n_) : 1.0f;
    switch (p.kind) {
      case CollectiveKind::AllGather:
        CHECK_NCCL(ncclAllGather(send_, recv_, p.count, dt, comm_, stream_));
        break;
      case CollectiveKind::AllReduce:
        if (wide_) {
          const std::size_t padded = block_count_ * static_cast<std::size_t>(n_);
          char* gather = stage_.as<char>() ? stage_.as<char>() : static_cast<char*>(recv_);
          cuda_widen_to_f32(send_, p.dtype, acc_.as<float>(), p.count, stream_);
          CHECK_NCCL(ncclReduceScatter(acc_.as<float>(), block_.as<float>(), block_count_, ncclFloat32, nccl_op(p.op),
                                       comm_, stream_));
          char* mine = gather + static_cast<std::size_t>(rank_) * block_count_ * esize_;
          cuda_narrow_from_f32(block_.as<float>(), divisor, p.dtype, mine, block_count_, stream_);
          CHECK_NCCL(ncclAllGather(mine, gather, block_count_, dt, comm_, stream_));
          if (padded != p.count)
            CHECK_CUDA(cudaMemcpyAsync(recv_, gather, p.count * esize_, cudaMemcpyDeviceToDevice, stream_));
        } else {
          CHECK_NCCL(ncclAllReduce(send_, recv_, p.count, dt, nccl_op(p.op), comm_, stream_));
          if (p.op == ReduceOp::Mean) cuda_divide(recv_, p.dtype, p.count, n_, stream_);
        }
        break;
      case CollectiveKind::ReduceScatter:
        if (wide_) {
          cuda_widen_to_f32(send_, p.dtype, acc_.as<float>(), p.count * static_cast<std::size_t>(n_), stream_);
          CHECK_NCCL(ncclReduceScatter(acc_.as<float>(), block_.as<float>(), p.count, ncclFloat32, nccl_op(p.op), comm_,
                                       stream_));
          cuda_narrow_from_f32(block_.as<float>(), divisor, p.dtype, recv_, p.count, stream_);
        } else {
          CHECK_NCCL(ncclReduceScatter(send_, recv_, p.count, dt, nccl_op(p.op), comm_, stream_));
          if (p.op == ReduceOp::Mean) cuda_divide(recv_, p.dtype, p.count, n_, stream_);
        }
        break;
      case CollectiveKind::Broadcast:
        CHECK_NCCL(ncclBroadcast(rank_ == p.root ? send_ : recv_, recv_, p.count, dt, p.root, comm_, stream_));
        break;
      case CollectiveKind::Send:
        CHECK_NCCL(ncclSend(send_, p.count, dt, p.root, comm_, stream_));
        break;
      case CollectiveKind::Recv:
        CHECK_NCCL(ncclRecv(recv_, p.count, dt, p.root, comm_, stream_));
        break;
      case CollectiveKind::AllToAll:
      case CollectiveKind::AllToAllv: {
        const bool v = p.kind == CollectiveKind::AllToAllv;
        CHECK_NCCL(ncclGroupStart());
        for (int j = 0; j < n_; ++j) {
          const auto uj = static_cast<std::size_t>(j);
          const std::size_t sc = v ? p.send_counts[uj] : p.count, rc = v ? p.recv_counts[uj] : p.count;
          const std::size_t sd = v ? p.send_displs[uj] : uj * p.count, rd = v ? p.recv_displs[uj] : uj * p.count;
          if (sc > 0) CHECK_NCCL(ncclSend(static_cast<const char*>(send_) + sd * esize_, sc, dt, j, comm_, stream_));
          if (rc > 0) CHECK_NCCL(ncclRecv(static_cast<char*>(recv_) + rd * esize_, rc, dt, j, comm_, stream_));
        }
        CHECK_NCCL(ncclGroupEnd());
        break;
      }
    }
    CHECK_CUDA(cudaEventRecord(done_, stream_));
    pending_ = true;
  }

  bool test() override {
    if (!pending_) return true;
    const cudaError_t rc = cudaEventQuery(done_);
    if (rc == cudaErrorNotReady) return false;
    pending_ = false;
    CHECK_CUDA(rc);
    return true;
  }

  void wait() override {
    if (!pending_) return;
    pending_ = false;
    CHECK_CUDA(cudaEventSynchronize(done_));
  }

 private:
  ncclComm_t comm_;
  cudaStream_t stream_;
  int n_, rank_;
  CollectivePlan plan_;
  const void* send_;
  void* recv_;
  std::size_t esize_;
  bool wide_ = false;
  bool pending_ = false;
  cudaEvent_t done_ = nullptr;
  std::size_t block_count_ = 0;
  DeviceBuffer acc_, block_, stage_;  // f32 scratch and padded 16-bit staging, allocated once
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(MPI_Comm comm, const std::string& name) : Communicator(comm, name) {
    device_ = pick_device();
    CHECK_CUDA(cudaSetDevice(device_));
    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    if (rank() == 0) CHECK_NCCL(ncclGetUniqueId(&id));
    CHECK_MPI(MPI_Bcast(&id, static_cast<int>(sizeof id), MPI_BYTE, 0, comm));
    CHECK_NCCL(ncclCommInitRank(&nccl_, size(), id, rank()));
    CHECK_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~NcclCommunicator() override {
    if (stream_) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
    if (nccl_) ncclCommDestroy(nccl_);
  }
  Backend backend() const override { return Backend::Nccl; }
  std::unique_ptr<CollectiveImpl> bind(const CollectivePlan& plan, const void* send, void* recv) override {
    CHECK_CUDA(cudaSetDevice(device_));
    return std::make_unique<NcclCollective>(nccl_, stream_, size(), rank(), plan, send, recv);
  }

 private:
  int device_ = 0;
  ncclComm_t nccl_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm, const std::string& name) {
  return std::make_unique<NcclCommunicator>(comm, name);
}

}  // namespace shardflow::comm::detail
