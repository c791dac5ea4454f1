// bench_context: context parallelism (ring attention, issue 16) against one rank at the same
// sequence length, on a deck (default inputs/llama_quickstart.toml at 1,024 positions):
//  - step time: one rank alone (the others wait) and the deck on `context` = world ranks,
//    round-robin (a batch of steps per mode per round), the median over rounds; the ratio
//    cp / one next to the ideal 1 / cp;
//  - activation bytes per rank (train --summary's memory_bytes.activations, the largest
//    rank's) and their ratio, next to 1 / cp;
//  - the share of the ring's communication hidden behind compute: the time its sends and
//    receives are in flight (issue to completion, the union over tasks), less the time the
//    executor waited with nothing to compute while one was in flight, over the former;
//  - #wrong: steps whose loss differs from one rank's by more than 1e-4 relative.
//
//   mpiexec -n N bench_context [deck] [--set k=v ...] [--steps S] [--rounds R]
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench_deck_args.hpp"
#include "comm/comm_set.hpp"
#include "comm/control.hpp"
#include "comm/mesh.hpp"
#include "config/deck.hpp"
#include "core/blas.hpp"
#include "core/threads.hpp"
#include "graph/observer.hpp"
#include "train/trainer.hpp"

using namespace shardflow;

namespace {

using Clock = graph::Clock;

// In-flight intervals of the context communicator's tasks and the executor's idle waits.
class RingObserver : public graph::Observer {
 public:
  void on_task_begin(const graph::TaskGraph& g, int task, Clock::time_point t) override {
    if (is_ring(g, task)) open_.emplace_back(task, t);
  }
  void on_task_end(const graph::TaskGraph& g, int task, Clock::time_point t) override {
    if (!is_ring(g, task)) return;
    for (size_t i = 0; i < open_.size(); ++i)
      if (open_[i].first == task) {
        ring_.emplace_back(open_[i].second, t);
        open_.erase(open_.begin() + static_cast<long>(i));
        return;
      }
  }
  void on_wait(Clock::time_point b, Clock::time_point e) override { waits_.emplace_back(b, e); }
  void clear() {
    ring_.clear();
    waits_.clear();
    open_.clear();
  }
  // seconds some ring message was in flight; of those, seconds the executor sat waiting
  std::pair<double, double> totals() const {
    std::vector<std::pair<Clock::time_point, Clock::time_point>> u = ring_;
    std::sort(u.begin(), u.end());
    std::vector<std::pair<Clock::time_point, Clock::time_point>> merged;
    for (const auto& iv : u) {
      if (!merged.empty() && iv.first <= merged.back().second)
        merged.back().second = std::max(merged.back().second, iv.second);
      else
        merged.push_back(iv);
    }
    double flight = 0, exposed = 0;
    for (const auto& m : merged) {
      flight += std::chrono::duration<double>(m.second - m.first).count();
      for (const auto& w : waits_) {
        const auto b = std::max(m.first, w.first), e = std::min(m.second, w.second);
        if (b < e) exposed += std::chrono::duration<double>(e - b).count();
      }
    }
    return {flight, exposed};
  }

 private:
  static bool is_ring(const graph::TaskGraph& g, int task) {
    const auto& n = g.node(task);
    return n.kind == graph::TaskKind::Comm && n.comm_key >= 0 &&
           g.comm_keys()[static_cast<size_t>(n.comm_key)] == "context";
  }
  std::vector<std::pair<int, Clock::time_point>> open_;
  std::vector<std::pair<Clock::time_point, Clock::time_point>> ring_, waits_;
};

struct Mode {
  std::string name;
  MPI_Comm comm = MPI_COMM_NULL;  // the ranks that run it (MPI_COMM_NULL: this rank does not)
  std::unique_ptr<Deck> deck;
  std::unique_ptr<Mesh> mesh;
  std::unique_ptr<comm::CommSet> comms;
  std::unique_ptr<train::Trainer> trainer;
  std::vector<double> losses, times;
  double flight = 0, exposed = 0;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  ensure_best_blas_kernel(argc, argv);  // may re-execute: first thing
  MPI_Init(&argc, &argv);
  Kokkos::initialize(argc, argv);
  limit_blas_threads();
  int rc = 0;
  {
    int world = 1, rank = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int steps = 3, rounds = 3;
    const perf::DeckArgs args =
        perf::parse_deck_args(argc, argv, SHARDFLOW_SOURCE_DIR "/inputs/llama_quickstart.toml",
                              {{"--steps", &steps}, {"--rounds", &rounds}});
    std::vector<std::string> base = {"model.seq=1024", "model.layers=2", "train.global_batch=2",
                                     "checkpoint.every=0"};
    for (const auto& s : args.sets) base.push_back(s);
    auto make = [&](const std::string& name, std::vector<std::string> sets, MPI_Comm c) {
      Mode m;
      m.name = name;
      m.comm = c;
      if (c == MPI_COMM_NULL) return m;
      int n = 1;
      MPI_Comm_size(c, &n);
      m.deck = std::make_unique<Deck>(load_deck(args.deck, sets, n));
      m.mesh = std::make_unique<Mesh>(m.deck->mesh.to_mesh_shape(), c);
      m.comms = std::make_unique<comm::CommSet>(*m.mesh, comm::Backend::Mpi);
      m.trainer = std::make_unique<train::Trainer>(*m.deck, *m.mesh, *m.comms);
      return m;
    };
    std::vector<std::string> one_sets = base, cp_sets = base;
    for (const char* k : {"mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "mesh.pipeline=1", "mesh.expert=1"}) {
      one_sets.push_back(k);
      cp_sets.push_back(k);
    }
    one_sets.push_back("mesh.context=1");
    cp_sets.push_back("mesh.context=" + std::to_string(world));
    MPI_Comm self = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, rank == 0 ? 0 : MPI_UNDEFINED, 0, &self);
    std::vector<Mode> modes;
    modes.push_back(make("one", one_sets, self));
    modes.push_back(make("context", cp_sets, MPI_COMM_WORLD));
    RingObserver obs;
    modes[1].trainer->executor().add_observer(&obs);
    for (int r = 0; r < rounds; ++r)
      for (auto& m : modes) {
        MPI_Barrier(MPI_COMM_WORLD);
        if (m.trainer == nullptr) continue;
        std::vector<double> t;
        for (int s = 0; s < steps; ++s) {
          obs.clear();
          const auto st = m.trainer->train_step();
          if (r == 0) m.losses.push_back(st.loss);
          t.push_back(st.step_time_s);
          if (&m == &modes[1] && r > 0) {  // the first round warms up
            const auto [f, e] = obs.totals();
            m.flight += f;
            m.exposed += e;
          }
        }
        m.times.push_back(median(t));
      }
    modes[1].trainer->executor().clear_observers();
    comm::Control control(MPI_COMM_WORLD);
    const double one_ms = 1e3 * control.max(rank == 0 ? median(modes[0].times) : 0.0);
    const double cp_ms = 1e3 * control.max(median(modes[1].times));
    const double one_act = control.max(rank == 0 ? static_cast<double>(modes[0].trainer->memory().activations) : 0.0);
    const double cp_act = control.max(static_cast<double>(modes[1].trainer->memory().activations));
    const double flight = control.max(modes[1].flight), exposed = control.max(modes[1].exposed);
    // one rank's losses to everyone
    std::vector<double> ref(modes[1].losses.size(), 0.0);
    if (rank == 0) ref = modes[0].losses;
    MPI_Bcast(ref.data(), static_cast<int>(ref.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
    int wrong = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      if (std::abs(modes[1].losses[i] - ref[i]) > 1e-4 * std::abs(ref[i])) ++wrong;
    if (rank == 0) {
      const Deck& d = *modes[1].deck;
      std::printf("# bench_context: %s, %d context ranks, global batch %lld, %s\n", d.model.to_string().c_str(), world,
                  static_cast<long long>(d.train.global_batch), blas_info().summary().c_str());
      std::printf("# %d rounds x %d steps, median step of each round, median over rounds\n", rounds, steps);
      std::printf("# %-8s %10s %10s %14s %10s %10s %10s %7s\n", "mode", "step_ms", "vs_one", "activations_B",
                  "vs_one", "ideal", "hidden", "#wrong");
      std::printf("  %-8s %10.2f %10.3f %14.0f %10.3f %10s %10s %7d\n", "one", one_ms, 1.0, one_act, 1.0, "-", "-", 0);
      std::printf("  %-8s %10.2f %10.3f %14.0f %10.3f %10.3f %10.3f %7d\n", "context", cp_ms, cp_ms / one_ms, cp_act,
                  cp_act / one_act, 1.0 / world, flight > 0 ? 1.0 - exposed / flight : 0.0, wrong);
      std::printf("# ring messages in flight %.1f ms over the timed steps, %.1f ms of it exposed (executor idle)\n",
                  1e3 * flight, 1e3 * exposed);
    }
    rc = wrong == 0 ? 0 : 1;
    modes.clear();
    if (self != MPI_COMM_NULL) MPI_Comm_free(&self);
  }
  Kokkos::finalize();
  MPI_Finalize();
  return rc;
}
