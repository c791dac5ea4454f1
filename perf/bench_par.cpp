// bench_par: the training step on every 2-rank mesh of a deck (default inputs/bench.toml):
// step time and tokens/s, the pipeline bubble measured against (p − 1)/(v·m) (v virtual
// stages of interleaved 1F1B, 1 otherwise), tensor-parallel
// bytes per layer in the compiled DAG against 8·b·s·h·(t − 1)/t elements, and per-rank
// memory next to the planner's estimate. Every mesh checks its own results: its per-step
// losses must match the one-rank run of the same deck to 1e-5 relative (#wrong counts the
// steps that do not).
//
//   mpiexec -n 2 bench_par [deck] [--steps N] [--json FILE] [--only SUBSTRING]
// (--only: just the meshes whose name contains SUBSTRING, e.g. "pp2")
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "comm/control.hpp"
#include "comm/comm_set.hpp"
#include "config/deck.hpp"
#include "core/blas.hpp"
#include "graph/observer.hpp"
#include "comm/mesh.hpp"
#include "planner/planner.hpp"
#include "train/trainer.hpp"

using namespace shardflow;

namespace {

/// Time from issue to completion of the tensor-axis collectives.
class TensorCommTimer : public graph::Observer {
 public:
  void on_task_begin(const graph::TaskGraph& g, int task, graph::Clock::time_point t) override {
    if (is_tensor(g, task)) begin_[task] = t;
  }
  void on_task_end(const graph::TaskGraph& g, int task, graph::Clock::time_point t) override {
    auto it = begin_.find(task);
    if (it != begin_.end() && is_tensor(g, task)) seconds += std::chrono::duration<double>(t - it->second).count();
  }
  double seconds = 0;

 private:
  static bool is_tensor(const graph::TaskGraph& g, int task) {
    const auto& n = g.node(task);
    return n.kind == graph::TaskKind::Comm && n.desc.comm == "tensor";
  }
  std::map<int, graph::Clock::time_point> begin_;
};

struct Result {
  std::string name;
  std::vector<double> losses;
  double step_s = 0, tokens_per_s = 0;
  double compute_frac = 0, wait_frac = 0;  // mean over ranks, of the step
  double tp_bytes_layer = 0, tp_bytes_analytic = 0, tp_comm_s_layer = 0;
  double mem_bytes = 0, plan_bytes = 0;
  int wrong = 0;
  int64_t pipeline = 1, micro = 1, virtual_stages = 1;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

Result run(const std::string& name, const std::string& deck_path, const std::vector<std::string>& sets, int steps,
           MPI_Comm world) {
  Deck deck = load_deck(deck_path, sets);
  deck.train.steps = steps;
  Mesh mesh(deck.mesh.to_mesh_shape(), world);
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  train::Trainer trainer(deck, mesh, comms);
  TensorCommTimer timer;
  trainer.executor().add_observer(&timer);
  Result r;
  r.name = name;
  r.pipeline = deck.mesh.pipeline;
  r.micro = deck.train.micro_batches;
  r.virtual_stages = deck.strategy.virtual_stages;
  int world_size = 1;
  MPI_Comm_size(world, &world_size);
  std::vector<double> times, comp, wait;
  for (int s = 0; s < steps; ++s) {
    const auto st = trainer.train_step();
    r.losses.push_back(st.loss);
    double mine[3] = {st.step_time_s, st.compute_s, st.comm_wait_s}, mx[3], sum[3];
    MPI_Allreduce(mine, mx, 3, MPI_DOUBLE, MPI_MAX, world);
    MPI_Allreduce(mine, sum, 3, MPI_DOUBLE, MPI_SUM, world);
    if (s == 0) continue;  // warm-up
    times.push_back(mx[0]);
    comp.push_back(sum[1] / world_size / mx[0]);
    wait.push_back(sum[2] / world_size / mx[0]);
  }
  r.step_s = median(times);
  r.tokens_per_s = static_cast<double>(deck.train.global_batch * deck.model.seq) / r.step_s;
  r.compute_frac = median(comp);
  r.wait_frac = median(wait);
  // tensor-parallel traffic of layer 0 per micro-batch, as the DAG issues it (ring busbw factors)
  const int t = deck.mesh.tensor;
  if (t > 1) {
    const auto& g = trainer.graph();
    double bytes = 0;
    for (size_t id = 0; id < g.size(); ++id) {
      const auto& d = g.node(static_cast<int>(id)).desc;
      if (g.node(static_cast<int>(id)).kind != graph::TaskKind::Comm || d.comm != "tensor") continue;
      if (d.tensor.rfind("layers.0.", 0) != 0 || d.tensor.find(".grad") != std::string::npos) continue;
      const double f = d.kind == "all_reduce" ? 2.0 * (t - 1) / t : static_cast<double>(t - 1) / t;
      bytes += f * static_cast<double>(d.count) * 4.0;
    }
    const double m = static_cast<double>(deck.train.micro_batches);
    r.tp_bytes_layer = bytes / m;
    const double b = static_cast<double>(deck.micro_batch_size());
    r.tp_bytes_analytic = 8.0 * b * static_cast<double>(deck.model.seq * deck.model.hidden) * (t - 1) / t * 4.0;
    double s = timer.seconds;
    MPI_Allreduce(MPI_IN_PLACE, &s, 1, MPI_DOUBLE, MPI_MAX, world);
    // every layer's collectives: the total time over layers, steps and micro-batches
    r.tp_comm_s_layer = s / (static_cast<double>(steps) * m * static_cast<double>(deck.model.layers));
  }
  const auto mem = trainer.memory();
  double mine = static_cast<double>(mem.model_state() + mem.activations), most = 0;
  MPI_Allreduce(&mine, &most, 1, MPI_DOUBLE, MPI_MAX, world);
  r.mem_bytes = most;
  const Plan plan = make_plan(plan_input(deck));
  for (const auto& pm : plan.memory)
    if (pm.stage == deck.strategy.zero_stage) r.plan_bytes = pm.total();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  shardflow::ensure_best_blas_kernel(argc, argv);  // may re-execute: first thing
  shardflow::comm::mpi_init(argc, argv);
  Kokkos::initialize(argc, argv);
  int rc = 0;
  try {
    std::string deck = SHARDFLOW_BENCH_DECK, json_path, only;
    int steps = 6;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--steps" && i + 1 < argc)
        steps = std::stoi(argv[++i]);
      else if (a == "--json" && i + 1 < argc)
        json_path = argv[++i];
      else if (a == "--only" && i + 1 < argc)
        only = argv[++i];
      else
        deck = a;
    }
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) {
      if (rank == 0) std::fprintf(stderr, "bench_par runs on 2 ranks (mpiexec -n 2), not %d\n", size);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
    // the one-rank references (dense and MoE) on rank 0, broadcast
    const std::vector<std::string> moe = {"model.experts=4", "model.top_k=2", "model.moe_every=2"};
    std::vector<double> ref(static_cast<size_t>(steps)), ref_moe(static_cast<size_t>(steps));
    Result one, one_moe;
    if (rank == 0) {
      one = run("1 rank", deck, {"mesh.data=1"}, steps, MPI_COMM_SELF);
      ref = one.losses;
      std::vector<std::string> sets = moe;
      sets.push_back("mesh.data=1");
      one_moe = run("1 rank MoE", deck, sets, steps, MPI_COMM_SELF);
      ref_moe = one_moe.losses;
    }
    MPI_Bcast(ref.data(), steps, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    MPI_Bcast(ref_moe.data(), steps, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    MPI_Bcast(&one.step_s, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    MPI_Bcast(&one_moe.step_s, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    struct MeshCase {
      std::string name;
      std::vector<std::string> sets;
      bool moe = false;
    };
    const std::vector<MeshCase> cases = {
        {"dp2", {"mesh.data=2"}},
        {"fsdp2 (ZeRO-3)", {"mesh.fsdp=2", "strategy.zero_stage=3"}},
        {"tp2", {"mesh.tensor=2"}},
        {"tp2+sp", {"mesh.tensor=2", "strategy.sequence_parallel=true"}},
        {"pp2 gpipe m=4", {"mesh.pipeline=2", "strategy.schedule=gpipe", "train.micro_batches=4"}},
        {"pp2 1f1b m=4", {"mesh.pipeline=2", "strategy.schedule=1f1b", "train.micro_batches=4"}},
        {"pp2 1f1b m=8", {"mesh.pipeline=2", "strategy.schedule=1f1b", "train.micro_batches=8"}},
        {"pp2 1f1b v2 m=4",
         {"mesh.pipeline=2", "strategy.schedule=1f1b", "strategy.virtual_stages=2", "train.micro_batches=4"}},
        {"pp2 1f1b v2 m=8",
         {"mesh.pipeline=2", "strategy.schedule=1f1b", "strategy.virtual_stages=2", "train.micro_batches=8"}},
        {"MoE dp2", {"mesh.data=2"}, true},
        {"MoE ep2", {"mesh.expert=2"}, true},
        {"MoE tp2", {"mesh.tensor=2"}, true},
    };
    std::vector<Result> results;
    int wrong = 0;
    for (const auto& c : cases) {
      if (c.name.find(only) == std::string::npos) continue;
      std::vector<std::string> sets = c.sets;
      if (c.moe) sets.insert(sets.end(), moe.begin(), moe.end());
      Result r = run(c.name, deck, sets, steps, MPI_COMM_WORLD);
      const auto& want = c.moe ? ref_moe : ref;
      for (int s = 0; s < steps; ++s)
        r.wrong += std::abs(r.losses[static_cast<size_t>(s)] - want[static_cast<size_t>(s)]) >
                   1e-5 * std::abs(want[static_cast<size_t>(s)]);
      wrong += r.wrong;
      results.push_back(r);
    }
    if (rank == 0) {
      std::printf("bench_par: %s, %d steps (median of steps 2..%d), 1-rank step %.3f s (MoE model: %.3f s)\n",
                  deck.c_str(), steps, steps, one.step_s, one_moe.step_s);
      std::printf("%-16s %9s %9s %8s %8s %9s %9s %11s %11s %9s %9s %7s\n", "mesh", "step_s", "tok/s", "compute", "wait",
                  "bubble", "(p-1)/vm", "tp_B/layer", "8bsh(t-1)/t", "mem_MiB", "plan_MiB", "#wrong");
      for (const auto& r : results) {
        const bool pp = r.pipeline > 1;
        const double bubble = r.compute_frac > 0 ? r.wait_frac / r.compute_frac : 0;
        std::printf("%-16s %9.3f %9.0f %7.1f%% %7.1f%% %9s %9s %11.0f %11.0f %9.2f %9.2f %7d\n", r.name.c_str(),
                    r.step_s, r.tokens_per_s, 100 * r.compute_frac, 100 * r.wait_frac,
                    pp ? std::to_string(bubble).substr(0, 5).c_str() : "-",
                    pp ? std::to_string(double(r.pipeline - 1) / double(r.virtual_stages * r.micro)).substr(0, 5).c_str()
                       : "-",
                    r.tp_bytes_layer, r.tp_bytes_analytic, r.mem_bytes / 1048576.0, r.plan_bytes / 1048576.0, r.wrong);
      }
      std::printf("#wrong total: %d\n", wrong);
      if (!json_path.empty()) {
        std::ofstream os(json_path);
        os << "[\n";
        for (size_t i = 0; i < results.size(); ++i) {
          const auto& r = results[i];
          os << "  {\"mesh\": \"" << r.name << "\", \"step_time_s\": " << r.step_s
             << ", \"tokens_per_s\": " << r.tokens_per_s << ", \"compute_fraction\": " << r.compute_frac
             << ", \"wait_fraction\": " << r.wait_frac << ", \"tp_bytes_per_layer\": " << r.tp_bytes_layer
             << ", \"tp_bytes_analytic\": " << r.tp_bytes_analytic << ", \"tp_comm_s_per_layer\": " << r.tp_comm_s_layer
             << ", \"memory_bytes\": " << r.mem_bytes << ", \"plan_bytes\": " << r.plan_bytes
             << ", \"wrong\": " << r.wrong << "}" << (i + 1 < results.size() ? "," : "") << "\n";
        }
        os << "]\n";
      }
    }
    rc = wrong == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_par: %s\n", e.what());
    rc = 1;
  }
  Kokkos::finalize();
  MPI_Finalize();
  return rc;
}
