#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <thread>

#include "core/error.hpp"
#include "graph/executor.hpp"
#include "graph/verify.hpp"
#include "comm/mesh.hpp"
#include "support/test_util.hpp"

using namespace shardflow;
using namespace shardflow::graph;

namespace {
// A non-blocking MPI all-reduce as a comm task.
CommStartFn iallreduce(std::vector<double>& buf, MPI_Comm comm) {
  return [&buf, comm] {
    auto req = std::make_shared<MPI_Request>();
    MPI_Iallreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(buf.size()), MPI_DOUBLE, MPI_SUM, comm, req.get());
    return std::function<bool()>([req] {
      int done = 0;
      MPI_Test(req.get(), &done, MPI_STATUS_IGNORE);
      return done != 0;
    });
  };
}
}  // namespace

// Ranks make the two collectives ready in opposite orders (rank parity decides which
// producer is slow). Without the executor's sequence order MPI would pair the wrong
// buffers and the sums would be wrong.
TEST(Executor, CollectivesMatchAcrossRanksWhateverTheReadyOrder) {
  const int n = test::world_size(), me = test::world_rank();
  Mesh mesh(MeshShape({"data"}, {n}));
  for (int round = 0; round < 5; ++round) {
    std::vector<double> a(1000, 1.0 + me), b(10, 100.0 * (me + 1));
    TaskGraph g;
    auto pa = g.emplace([&] {
      if (me % 2 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    });
    auto pb = g.emplace([&] {
      if (me % 2 == 1) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    });
    auto ca = g.emplace_comm({"data", "all_reduce", "a", 1000, "f64"}, iallreduce(a, mesh.comm("data")));
    auto cb = g.emplace_comm({"data", "all_reduce", "b", 10, "f64"}, iallreduce(b, mesh.comm("data")));
    pa.precede(ca);
    pb.precede(cb);
    verify(g, mesh);
    Executor().run(g);
    double sa = 0, sb = 0;
    for (int r = 0; r < n; ++r) {
      sa += 1.0 + r;
      sb += 100.0 * (r + 1);
    }
    for (double v : a) ASSERT_EQ(v, sa);
    for (double v : b) ASSERT_EQ(v, sb);
  }
}

// Compute keeps running while a collective is in flight: the executor reports compute
// time and the comm task completes.
TEST(Executor, ComputeOverlapsInFlightCommunication) {
  const int n = test::world_size();
  Mesh mesh(MeshShape({"data"}, {n}));
  std::vector<double> buf(1 << 16, 1.0);
  TaskGraph g;
  auto c = g.emplace_comm({"data", "all_reduce", "buf", 1 << 16, "f64"}, iallreduce(buf, mesh.comm("data")));
  std::vector<Task> work;
  for (int i = 0; i < 4; ++i)
    work.push_back(g.emplace([] { std::this_thread::sleep_for(std::chrono::milliseconds(2)); }));
  auto end = g.emplace([] {});
  c.precede(end);
  for (auto& w : work) w.precede(end);
  auto st = Executor().run(g);
  EXPECT_GE(st.compute_s, 0.007);
  EXPECT_EQ(buf[0], static_cast<double>(n));
}

// The verify pass catches a deliberately mismatched graph on every rank, without a hang.
TEST(Verify, MismatchedCollectiveFailsOnEveryRank) {
  const int n = test::world_size(), me = test::world_rank();
  Mesh mesh(MeshShape({"data"}, {n}));
  TaskGraph g;
  auto noop = [] { return std::function<bool()>([] { return true; }); };
  g.emplace_comm({"data", "all_reduce", "layers.0.grad", 64, "f32"}, noop);
  // The last rank (only when n > 1) issues a different tensor second.
  const bool odd_one = n > 1 && me == n - 1;
  g.emplace_comm({"data", "all_gather", odd_one ? "layers.2.weight" : "layers.1.weight", 32, "f32"}, noop);
  std::string msg;
  try {
    verify(g, mesh);
  } catch (const Error& e) {
    msg = e.what();
  }
  if (n == 1) {
    EXPECT_TRUE(msg.empty()) << msg;
  } else {
    EXPECT_NE(msg.find("collective #1 on communicator 'data' differs"), std::string::npos) << msg;
    EXPECT_NE(msg.find("layers.2.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank " + std::to_string(n - 1)), std::string::npos) << msg;
  }
  EXPECT_TRUE(test::all_ranks(n == 1 ? msg.empty() : !msg.empty()));
}

TEST(Verify, MissingCollectiveAndUnmatchedSendAreCaught) {
  const int n = test::world_size(), me = test::world_rank();
  if (n < 2) GTEST_SKIP() << "needs 2 ranks";
  Mesh mesh(MeshShape({"pipeline"}, {n}));
  auto noop = [] { return std::function<bool()>([] { return true; }); };
  {
    TaskGraph g;
    if (me != 0) g.emplace_comm({"pipeline", "broadcast", "x", 3, "f32"}, noop);
    EXPECT_THROW(verify(g, mesh), Error);
  }
  {
    TaskGraph g;
    CollectiveDesc send{"pipeline", "send", "act.0", 128, "f32", 1};
    CollectiveDesc recv{"pipeline", "recv", "act.0", me == 1 ? 64 : 128, "f32", 0};
    if (me == 0) g.emplace_comm(send, noop);
    if (me == 1) g.emplace_comm(recv, noop);
    std::string msg;
    try {
      verify(g, mesh);
    } catch (const Error& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find("from rank 0 to rank 1"), std::string::npos) << msg;
  }
  {
    TaskGraph g;  // a matching pair passes
    if (me == 0) g.emplace_comm({"pipeline", "send", "act.0", 128, "f32", 1}, noop);
    if (me == 1) g.emplace_comm({"pipeline", "recv", "act.0", 128, "f32", 0}, noop);
    EXPECT_NO_THROW(verify(g, mesh));
  }
}
