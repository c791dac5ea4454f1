#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.hpp"
#include "graph/executor.hpp"
#include "graph/observer.hpp"
#include "graph/task_graph.hpp"

using namespace shardflow;
using namespace shardflow::graph;

// Random DAGs: every edge is respected, every task runs exactly once, and two runs give
// the same order (determinism).
TEST(TaskGraph, RandomDagsRunInDependencyOrderDeterministically) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 60);
    TaskGraph g;
    std::vector<int> order;
    std::vector<Task> tasks;
    for (int i = 0; i < n; ++i) tasks.push_back(g.emplace([&order, i] { order.push_back(i); }).name("t" + std::to_string(i)));
    std::vector<std::pair<int, int>> edges;
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j)
        if (rng() % 6 == 0) {
          // random direction consistent with a hidden permutation keeps it acyclic
          tasks[static_cast<size_t>(i)].precede(tasks[static_cast<size_t>(j)]);
          edges.emplace_back(i, j);
        }
    g.validate();
    Executor ex;
    ex.run(g);
    ASSERT_EQ(static_cast<int>(order.size()), n);
    std::vector<int> pos(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) pos[static_cast<size_t>(order[static_cast<size_t>(i)])] = i;
    for (auto [a, b] : edges) EXPECT_LT(pos[static_cast<size_t>(a)], pos[static_cast<size_t>(b)]);
    auto first = order;
    order.clear();
    ex.run(g);
    EXPECT_EQ(order, first);
  }
}

TEST(TaskGraph, CycleIsReportedByName) {
  TaskGraph g("cyclic");
  auto a = g.emplace([] {}).name("alpha");
  auto b = g.emplace([] {}).name("beta");
  a.precede(b);
  b.precede(a);
  try {
    g.validate();
    FAIL() << "no error for a cycle";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cycle through task"), std::string::npos) << e.what();
  }
}

TEST(TaskGraph, SucceedIsTheMirrorOfPrecede) {
  TaskGraph g;
  std::vector<std::string> log;
  auto a = g.emplace([&] { log.push_back("a"); }).name("a");
  auto b = g.emplace([&] { log.push_back("b"); }).name("b");
  auto c = g.emplace([&] { log.push_back("c"); }).name("c");
  a.succeed(c, b);  // c and b before a
  Executor().run(g);
  EXPECT_EQ(log, (std::vector<std::string>{"b", "c", "a"}));
}

// Comm tasks of one communicator are issued in emplace order even when a later one
// becomes ready first.
TEST(TaskGraph, CommTasksIssueInCommunicatorSequence) {
  TaskGraph g;
  std::vector<std::string> issued;
  int polls_left = 3;
  auto slow = g.emplace([] {}).name("slow-producer");
  auto c0 = g.emplace_comm({"data", "all_reduce", "x", 4, "f32"}, [&] {
    issued.push_back("x");
    return std::function<bool()>([&] { return --polls_left <= 0; });
  });
  auto c1 = g.emplace_comm({"data", "all_reduce", "y", 4, "f32"}, [&] {
    issued.push_back("y");
    return std::function<bool()>([] { return true; });
  });
  slow.precede(c0);  // c1 is ready at once, c0 only after `slow`
  (void)c1;
  Executor ex;
  auto st = ex.run(g);
  EXPECT_EQ(issued, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(st.comm_tasks, 2);
  EXPECT_EQ(st.tasks, 3);
}

TEST(TaskGraph, DeadlockIsAnErrorNotAHang) {
  TaskGraph g("dead");
  // comm #1 must run before comm #0 by dependency: impossible under sequence order.
  auto c0 = g.emplace_comm({"data", "all_reduce", "a", 1, "f32"}, [] { return std::function<bool()>([] { return true; }); });
  auto c1 = g.emplace_comm({"data", "all_reduce", "b", 1, "f32"}, [] { return std::function<bool()>([] { return true; }); });
  c1.precede(c0);
  EXPECT_THROW(Executor().run(g), Error);
}

TEST(TaskGraph, DotAndChromeTrace) {
  TaskGraph g("step");
  auto a = g.emplace([] {}).name("fwd.layer0");
  auto c = g.emplace_comm({"data", "all_reduce", "grad", 8, "f32"},
                          [] { return std::function<bool()>([] { return true; }); });
  a.precede(c);
  std::string dot = g.dump();
  EXPECT_NE(dot.find("digraph \"step\""), std::string::npos);
  EXPECT_NE(dot.find("fwd.layer0"), std::string::npos);
  EXPECT_NE(dot.find("t0 -> t1"), std::string::npos);
  EXPECT_NE(dot.find("all_reduce on data #0"), std::string::npos);

  ChromeTraceObserver obs(3);
  Executor ex;
  ex.add_observer(&obs);
  ex.run(g);
  const std::string path = ::testing::TempDir() + "/trace_test.json";
  obs.write(path);
  std::ifstream is(path);
  auto j = nlohmann::json::parse(is);
  int complete_events = 0;
  for (const auto& e : j["traceEvents"])
    if (e["ph"] == "X") {
      ++complete_events;
      EXPECT_EQ(e["pid"], 3);
      EXPECT_GE(e["dur"].get<double>(), 0.0);
    }
  EXPECT_EQ(complete_events, 2);
  std::remove(path.c_str());
}
