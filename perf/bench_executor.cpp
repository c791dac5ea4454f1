// bench_executor: scheduling overhead per (nearly) empty task of graph::Executor against
// oneTBB's flow_graph on the same DAG, in the same run.
//
// Each timed sample runs a graph back to back until about 2000 tasks ran. Each task's body
// only stamps its position in the run order (`order[i] = ++tick (atomic)`), the
// same body for both; the cost per task is run time / tasks. Both graphs are built once
// and run many times (the way the trainer uses them); runs alternate between the two so
// that load from other processes hits both alike, and the median run counts. TBB runs
// in a task_arena of one thread (the executor runs on the calling thread, one per MPI
// rank), and, for information, in the default arena.
//
// Checks its own results (#wrong): every run of either must stamp every task exactly once
// and every edge u -> v must have order[u] < order[v].
//
// Shapes: chain (N tasks in a row), fan (1 -> W -> 1), layered (levels x width, each task
// after `deg` random tasks of the level above, fixed seed), step (the training step's
// shape: a chain of forward/backward tasks, each backward task followed by a side task,
// all side tasks joined by one task, then one more).
#include <tbb/flow_graph.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "graph/executor.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct Dag {
  std::string name;
  int n = 0;
  std::vector<std::pair<int, int>> edges;  // u before v
};

Dag chain(int n) {
  Dag d{"chain", n, {}};
  for (int i = 0; i + 1 < n; ++i) d.edges.emplace_back(i, i + 1);
  return d;
}

Dag fan(int w) {
  Dag d{"fan", w + 2, {}};
  for (int i = 1; i <= w; ++i) {
    d.edges.emplace_back(0, i);
    d.edges.emplace_back(i, w + 1);
  }
  return d;
}

Dag layered(int levels, int width, int deg, unsigned seed) {
  Dag d{"layered", levels * width, {}};
  std::mt19937 rng(seed);
  for (int l = 1; l < levels; ++l)
    for (int i = 0; i < width; ++i) {
      std::vector<int> prev(static_cast<size_t>(width));
      for (int k = 0; k < width; ++k) prev[static_cast<size_t>(k)] = (l - 1) * width + k;
      std::shuffle(prev.begin(), prev.end(), rng);
      for (int k = 0; k < std::min(deg, width); ++k) d.edges.emplace_back(prev[static_cast<size_t>(k)], l * width + i);
    }
  return d;
}

// Like the training step: begin, F forward tasks, B backward tasks in a chain; each
// backward task precedes a side task (a gradient sync); the side tasks and the chain's
// end join in a norm task, followed by an update task.
Dag step_shape(int fwd, int bwd) {
  Dag d{"step", 0, {}};
  int id = 0;
  const int begin = id++;
  int last = begin;
  for (int i = 0; i < fwd; ++i) {
    d.edges.emplace_back(last, id);
    last = id++;
  }
  std::vector<int> sides;
  for (int i = 0; i < bwd; ++i) {
    d.edges.emplace_back(last, id);
    last = id++;
    for (int k = 0; k < 3; ++k) {
      d.edges.emplace_back(last, id);
      sides.push_back(id++);
    }
  }
  const int norm = id++;
  d.edges.emplace_back(last, norm);
  for (int s : sides) d.edges.emplace_back(s, norm);
  const int update = id++;
  d.edges.emplace_back(norm, update);
  d.n = id;
  return d;
}

// The task body: stamps the task's position in the run order. The counter is atomic
// because the default-arena TBB run executes tasks on several threads at once.
struct Stamps {
  std::vector<int64_t> order;
  std::atomic<int64_t> tick{0};
  explicit Stamps(int n) : order(static_cast<size_t>(n), 0) {}
  void reset() {
    std::fill(order.begin(), order.end(), 0);
    tick.store(0);
  }
  // after `runs` runs since reset(): failures are a wrong task count, a task the last run
  // did not stamp, an edge whose ends were stamped out of order
  int64_t wrong(const Dag& d, int runs) const {
    int64_t w = tick.load() == int64_t{runs} * d.n ? 0 : 1;
    for (auto v : order) w += v <= int64_t{runs - 1} * d.n ? 1 : 0;
    for (auto& e : d.edges)
      if (order[static_cast<size_t>(e.first)] >= order[static_cast<size_t>(e.second)]) ++w;
    return w;
  }
};

struct ShardflowRunner {
  shardflow::graph::TaskGraph g{"bench"};
  shardflow::graph::Executor ex;
  ShardflowRunner(const Dag& d, Stamps& s) {
    std::vector<shardflow::graph::Task> t;
    t.reserve(static_cast<size_t>(d.n));
    for (int i = 0; i < d.n; ++i) {
      int64_t* slot = &s.order[static_cast<size_t>(i)];
      std::atomic<int64_t>* tick = &s.tick;
      t.push_back(g.emplace([slot, tick] { *slot = tick->fetch_add(1, std::memory_order_relaxed) + 1; }));
    }
    for (auto& e : d.edges) t[static_cast<size_t>(e.first)].precede(t[static_cast<size_t>(e.second)]);
    g.validate();
  }
  void run() { ex.run(g); }
};

struct TbbRunner {
  tbb::flow::graph g;
  std::vector<std::unique_ptr<tbb::flow::continue_node<tbb::flow::continue_msg>>> nodes;
  std::vector<int> roots;
  TbbRunner(const Dag& d, Stamps& s) {
    nodes.reserve(static_cast<size_t>(d.n));
    for (int i = 0; i < d.n; ++i) {
      int64_t* slot = &s.order[static_cast<size_t>(i)];
      std::atomic<int64_t>* tick = &s.tick;
      nodes.push_back(std::make_unique<tbb::flow::continue_node<tbb::flow::continue_msg>>(
          g, [slot, tick](const tbb::flow::continue_msg&) {
            *slot = tick->fetch_add(1, std::memory_order_relaxed) + 1;
          }));
    }
    std::vector<int> indeg(static_cast<size_t>(d.n), 0);
    for (auto& e : d.edges) {
      tbb::flow::make_edge(*nodes[static_cast<size_t>(e.first)], *nodes[static_cast<size_t>(e.second)]);
      ++indeg[static_cast<size_t>(e.second)];
    }
    for (int i = 0; i < d.n; ++i)
      if (indeg[static_cast<size_t>(i)] == 0) roots.push_back(i);
  }
  void run() {
    for (int r : roots) nodes[static_cast<size_t>(r)]->try_put(tbb::flow::continue_msg());
    g.wait_for_all();
  }
};

struct Sample {
  double wall_ns = 0, cpu_ns = 0;  // per task
};

// `runs` back-to-back runs of a graph of n tasks, timed together (small graphs would
// otherwise measure the clocks)
template <class F>
Sample time_run(F&& f, int n, int runs) {
  const double c0 = thread_cpu_seconds();
  const auto t0 = Clock::now();
  for (int r = 0; r < runs; ++r) f();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = thread_cpu_seconds() - c0;
  return {wall * 1e9 / n / runs, cpu * 1e9 / n / runs};
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

struct Options {
  int reps = 200;
  int scale = 1;  // multiplies the shapes' sizes
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--reps" || a == "--scale") && i + 1 < argc) {
      (a == "--reps" ? o.reps : o.scale) = std::atoi(argv[++i]);
    } else if (a == "--help") {
      std::printf("bench_executor [--reps N (200)] [--scale K (1): shape sizes x K]\n");
      return 0;
    } else {
      std::fprintf(stderr, "bench_executor: unknown option %s (try --help)\n", a.c_str());
      return 2;
    }
  }
  if (o.reps < 3 || o.scale < 1) {
    std::fprintf(stderr, "bench_executor: --reps must be >= 3 and --scale >= 1\n");
    return 2;
  }
  const int k = o.scale;
  std::vector<Dag> dags = {chain(2000 * k), fan(2000 * k), layered(50 * k, 40, 3, 7u), step_shape(6 * k, 6 * k)};

  tbb::task_arena one(1);
  std::printf("# bench_executor: ns per empty task, median of %d samples (alternating), wall and thread-CPU time\n",
              o.reps);
  std::printf("# %-8s %6s %6s | %9s %9s | %9s %9s | %9s | %11s %11s | %6s\n", "shape", "tasks", "edges", "sf wall",
              "sf cpu", "tbb1 wall", "tbb1 cpu", "tbbN wall", "sf/tbb1 wall", "sf/tbb1 cpu", "#wrong");
  int64_t wrong_total = 0;
  for (const auto& d : dags) {
    Stamps s(d.n);
    ShardflowRunner sf(d, s);
    // a flow::graph runs its tasks in the arena it was built in: build one in each
    std::unique_ptr<TbbRunner> tb1;
    one.execute([&] { tb1 = std::make_unique<TbbRunner>(d, s); });
    TbbRunner tbn(d, s);
    const int inner = std::max(1, 2000 / d.n);
    int64_t wrong = 0;
    std::vector<double> sw, sc, tw, tc, tn;
    auto sf_run = [&] { sf.run(); };
    auto tb_run1 = [&] { one.execute([&] { tb1->run(); }); };
    auto tb_runn = [&] { tbn.run(); };
    for (int w = 0; w < 3; ++w) {  // warm-up: first-touch, TBB worker start
      sf_run();
      tb_run1();
      tb_runn();
    }
    for (int r = 0; r < o.reps; ++r) {
      s.reset();
      auto a = time_run(sf_run, d.n, inner);
      wrong += s.wrong(d, inner);
      s.reset();
      auto b = time_run(tb_run1, d.n, inner);
      wrong += s.wrong(d, inner);
      sw.push_back(a.wall_ns);
      sc.push_back(a.cpu_ns);
      tw.push_back(b.wall_ns);
      tc.push_back(b.cpu_ns);
      if (r % 4 == 0) {
        s.reset();
        auto c = time_run(tb_runn, d.n, inner);
        wrong += s.wrong(d, inner);
        tn.push_back(c.wall_ns);
      }
    }
    one.execute([&] { tb1.reset(); });
    const double msw = median(sw), msc = median(sc), mtw = median(tw), mtc = median(tc), mtn = median(tn);
    std::printf("  %-8s %6d %6zu | %9.1f %9.1f | %9.1f %9.1f | %9.1f | %11.3f %11.3f | %6lld\n", d.name.c_str(), d.n,
                d.edges.size(), msw, msc, mtw, mtc, mtn, msw / mtw, msc / mtc, static_cast<long long>(wrong));
    wrong_total += wrong;
  }
  std::printf("# sf: shardflow graph::Executor; tbb1: oneTBB flow_graph in a 1-thread task_arena; tbbN: default arena "
              "(%d threads)\n",
              tbb::this_task_arena::max_concurrency());
  std::printf("# #wrong total: %lld\n", static_cast<long long>(wrong_total));
  return wrong_total == 0 ? 0 : 1;
}
