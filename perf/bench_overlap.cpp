// bench_overlap: how much of a training step's communication the executor hides behind
// compute. Builds the trainer's step graph for a deck (any mesh, any zero stage) and runs
// the same graph in four modes, each for --steps steps after --warmup steps, alternating
// modes round by round so that load from other processes hits all alike:
//
//   full      the step as `shardflow train` runs it (non-blocking comm, overlapped)
//   blocking  every collective is waited for as soon as it is issued (no overlap)
//   compute   the compute tasks alone (collectives replaced by no-ops)
//   comm      the collectives alone, same order, sizes and buffers (compute tasks no-ops)
//
// Per step the slowest rank's time counts; per mode the median step (wall, and the process
// CPU time of the busiest rank, which load disturbs far less). Reported:
//   exposed comm  = full - compute           (what communication still costs the step)
//   hidden        = 1 - (full - compute) / comm   (fraction of the comm time overlapped)
//   full / (compute + comm), and blocking / full.
//
// On one core per rank MPI progresses a non-blocking collective only inside MPI calls (the
// executor's polls between compute tasks), so the data movement itself cannot run while a
// compute task runs; what overlaps is the peer's lateness (waiting) and the wire time.
//
// Checks its own results (#wrong): the full mode's loss is finite and below the first
// step's, every mode runs every task of the graph, and a full step after the other modes
// (functions restored) again gives a finite loss.
//
// Run: mpiexec -n 2 build/perf/bench_overlap inputs/bench.toml --set mesh.data=2
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "comm/control.hpp"
#include "comm/comm_set.hpp"
#include "config/deck.hpp"
#include "core/blas.hpp"
#include "core/error.hpp"
#include "comm/mesh.hpp"
#include "train/trainer.hpp"

namespace {

using namespace shardflow;

enum Mode { Full, Blocking, ComputeOnly, CommOnly, NumModes };
const char* mode_name[] = {"full", "blocking", "compute", "comm"};

/// CPU time of this process (MPI's helper threads included), which load disturbs far less
/// than wall time; per step the largest rank's counts.
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

struct Options {
  std::string deck;
  std::vector<std::string> overrides;
  int steps = 10, warmup = 2;
};

int run(const Options& o) {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  Deck deck = load_deck(o.deck, o.overrides);
  deck.train.steps = 1 << 30;
  check_world_size(deck, world);
  Mesh mesh(deck.mesh.to_mesh_shape());
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  train::Trainer trainer(deck, mesh, comms);
  graph::TaskGraph& g = trainer.graph();

  // the original functions, and the three replacements
  std::vector<graph::ComputeFn> compute(g.size());
  std::vector<graph::CommStartFn> start(g.size());
  int64_t ncomm = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    auto& n = g.node(static_cast<int>(i));
    compute[i] = n.compute;
    start[i] = n.start;
    ncomm += n.kind == graph::TaskKind::Comm ? 1 : 0;
  }
  auto set_mode = [&](Mode m) {
    for (size_t i = 0; i < g.size(); ++i) {
      auto& n = g.node(static_cast<int>(i));
      if (n.kind == graph::TaskKind::Compute) {
        n.compute = m == CommOnly ? graph::ComputeFn([] {}) : compute[i];
      } else if (m == Blocking) {
        auto s = start[i];
        n.start = [s] {
          auto poll = s();
          for (int spins = 0; !poll();)  // the executor's wait: spin, then yield the core
            if (++spins > 64) std::this_thread::yield();
          return std::function<bool()>([] { return true; });
        };
      } else if (m == ComputeOnly) {
        n.start = [] { return std::function<bool()>([] { return true; }); };
      } else {
        n.start = start[i];
      }
    }
  };

  int64_t wrong = 0;
  std::vector<std::vector<double>> times(NumModes), cpu_times(NumModes);
  double first_loss = 0, last_loss = 0;
  auto one_step = [&](Mode m, bool record) {
    const double c0 = process_cpu_seconds();
    auto st = trainer.train_step();
    double t[2] = {st.step_time_s, process_cpu_seconds() - c0}, tmax[2] = {0, 0};
    MPI_Allreduce(t, tmax, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (record) {
      times[m].push_back(tmax[0]);
      cpu_times[m].push_back(tmax[1]);
    }
    if (m == Full) {
      if (first_loss == 0) first_loss = st.loss;
      last_loss = st.loss;
      if (!std::isfinite(st.loss)) ++wrong;
    }
  };
  const auto totals0 = trainer.executor().totals();
  int64_t runs = 0;
  for (int w = 0; w < o.warmup; ++w)
    for (int m = 0; m < NumModes; ++m) {
      set_mode(static_cast<Mode>(m));
      one_step(static_cast<Mode>(m), false);
      ++runs;
    }
  for (int s = 0; s < o.steps; ++s)
    for (int m = 0; m < NumModes; ++m) {
      set_mode(static_cast<Mode>(m));
      one_step(static_cast<Mode>(m), true);
      ++runs;
    }
  set_mode(Full);
  auto fin = trainer.train_step();
  ++runs;
  if (!std::isfinite(fin.loss)) ++wrong;
  if (!(last_loss < first_loss)) ++wrong;
  const auto totals1 = trainer.executor().totals();
  if (totals1.tasks - totals0.tasks != runs * static_cast<int64_t>(g.size())) ++wrong;
  if (totals1.comm_tasks - totals0.comm_tasks != runs * ncomm) ++wrong;

  int64_t wrong_all = 0;
  MPI_Allreduce(&wrong, &wrong_all, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) {
    double med[NumModes];
    for (int m = 0; m < NumModes; ++m) med[m] = median(times[static_cast<size_t>(m)]);
    const double full = med[Full], comp = med[ComputeOnly], comm_t = med[CommOnly], blk = med[Blocking];
    std::printf("# bench_overlap: %s | mesh %s | %d ranks | zero_stage %d | %zu tasks (%lld comm) | median of %d steps\n",
                o.deck.c_str(), mesh.shape().to_string().c_str(), world, deck.strategy.zero_stage, g.size(),
                static_cast<long long>(ncomm), o.steps);
    for (int m = 0; m < NumModes; ++m)
      std::printf("  %-9s step %8.2f ms   (process CPU time %8.2f ms)\n", mode_name[m], 1e3 * med[m],
                  1e3 * median(cpu_times[static_cast<size_t>(m)]));
    std::printf("  exposed comm (full - compute)      %8.2f ms\n", 1e3 * (full - comp));
    std::printf("  hidden fraction of comm            %8.3f\n", comm_t > 0 ? 1.0 - (full - comp) / comm_t : 0.0);
    std::printf("  full / (compute + comm)            %8.3f\n", full / (comp + comm_t));
    std::printf("  blocking / full                    %8.3f\n", blk / full);
    std::printf("  loss first %.4f last %.4f after %.4f\n", first_loss, last_loss, fin.loss);
    std::printf("# #wrong %lld\n", static_cast<long long>(wrong_all));
  }
  return wrong_all == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  shardflow::ensure_best_blas_kernel(argc, argv);  // may re-execute: first thing
  shardflow::comm::mpi_init(argc, argv);
  int rc = 0;
  {
    Kokkos::ScopeGuard kokkos(argc, argv);
    Options o;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--set") {
        while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) o.overrides.push_back(argv[++i]);
      } else if (a == "--steps" && i + 1 < argc) {
        o.steps = std::atoi(argv[++i]);
      } else if (a == "--warmup" && i + 1 < argc) {
        o.warmup = std::atoi(argv[++i]);
      } else if (a == "--help") {
        std::printf("bench_overlap DECK [--set section.key=value ...] [--steps N (10)] [--warmup W (2)]\n");
        MPI_Finalize();
        return 0;
      } else if (o.deck.empty() && a.rfind("--", 0) != 0) {
        o.deck = a;
      } else {
        std::fprintf(stderr, "bench_overlap: unknown argument %s (try --help)\n", a.c_str());
        rc = 2;
      }
    }
    if (rc == 0 && (o.deck.empty() || o.steps < 1 || o.warmup < 1)) {
      std::fprintf(stderr, "bench_overlap: needs a deck, --steps >= 1 and --warmup >= 1\n");
      rc = 2;
    }
    if (rc == 0) {
      try {
        rc = run(o);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_overlap: %s\n", e.what());
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
    }
  }
  MPI_Finalize();
  return rc;
}
