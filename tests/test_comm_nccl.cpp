// The Nccl backend on one rank and one GPU: each collective on device buffers against the
// host reference (bf16 sums accumulate in f32 and round once), and the backend's device
// casts (widen, divide-and-round, divide) bit for bit against the host's rounding over more
// elements than one grid covers. Skips cleanly without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <iterator>
#include <vector>

#include "comm/comm_set.hpp"
#include "comm/impl/cuda_kernels.hpp"
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

// Finite f32 values over a wide exponent range (normals, values that round to 16-bit
// subnormals, overflow and exact ties), from a fixed hash: the same on every run.
std::vector<float> cast_inputs(std::size_t n) {
  std::vector<float> v(n);
  std::uint64_t h = 0x9e3779b97f4a7c15ull;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 29;
    std::uint32_t bits = static_cast<std::uint32_t>(h >> 11);
    const std::uint32_t exp = 96u + static_cast<std::uint32_t>((h >> 3) % 64u);  // 2^-31 .. 2^32
    bits = (bits & 0x807fffffu) | (exp << 23);
    if (i % 7 == 3) bits &= 0xffff8000u;  // an exact bf16 tie (or a value that is one)
    std::memcpy(&v[i], &bits, 4);
  }
  return v;
}

// x / divisor rounded to H by the backend's device kernel; empty (a failure recorded) when
// the kernel failed
template <class H>
std::vector<H> device_narrow(DType t, const std::vector<float>& x, float divisor) {
  Dev<float> in(x);
  Dev<H> out(x.size());
  detail::cuda_narrow_from_f32(in.p, divisor, t, out.p, x.size(), nullptr);
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    ADD_FAILURE() << dtype_name(t) << " narrowing kernel: " << cudaGetErrorString(e);
    return {};
  }
  return out.host();
}

template <class H>
void check_narrow(DType t, const std::vector<float>& x, float divisor) {
  const std::size_t n = x.size();
  const auto got = device_narrow<H>(t, x, divisor);
  if (got.size() != n) return;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const H want(divisor == 1.0f ? x[i] : x[i] / divisor);
    if (got[i].bits != want.bits && bad++ < 5)
      ADD_FAILURE() << dtype_name(t) << " element " << i << " of " << n << ": " << x[i] << " / " << divisor
                    << " gave bits " << got[i].bits << ", the host rounds to " << want.bits;
  }
  EXPECT_EQ(bad, 0u) << dtype_name(t) << " / " << divisor;
  // widen back: exact
  Dev<H> narrow(got);
  Dev<float> wide(n);
  detail::cuda_widen_to_f32(narrow.p, t, wide.p, n, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto w = wide.host();
  bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float back = static_cast<float>(got[i]);
    if (std::memcmp(&w[i], &back, 4) != 0 && bad++ < 5)
      ADD_FAILURE() << dtype_name(t) << " widen element " << i << ": " << w[i] << " != " << back;
  }
  EXPECT_EQ(bad, 0u) << dtype_name(t) << " widen";
}

template <class T>
bool same_value(T a, T b) {  // bit for bit, except that any NaN equals any NaN
  if (a != a && b != b) return true;
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// x / 3 divided in place on the device in f32 and in f64 (a Mean over three ranks), against
// the host's division: the mismatches (the first five reported)
std::size_t divide_mismatches(const std::vector<float>& x) {
  Dev<float> f(x);
  std::vector<double> xd(x.begin(), x.end());
  Dev<double> d(xd);
  detail::cuda_divide(f.p, DType::F32, x.size(), 3, nullptr);
  detail::cuda_divide(d.p, DType::F64, x.size(), 3, nullptr);
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    ADD_FAILURE() << "divide kernel: " << cudaGetErrorString(e);
    return x.size();
  }
  const auto gf = f.host();
  const auto gd = d.host();
  std::size_t bad = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if ((!same_value(gf[i], x[i] / 3.0f) || !same_value(gd[i], xd[i] / 3.0)) && bad++ < 5)
      ADD_FAILURE() << "divide element " << i << ": " << x[i] << " / 3 gave " << gf[i] << " (f32) " << gd[i]
                    << " (f64)";
  return bad;
}

TEST(CommNccl, DeviceCastsMatchTheHostRounding) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device visible";
  // 65535 blocks x 256 threads = 16.8 M: more elements than that exercise the grid-stride loop
  const std::size_t n = 20'000'000;
  const auto x = cast_inputs(n);
  for (float divisor : {1.0f, 3.0f}) {
    check_narrow<bf16>(DType::BF16, x, divisor);
    check_narrow<f16>(DType::F16, x, divisor);
  }
  // f32 / f64 Mean: divide in place (finite inputs and quotients: bit for bit)
  EXPECT_EQ(divide_mismatches(x), 0u) << "divide";
}

// Every 16-bit upper half of an f32 (every sign, exponent and bf16 mantissa: zeros, f32
// subnormals, the largest finite values, infinities, NaNs) with lower halves that round
// down, tie, round up or carry: the cases the hashed inputs above never reach for bf16.
std::vector<float> special_inputs() {
  std::vector<float> v;
  const std::uint32_t lows[] = {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu};
  v.reserve(65536u * std::size(lows));
  for (std::uint32_t hi = 0; hi < 65536u; ++hi)
    for (std::uint32_t lo : lows) {
      const std::uint32_t bits = (hi << 16) | lo;
      float f;
      std::memcpy(&f, &bits, 4);
      v.push_back(f);
    }
  return v;
}

template <class H>
bool is_nan16(H h, DType t) {
  const unsigned e = t == DType::BF16 ? (h.bits >> 7) & 0xffu : (h.bits >> 10) & 0x1fu;
  const unsigned m = t == DType::BF16 ? h.bits & 0x7fu : h.bits & 0x3ffu;
  return e == (t == DType::BF16 ? 0xffu : 0x1fu) && m != 0;
}

// Narrow, widen and divide every special input. The device and the host round the same way
// bit for bit, subnormals included (no flush to zero); a NaN stays a NaN, but the device
// writes CUDA's canonical NaN where the host keeps the sign and payload, so NaNs compare by
// class only.
template <class H>
std::size_t narrow_special_mismatches(DType t, const std::vector<float>& x, float divisor) {
  const auto got = device_narrow<H>(t, x, divisor);
  if (got.size() != x.size()) return x.size();
  std::size_t bad = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const H want(divisor == 1.0f ? x[i] : x[i] / divisor);
    const bool ok = got[i].bits == want.bits || (is_nan16(got[i], t) && is_nan16(want, t));
    std::uint32_t xb;
    std::memcpy(&xb, &x[i], 4);
    if (!ok && bad++ < 5)
      ADD_FAILURE() << dtype_name(t) << " / " << divisor << ": f32 bits 0x" << std::hex << xb << " gave 0x"
                    << got[i].bits << ", the host rounds to 0x" << want.bits << std::dec;
  }
  return bad;
}

TEST(CommNccl, DeviceCastsOfSpecialValues) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device visible";
  const auto x = special_inputs();
  for (float divisor : {1.0f, 3.0f}) {
    EXPECT_EQ(narrow_special_mismatches<bf16>(DType::BF16, x, divisor), 0u) << "bf16 / " << divisor;
    EXPECT_EQ(narrow_special_mismatches<f16>(DType::F16, x, divisor), 0u) << "f16 / " << divisor;
  }
  // widen every 16-bit pattern
  std::vector<bf16> hb(65536);
  std::vector<f16> hh(65536);
  for (std::uint32_t i = 0; i < 65536u; ++i) {
    hb[i].bits = static_cast<std::uint16_t>(i);
    hh[i].bits = static_cast<std::uint16_t>(i);
  }
  Dev<bf16> db(hb);
  Dev<f16> dh(hh);
  Dev<float> wb(65536), wh(65536);
  detail::cuda_widen_to_f32(db.p, DType::BF16, wb.p, 65536, nullptr);
  detail::cuda_widen_to_f32(dh.p, DType::F16, wh.p, 65536, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto gb = wb.host();
  const auto gh = wh.host();
  std::size_t bad = 0;
  for (std::uint32_t i = 0; i < 65536u; ++i) {
    const float b = static_cast<float>(hb[i]);
    const float h = static_cast<float>(hh[i]);
    if (!same_value(gb[i], b) && bad++ < 5)
      ADD_FAILURE() << "bf16 0x" << std::hex << i << std::dec << " widened to " << gb[i];
    if (!same_value(gh[i], h) && bad++ < 5)
      ADD_FAILURE() << "f16 0x" << std::hex << i << std::dec << " widened to " << gh[i];
  }
  EXPECT_EQ(bad, 0u) << "widen";
  // f32 / f64 Mean division of the same inputs: subnormal quotients, infinities, NaNs
  EXPECT_EQ(divide_mismatches(x), 0u) << "divide";
}

}  // namespace
