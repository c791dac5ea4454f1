// comm::Control, the control-plane messages (errors, strings, counters): reductions, string
// broadcast / gather / all-gather in rank order, agreement on the lowest failing rank's
// error on every rank, and a private duplicate whose messages do not mix with the caller's.
#include <gtest/gtest.h>
#include <mpi.h>

#include "comm/control.hpp"
#include "core/error.hpp"

using shardflow::InputError;
using shardflow::comm::Control;

TEST(Control, ReductionsAndStrings) {
  const Control c = Control::world();
  const int r = c.rank(), n = c.size();
  EXPECT_EQ(c.min(r + 10), 10);
  EXPECT_EQ(c.max(r), n - 1);
  EXPECT_EQ(c.max(static_cast<std::int64_t>(r) << 40), static_cast<std::int64_t>(n - 1) << 40);
  EXPECT_DOUBLE_EQ(c.sum(0.5), 0.5 * n);
  EXPECT_DOUBLE_EQ(c.min(1.0 + r), 1.0);
  std::int64_t v[2] = {1, r};
  c.sum(v, 2);
  EXPECT_EQ(v[0], n);
  EXPECT_EQ(v[1], n * (n - 1) / 2);
  double d[2] = {-1.0 * r, 1.0 * r};
  c.max(d, 2);
  EXPECT_DOUBLE_EQ(d[0], 0.0);
  EXPECT_DOUBLE_EQ(d[1], n - 1.0);
  EXPECT_EQ(c.broadcast(r == n - 1 ? std::string(1000, 'x') : "", n - 1), std::string(1000, 'x'));
  const auto g = c.gather("rank" + std::to_string(r), 0);
  const auto a = c.all_gather(std::string(static_cast<size_t>(r), 'a'));
  const auto gi = c.gather(static_cast<std::int64_t>(r * r), 0);
  ASSERT_EQ(a.size(), static_cast<size_t>(n));
  for (int k = 0; k < n; ++k) EXPECT_EQ(a[static_cast<size_t>(k)], std::string(static_cast<size_t>(k), 'a'));
  if (r == 0) {
    ASSERT_EQ(g.size(), static_cast<size_t>(n));
    ASSERT_EQ(gi.size(), static_cast<size_t>(n));
    for (int k = 0; k < n; ++k) {
      EXPECT_EQ(g[static_cast<size_t>(k)], "rank" + std::to_string(k));
      EXPECT_EQ(gi[static_cast<size_t>(k)], k * k);
    }
  } else {
    EXPECT_TRUE(g.empty());
    EXPECT_TRUE(gi.empty());
  }
}

TEST(Control, AgreeThrowsTheLowestFailingRanksErrorEverywhere) {
  const Control c = Control::world();
  EXPECT_NO_THROW(c.agree(""));
  const int n = c.size();
  // the last rank and (when there are several) rank 1 fail: every rank throws rank 1's message
  const int bad1 = n > 1 ? 1 : 0;
  std::string mine;
  if (c.rank() == bad1) mine = "bad value on rank " + std::to_string(c.rank());
  if (c.rank() == n - 1 && n - 1 != bad1) mine = "another error";
  try {
    c.agree(mine);
    FAIL() << "agree did not throw";
  } catch (const InputError& e) {
    std::string want = "bad value on rank " + std::to_string(bad1);
    if (n > 1) want += " (rank " + std::to_string(bad1) + ")";
    EXPECT_EQ(std::string(e.what()), want);
  }
}

TEST(Control, DuplicateIsPrivate) {
  const Control c = Control::world();
  Control dup = Control::duplicate(c.handle());
  EXPECT_NE(dup.handle(), c.handle());
  EXPECT_EQ(dup.rank(), c.rank());
  // a message on the caller's communicator with the gather's tag does not reach the duplicate's gather
  int payload = 42;
  MPI_Request req = MPI_REQUEST_NULL;
  if (c.size() > 1 && c.rank() == 1) MPI_Isend(&payload, 1, MPI_INT, 0, 7301, c.handle(), &req);
  const auto g = dup.gather(std::string("d") + std::to_string(dup.rank()), 0);
  if (dup.rank() == 0) {
    for (int k = 0; k < dup.size(); ++k) EXPECT_EQ(g[static_cast<size_t>(k)], "d" + std::to_string(k));
  }
  if (c.size() > 1 && c.rank() == 0) {
    int got = 0;
    MPI_Recv(&got, 1, MPI_INT, 1, 7301, c.handle(), MPI_STATUS_IGNORE);
    EXPECT_EQ(got, 42);
  }
  if (req != MPI_REQUEST_NULL) MPI_Wait(&req, MPI_STATUS_IGNORE);
  Control moved = std::move(dup);
  EXPECT_EQ(moved.rank(), c.rank());
}
