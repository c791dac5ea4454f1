// The Mpi backend: every collective and dtype on the axis and group communicators of a
// mesh, against serial references computed from the same per-rank data (integers and the
// 16-bit exact data bitwise; f32/f64 within a computed tolerance).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "comm/comm_set.hpp"
#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "core/half.hpp"
#include "support/test_util.hpp"

using namespace shardflow;
using namespace shardflow::comm;

namespace {

template <class T>
double to_d(T x) {
  return static_cast<double>(x);
}
template <>
double to_d(bf16 x) {
  return static_cast<double>(static_cast<float>(x));
}
template <>
double to_d(f16 x) {
  return static_cast<double>(static_cast<float>(x));
}

/// Deterministic data of global rank r (any rank can recompute any other rank's data).
/// Floats: uniform in [-1, 1]; 16-bit: k/64 with |k| <= 255 (exact in bf16 and f16, so sums
/// of up to four of them and their means are exact in f32); integers: [-1000, 1000].
template <class T>
std::vector<T> rank_data(int r, std::size_t n, unsigned salt) {
  std::mt19937_64 g(1000003ull * static_cast<unsigned>(r) + salt);
  std::vector<T> v(n);
  for (auto& x : v) {
    if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) {
      x = T(static_cast<float>(std::uniform_int_distribution<int>(-255, 255)(g)) / 64.0f);
    } else if constexpr (std::is_floating_point_v<T>) {
      x = static_cast<T>(std::uniform_real_distribution<double>(-1.0, 1.0)(g));
    } else {
      x = static_cast<T>(std::uniform_int_distribution<int>(-1000, 1000)(g));
    }
  }
  return v;
}

template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

/// got against the exact reduction `ref` (computed in double) of values whose absolute
/// sum is `abs_sum`, over n ranks.
template <class T>
::testing::AssertionResult close(T got, double ref, double abs_sum, int n, ReduceOp op) {
  const double g = to_d(got);
  double tol = 0;
  if constexpr (std::is_same_v<T, float>) {
    tol = n * 1.2e-7 * abs_sum;
  } else if constexpr (std::is_same_v<T, double>) {
    tol = n * 2.3e-16 * abs_sum;
  } else if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) {
    // exact data: the f32 sum is exact, the result is it rounded once
    const T want(static_cast<float>(ref));
    if (same_bits(got, want)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << g << " want " << to_d(want) << " (ref " << ref << ")";
  } else {
    if (g == ref) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << g << " want " << ref;
  }
  if (op == ReduceOp::Max) tol = 0;
  if (std::fabs(g - ref) <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << g << " want " << ref << " tol " << tol;
}

/// Mesh data x fsdp over the world; tests run on both axes and the group of both.
struct Fixture {
  int n = test::world_size();
  Mesh mesh{MeshShape({"data", "fsdp"}, {n >= 2 ? 2 : 1, n >= 2 ? n / 2 : 1})};
  CommSet comms{mesh, Backend::Mpi};
  std::vector<std::vector<std::string>> groups{{"data"}, {"fsdp"}, {"data", "fsdp"}};
  std::vector<int> members(const std::vector<std::string>& axes) const {
    return mesh.shape().group_ranks(mesh.rank(), mesh.canonical_axes(axes));
  }
};

template <class T>
class CommTyped : public ::testing::Test {};
using Types = ::testing::Types<float, double, bf16, f16, std::int32_t, std::int64_t>;
TYPED_TEST_SUITE(CommTyped, Types);

TYPED_TEST(CommTyped, AllGather) {
  using T = TypeParam;
  Fixture f;
  for (const auto& axes : f.groups) {
    Communicator& c = f.comms.group(axes);
    auto mem = f.members(axes);
    for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{37}, std::size_t{1000}}) {
      auto send = rank_data<T>(f.mesh.rank(), count, 1);
      std::vector<T> recv(count * mem.size());
      c.all_gather(send.data(), recv.data(), count, dtype_of<T>()).wait();
      for (std::size_t i = 0; i < mem.size(); ++i) {
        auto want = rank_data<T>(mem[i], count, 1);
        for (std::size_t k = 0; k < count; ++k)
          ASSERT_TRUE(same_bits(recv[i * count + k], want[k])) << c.name() << " block " << i << " elem " << k;
      }
    }
  }
}

TYPED_TEST(CommTyped, AllReduceAndReduceScatter) {
  using T = TypeParam;
  Fixture f;
  std::vector<ReduceOp> ops{ReduceOp::Sum, ReduceOp::Max};
  if (is_floating(dtype_of<T>())) ops.push_back(ReduceOp::Mean);
  for (const auto& axes : f.groups) {
    Communicator& c = f.comms.group(axes);
    auto mem = f.members(axes);
    const int n = c.size();
    for (ReduceOp op : ops) {
      for (std::size_t count : {std::size_t{1}, std::size_t{7}, std::size_t{1001}}) {
        const std::size_t total = count * static_cast<std::size_t>(n);
        std::vector<std::vector<T>> all;
        for (int r : mem) all.push_back(rank_data<T>(r, total, 2));
        auto ref = [&](std::size_t k, double* abs_sum) {
          double s = 0, a = 0, m = -1e300;
          for (auto& v : all) {
            s += to_d(v[k]);
            a += std::fabs(to_d(v[k]));
            m = std::max(m, to_d(v[k]));
          }
          *abs_sum = a;
          return op == ReduceOp::Sum ? s : op == ReduceOp::Max ? m : s / n;
        };
        const auto& mine = all[static_cast<std::size_t>(c.rank())];
        // all_reduce (out of place and in place)
        std::vector<T> out(total);
        c.all_reduce(mine.data(), out.data(), total, dtype_of<T>(), op).wait();
        std::vector<T> inplace = mine;
        c.all_reduce(inplace.data(), inplace.data(), total, dtype_of<T>(), op).wait();
        for (std::size_t k = 0; k < total; ++k) {
          double a = 0;
          const double want = ref(k, &a);
          ASSERT_TRUE(close(out[k], want, a, n, op)) << c.name() << " all_reduce " << reduce_op_name(op) << " k " << k;
          ASSERT_TRUE(same_bits(inplace[k], out[k])) << "in-place differs at " << k;
        }
        // reduce_scatter: block c.rank() of the reduction
        std::vector<T> block(count);
        c.reduce_scatter(mine.data(), block.data(), count, dtype_of<T>(), op).wait();
        for (std::size_t k = 0; k < count; ++k) {
          double a = 0;
          const std::size_t g = static_cast<std::size_t>(c.rank()) * count + k;
          const double want = ref(g, &a);
          ASSERT_TRUE(close(block[k], want, a, n, op))
              << c.name() << " reduce_scatter " << reduce_op_name(op) << " k " << k;
        }
      }
    }
  }
}

TYPED_TEST(CommTyped, BroadcastSendRecvAllToAll) {
  using T = TypeParam;
  Fixture f;
  for (const auto& axes : f.groups) {
    Communicator& c = f.comms.group(axes);
    auto mem = f.members(axes);
    const int n = c.size(), me = c.rank();
    const std::size_t count = 129;
    for (int root = 0; root < n; ++root) {
      auto send = rank_data<T>(f.mesh.rank(), count, 3);
      std::vector<T> recv(count);
      c.broadcast(send.data(), recv.data(), count, dtype_of<T>(), root).wait();
      auto want = rank_data<T>(mem[static_cast<std::size_t>(root)], count, 3);
      for (std::size_t k = 0; k < count; ++k) ASSERT_TRUE(same_bits(recv[k], want[k])) << "root " << root;
    }
    {  // ring: receive from the left, send to the right
      auto send = rank_data<T>(f.mesh.rank(), count, 4);
      std::vector<T> recv(count);
      const int right = (me + 1) % n, left = (me + n - 1) % n;
      Request rr = c.recv(recv.data(), count, dtype_of<T>(), left, 7);
      Request rs = c.send(send.data(), count, dtype_of<T>(), right, 7);
      while (!rr.test()) {
      }
      rs.wait();
      EXPECT_FALSE(rr.pending());
      auto want = rank_data<T>(mem[static_cast<std::size_t>(left)], count, 4);
      for (std::size_t k = 0; k < count; ++k) ASSERT_TRUE(same_bits(recv[k], want[k]));
    }
    {  // all_to_all: block j of rank r goes to rank j
      const std::size_t blk = 33;
      auto send = rank_data<T>(f.mesh.rank(), blk * static_cast<std::size_t>(n), 5);
      std::vector<T> recv(send.size());
      c.all_to_all(send.data(), recv.data(), blk, dtype_of<T>()).wait();
      for (int j = 0; j < n; ++j) {
        auto theirs = rank_data<T>(mem[static_cast<std::size_t>(j)], blk * static_cast<std::size_t>(n), 5);
        for (std::size_t k = 0; k < blk; ++k)
          ASSERT_TRUE(
              same_bits(recv[static_cast<std::size_t>(j) * blk + k], theirs[static_cast<std::size_t>(me) * blk + k]));
      }
    }
    {  // all_to_allv: rank i sends (i + 2j) % 5 + j elements to rank j
      auto cnt = [](int i, int j) { return static_cast<std::size_t>((i + 2 * j) % 5 + j); };
      std::vector<std::size_t> sc, rc;
      for (int j = 0; j < n; ++j) {
        sc.push_back(cnt(me, j));
        rc.push_back(cnt(j, me));
      }
      auto plan = CollectivePlan::all_to_allv(dtype_of<T>(), sc, rc);
      auto send = rank_data<T>(f.mesh.rank(), plan.send_elems(n, me), 6);
      std::vector<T> recv(plan.recv_elems(n, me));
      c.all_to_allv(send.data(), recv.data(), plan).wait();
      for (int j = 0; j < n; ++j) {
        std::size_t off_at_j = 0;  // where j's block for me starts in j's send buffer
        for (int q = 0; q < me; ++q) off_at_j += cnt(j, q);
        std::size_t total_j = 0;
        for (int q = 0; q < n; ++q) total_j += cnt(j, q);
        auto theirs = rank_data<T>(mem[static_cast<std::size_t>(j)], total_j, 6);
        for (std::size_t k = 0; k < cnt(j, me); ++k)
          ASSERT_TRUE(same_bits(recv[plan.recv_displs[static_cast<std::size_t>(j)] + k], theirs[off_at_j + k]));
      }
    }
    {  // all_to_allw: rank i's send buffer is [n, 4, 6]; it sends peer p the 4 x 3 columns
       // p % 3 .. p % 3 + 2 of block p, and peer p stores them transposed ([3, 4], element
       // (a, b) at b * 4 + a) in block i of its receive buffer; nothing to peer (i + 1) % n
      const auto un = static_cast<std::size_t>(n);
      auto box = [](std::int64_t offset, std::int64_t e0, std::int64_t e1, std::int64_t s0, std::int64_t s1) {
        kernels::StridedBox b;
        b.ndim = 2;
        b.offset = offset;
        b.extent[0] = e0;
        b.extent[1] = e1;
        b.stride[0] = s0;
        b.stride[1] = s1;
        return b;
      };
      std::vector<kernels::StridedBox> sb, rb;
      for (int p = 0; p < n; ++p) {
        const bool none_to = p == (me + 1) % n, none_from = me == (p + 1) % n;
        sb.push_back(box(p * 24 + p % 3, 4, none_to ? 0 : 3, 6, 1));
        rb.push_back(box(p * 12, 4, none_from ? 0 : 3, 1, 4));
      }
      auto plan = CollectivePlan::all_to_allw(dtype_of<T>(), sb, rb);
      EXPECT_LE(plan.send_elems(n, me), 24 * un);
      auto send = rank_data<T>(f.mesh.rank(), 24 * un, 7);
      std::vector<T> recv(12 * un, T(0));
      const std::vector<T> before = recv;
      c.all_to_allv(send.data(), recv.data(), plan).wait();
      for (int j = 0; j < n; ++j) {
        auto theirs = rank_data<T>(mem[static_cast<std::size_t>(j)], 24 * un, 7);
        const bool none = me == (j + 1) % n;
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 3; ++b) {
            const auto at = static_cast<std::size_t>(j * 12 + b * 4 + a);
            const T want = none ? before[at] : theirs[static_cast<std::size_t>(me * 24 + a * 6 + me % 3 + b)];
            ASSERT_TRUE(same_bits(recv[at], want)) << "from rank " << j << " element (" << a << ", " << b << ")";
          }
      }
    }
  }
}

// The operation layer: one plan bound to persistent buffers, run step after step with new
// contents; each run's result is correct and a Request polls to completion.
TEST(Comm, PersistentCollectiveRunsManySteps) {
  Fixture f;
  Communicator& c = f.comms.world();
  const int n = c.size();
  const std::size_t count = 4096;
  std::vector<float> send(count), recv(count);
  Collective op(c, CollectivePlan::all_reduce(DType::F32, count, ReduceOp::Mean), send.data(), recv.data());
  for (int step = 0; step < 5; ++step) {
    for (std::size_t k = 0; k < count; ++k)
      send[k] = static_cast<float>(c.rank() * 16 + step + static_cast<int>(k % 8));
    Request r = op.start();
    while (!r.test()) {
    }
    for (std::size_t k = 0; k < count; ++k) {
      // mean over ranks of rank*16 + step + k%8 = 8(n-1) + step + k%8, exact in f32
      ASSERT_EQ(recv[k], static_cast<float>(8 * (n - 1) + step + static_cast<int>(k % 8))) << "step " << step;
    }
  }
}

// bf16/f16 all-reduce on random data: the f32-accumulated sum rounded once (within the
// f32 reassociation error), and bitwise the same on every rank.
TEST(Comm, SixteenBitAllReduceIsIdenticalOnEveryRank) {
  Fixture f;
  Communicator& c = f.comms.world();
  const int n = c.size();
  const std::size_t count = 10007;
  for (DType t : {DType::BF16, DType::F16, DType::F32}) {
    std::vector<std::vector<float>> vals;
    for (int r = 0; r < n; ++r) {
      std::mt19937 g(77 + static_cast<unsigned>(r));
      std::vector<float> v(count);
      for (auto& x : v) {
        float y = std::uniform_real_distribution<float>(-3.f, 3.f)(g);
        x = t == DType::BF16 ? static_cast<float>(bf16(y)) : t == DType::F16 ? static_cast<float>(f16(y)) : y;
      }
      vals.push_back(v);
    }
    std::vector<std::uint16_t> in16(count), out16(count);
    std::vector<float> in32 = vals[static_cast<std::size_t>(c.rank())], out32(count);
    for (std::size_t k = 0; k < count; ++k) in16[k] = t == DType::BF16 ? bf16(in32[k]).bits : f16(in32[k]).bits;
    const void* in = t == DType::F32 ? static_cast<const void*>(in32.data()) : in16.data();
    void* out = t == DType::F32 ? static_cast<void*>(out32.data()) : out16.data();
    c.all_reduce(in, out, count, t, ReduceOp::Sum).wait();
    for (std::size_t k = 0; k < count; ++k) {
      double s = 0, a = 0;
      for (auto& v : vals) {
        s += v[k];
        a += std::fabs(v[k]);
      }
      const double got = t == DType::F32    ? out32[k]
                         : t == DType::BF16 ? static_cast<float>(bf16::from_bits(out16[k]))
                                            : static_cast<float>(f16::from_bits(out16[k]));
      const double ulp16 = t == DType::BF16 ? std::ldexp(1.0, -7) : std::ldexp(1.0, -10);
      const double half_ulp = t == DType::F32 ? 0.0 : 0.5 * ulp16 * std::max(std::fabs(s), 6.1e-5) * 2;
      ASSERT_LE(std::fabs(got - s), half_ulp + n * 1.2e-7 * a) << dtype_name(t) << " k " << k;
    }
    // every rank holds the same bits
    const std::size_t bytes = count * dtype_size(t);
    std::vector<char> all(bytes * static_cast<std::size_t>(n));
    MPI_Allgather(out, static_cast<int>(bytes), MPI_CHAR, all.data(), static_cast<int>(bytes), MPI_CHAR,
                  MPI_COMM_WORLD);
    for (int r = 1; r < n; ++r)
      ASSERT_EQ(std::memcmp(all.data(), all.data() + static_cast<std::size_t>(r) * bytes, bytes), 0)
          << dtype_name(t) << ": rank " << r << " differs from rank 0";
  }
}

template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Comm, ErrorsNameTheValue) {
  Fixture f;
  Communicator& c = f.comms.world();
  const int n = c.size();
  std::vector<std::int32_t> a(8), b(8 * static_cast<std::size_t>(n));
  EXPECT_NE(message_of([&] { c.all_reduce(a.data(), b.data(), 8, DType::I32, ReduceOp::Mean); }).find("i32"),
            std::string::npos);
  EXPECT_NE(
      message_of([&] { c.broadcast(a.data(), b.data(), 8, DType::I32, n + 3); }).find("root " + std::to_string(n + 3)),
      std::string::npos);
  EXPECT_NE(message_of([&] { c.send(a.data(), 8, DType::I32, -1); }).find("peer -1"), std::string::npos);
  auto bad = CollectivePlan::all_to_allv(DType::I32, std::vector<std::size_t>(static_cast<std::size_t>(n) + 1, 1),
                                         std::vector<std::size_t>(static_cast<std::size_t>(n) + 1, 1));
  const std::string m = message_of([&] { c.all_to_allv(a.data(), b.data(), bad); });
  EXPECT_NE(m.find("lengths " + std::to_string(n + 1)), std::string::npos) << m;
  {  // all_to_allw: one box too many; a negative stride
    kernels::StridedBox one;
    one.ndim = 1;
    one.extent[0] = 1;
    one.stride[0] = 1;
    std::vector<kernels::StridedBox> boxes(static_cast<std::size_t>(n) + 1, one);
    const std::string w =
        message_of([&] { c.all_to_allv(a.data(), b.data(), CollectivePlan::all_to_allw(DType::I32, boxes, boxes)); });
    EXPECT_NE(w.find("lengths " + std::to_string(n + 1)), std::string::npos) << w;
    boxes.pop_back();
    boxes[0].stride[0] = -1;
    const std::string neg =
        message_of([&] { c.all_to_allv(a.data(), b.data(), CollectivePlan::all_to_allw(DType::I32, boxes, boxes)); });
    EXPECT_NE(neg.find("negative"), std::string::npos) << neg;
  }
  EXPECT_NE(message_of([&] { f.comms.axis("tensor"); }).find("'tensor'"), std::string::npos);
  EXPECT_NE(message_of([&] { f.comms.group({"data", "expert"}); }).find("'expert'"), std::string::npos);
  EXPECT_THROW(parse_backend("gloo"), InputError);
  EXPECT_THROW(c.all_reduce(a.data(), b.data(), 8, DType::I64, ReduceOp::Mean), InputError);
#ifndef SHARDFLOW_HAVE_NCCL
  EXPECT_NE(message_of([&] { make_communicator(Backend::Nccl, MPI_COMM_WORLD, "w"); }).find("without NCCL"),
            std::string::npos);
#endif
  EXPECT_TRUE(test::all_ranks(true));
}

// A persistent operation cannot be restarted while its previous run is pending.
TEST(Comm, RestartWhilePendingThrows) {
  Fixture f;
  Communicator& c = f.comms.world();
  if (c.size() < 2) GTEST_SKIP() << "needs two ranks";
  std::vector<std::int64_t> buf(16, 0), src(16);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::int64_t>(i * i);
  if (c.rank() == 0) {
    Collective op(c, CollectivePlan::recv(DType::I64, 16, 1, 3), nullptr, buf.data());
    Request r = op.start();
    EXPECT_FALSE(r.test());  // rank 1 sends only after the barrier
    try {
      op.start();
      ADD_FAILURE() << "restart while pending did not throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("pending"), std::string::npos) << e.what();
    }
    c.barrier();
    r.wait();
    EXPECT_EQ(buf, src);
  } else {
    c.barrier();
    if (c.rank() == 1) c.send(src.data(), 16, DType::I64, 0, 3).wait();
  }
}

// Peer copies (Communicator::copy_peer): each rank writes a pattern into its right
// neighbour's buffer through runs that differ on the two sides (4 local runs, 3 remote), then
// reads its left neighbour's buffer back through other runs, each checked; a copy of more
// local than remote bytes and one to a rank out of range are refused naming the values.
// SHARDFLOW_PEER_COPY=0 while a communicator is made turns peer copies off for its group.
TEST(Comm, PeerCopiesMoveRunsBetweenRanks) {
  const int n = test::world_size();
  auto comm = make_communicator(Backend::Mpi, MPI_COMM_WORLD, "world");
  if (n == 1 || !comm->peer_copies()) {
    const char* off = std::getenv("SHARDFLOW_PEER_COPY");
    if (!(off && std::string(off) == "0")) {
      EXPECT_EQ(n, 1) << "ranks of one node that cannot copy each other's memory";
    }
    return;
  }
  const int me = comm->rank(), right = (me + 1) % n, left = (me + n - 1) % n;
  std::vector<std::uint8_t> inbox(64, 0), mine(64);
  for (int i = 0; i < 64; ++i) mine[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(me * 64 + i);
  // everyone's inbox address
  std::vector<std::uint64_t> inboxes(static_cast<std::size_t>(n));
  const auto at = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(inbox.data()));
  MPI_Allgather(&at, 1, MPI_UINT64_T, inboxes.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
  using Run = Communicator::PeerRun;
  const auto addr = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p); };
  const std::uintptr_t theirs = static_cast<std::uintptr_t>(inboxes[static_cast<std::size_t>(right)]);
  // mine[0..10) [20..30) [40..45) [50..60) -> their inbox [5..15) [30..45) [48..58)
  const Run local[4] = {{addr(&mine[0]), 10}, {addr(&mine[20]), 10}, {addr(&mine[40]), 5}, {addr(&mine[50]), 10}};
  const Run remote[3] = {{theirs + 5, 10}, {theirs + 30, 15}, {theirs + 48, 10}};
  comm->copy_peer(right, true, local, 4, remote, 3);
  MPI_Barrier(MPI_COMM_WORLD);
  // the inbox a rank holds after rank `src` wrote it as above
  const auto inbox_from = [](int src) {
    std::vector<std::uint8_t> v(64, 0);
    const auto put = [&](int to, int from, int len) {
      for (int i = 0; i < len; ++i)
        v[static_cast<std::size_t>(to + i)] = static_cast<std::uint8_t>(src * 64 + from + i);
    };
    put(5, 0, 10);
    put(30, 20, 10);
    put(40, 40, 5);
    put(48, 50, 10);
    return v;
  };
  EXPECT_EQ(inbox, inbox_from(left));
  // read the left neighbour's inbox (written by its own left neighbour) in two local runs
  std::vector<std::uint8_t> back(64, 0);
  const std::uintptr_t lefts = static_cast<std::uintptr_t>(inboxes[static_cast<std::size_t>(left)]);
  const Run into[2] = {{addr(&back[0]), 32}, {addr(&back[40]), 24}};
  const Run out[1] = {{lefts, 56}};
  comm->copy_peer(left, false, into, 2, out, 1);
  const std::vector<std::uint8_t> lefts_inbox = inbox_from((left + n - 1) % n);
  std::vector<std::uint8_t> want_back(64, 0);
  std::copy(lefts_inbox.begin(), lefts_inbox.begin() + 32, want_back.begin());
  std::copy(lefts_inbox.begin() + 32, lefts_inbox.begin() + 56, want_back.begin() + 40);
  EXPECT_EQ(back, want_back);
  MPI_Barrier(MPI_COMM_WORLD);
  // refusals
  const Run more[1] = {{addr(&mine[0]), 11}};
  const Run fewer[1] = {{theirs, 10}};
  try {
    comm->copy_peer(right, true, more, 1, fewer, 1);
    ADD_FAILURE() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("11 local bytes but 10 remote"), std::string::npos) << e.what();
  }
  try {
    comm->copy_peer(n, true, more, 1, fewer, 1);
    ADD_FAILURE() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(n)), std::string::npos) << e.what();
  }
  ::setenv("SHARDFLOW_PEER_COPY", "0", 1);  // (unset before: else this test returned above)
  auto off = make_communicator(Backend::Mpi, MPI_COMM_WORLD, "off");
  ::unsetenv("SHARDFLOW_PEER_COPY");
  EXPECT_FALSE(off->peer_copies());
}

TEST(Comm, DefaultRequestIsComplete) {
  Request r;
  EXPECT_TRUE(r.test());
  EXPECT_FALSE(r.pending());
  r.wait();
}

}  // namespace
