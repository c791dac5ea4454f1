// bench_sim_warm: `shardflow simulate`'s own work (the deck's layout plan, compiling the
// stages, replaying them) timed inside one process, called again and again, as
// perf/bench_calculon.py times Calculon (its compile and run, best of a few calls in one
// warm Python process). The first call is reported apart: it pays the process's first
// touch of its heap and code pages, which the CLI's compile_s + simulate_s include. Every
// call must give the first call's step time to the bit (#wrong counts those that do not).
//
//   bench_sim_warm DECK [--cluster NAME|FILE] [--repeat N] [--threads N] [--set k=v ...]
// prints one JSON line: step_time_s, first_s, best_s, median_s, repeat, threads, wrong.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "config/deck.hpp"
#include "core/threads.hpp"
#include "sim/cluster.hpp"
#include "sim/simulator.hpp"

using namespace shardflow;

int main(int argc, char** argv) {
  // As `shardflow simulate` starts: without MPI (MPICH's start leaves a thread that spins in
  // sched_yield beside the simulator's threads), OpenBLAS's idle workers stopped.
  limit_blas_threads();
  std::string deck_path, cluster_name = "a100-80gb";
  std::vector<std::string> sets;
  int repeat = 20, threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--cluster" && i + 1 < argc) {
      cluster_name = argv[++i];
    } else if (a == "--repeat" && i + 1 < argc) {
      repeat = std::max(1, std::stoi(argv[++i]));
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::stoi(argv[++i]);
    } else if (a == "--set") {
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) sets.push_back(argv[++i]);
    } else {
      deck_path = a;
    }
  }
  if (deck_path.empty()) {
    std::fprintf(stderr,
                 "usage: bench_sim_warm DECK [--cluster NAME|FILE] [--repeat N] [--threads N] [--set k=v ...]\n");
    return 2;
  }
  const Deck deck = load_deck(deck_path, sets);
  const sim::Cluster cluster = sim::load_cluster(cluster_name);
  sim::SimOptions options;
  options.threads = threads;
  std::vector<double> times;
  double step = 0;
  int wrong = 0;
  for (int k = 0; k <= repeat; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    const sim::SimResult r = sim::simulate(deck, cluster, options);  // (its layout plan included)
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (k == 0)
      step = r.step_time_s;
    else if (r.step_time_s != step)
      ++wrong;
  }
  const double first = times.front();
  std::vector<double> warm(times.begin() + 1, times.end());
  std::sort(warm.begin(), warm.end());
  std::printf(
      "{\"step_time_s\": %.17g, \"first_s\": %.6g, \"best_s\": %.6g, \"median_s\": %.6g, \"repeat\": %d, "
      "\"threads\": %d, \"wrong\": %d}\n",
      step, first, warm.front(), warm[warm.size() / 2], repeat, threads, wrong);
  return wrong == 0 ? 0 : 1;
}
