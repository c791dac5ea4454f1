// The Nccl backend on one rank and one GPU: each collective on device buffers against the
// host reference (bf16 sums accumulate in f32 and round once). Skips cleanly without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "comm/comm_set.hpp"
#include "core/half.hpp"

using namespace shardflow;
using namespace shardflow::comm;

namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

template <class T>
struct Dev {
  T* p = nullptr;
  std::size_t n = 0;
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    void* v = nullptr;
    EXPECT_EQ(cudaMalloc(&v, std::max<std::size_t>(1, n) * sizeof(T)), cudaSuccess);
    p = static_cast<T*>(v);
    if (n) {
      EXPECT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  explicit Dev(std::size_t count) : Dev(std::vector<T>(count)) {}
  ~Dev() { cudaFree(p); }
  std::vector<T> host() const {
    std::vector<T> h(n);
    if (n) {
      EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return h;
  }
};

TEST(CommNccl, CollectivesOnOneGpu) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device visible";
  Mesh mesh(MeshShape({"fsdp"}, {1}), MPI_COMM_SELF);
  CommSet comms(mesh, Backend::Nccl);
  Communicator& c = comms.axis("fsdp");
  ASSERT_EQ(c.backend(), Backend::Nccl);
  const std::size_t n = 1000;
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(i % 97) * 0.25f - 3.0f;
  {  // all_reduce sum / mean / max on one rank: the identity
    Dev<float> in(x), out(n);
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max}) {
      Request r = c.all_reduce(in.p, out.p, n, DType::F32, op);
      while (!r.test()) {
      }
      EXPECT_EQ(out.host(), x) << reduce_op_name(op);
    }
  }
  {  // bf16 all_reduce through the f32 path: rounds once, so on one rank the identity
    std::vector<bf16> xb(n);
    for (std::size_t i = 0; i < n; ++i) xb[i] = bf16(x[i] + 0.001f);
    Dev<bf16> in(xb), out(n);
    c.all_reduce(in.p, out.p, n, DType::BF16, ReduceOp::Mean).wait();
    auto got = out.host();
    for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(got[i].bits, xb[i].bits) << i;
  }
  {  // all_gather, reduce_scatter, broadcast, all_to_all(v): identities on one rank
    Dev<float> in(x), out(n);
    c.all_gather(in.p, out.p, n, DType::F32).wait();
    EXPECT_EQ(out.host(), x);
    c.reduce_scatter(in.p, out.p, n, DType::F32, ReduceOp::Sum).wait();
    EXPECT_EQ(out.host(), x);
    c.broadcast(in.p, out.p, n, DType::F32, 0).wait();
    EXPECT_EQ(out.host(), x);
    c.all_to_all(in.p, out.p, n, DType::F32).wait();
    EXPECT_EQ(out.host(), x);
    Dev<float> z(std::vector<float>(n, 0.f));
    auto plan = CollectivePlan::all_to_allv(DType::F32, {n / 2}, {n / 2}, {n / 4}, {0});
    c.all_to_allv(in.p, z.p, plan).wait();
    auto got = z.host();
    for (std::size_t i = 0; i < n / 2; ++i) EXPECT_EQ(got[i], x[n / 4 + i]);
  }
  {  // a persistent operation, several steps
    Dev<float> in(x), out(n);
    Collective op(c, CollectivePlan::all_reduce(DType::F32, n, ReduceOp::Sum), in.p, out.p);
    for (int step = 0; step < 3; ++step) op.start().wait();
    EXPECT_EQ(out.host(), x);
  }
}

}  // namespace
