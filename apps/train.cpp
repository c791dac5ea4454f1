// `shardflow train DECK`: trains the reference GPT on the deck's mesh and strategy.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "command.hpp"
#include "comm/comm_set.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "graph/observer.hpp"
#include "mesh/mesh.hpp"
#include "train/trainer.hpp"

namespace {

using namespace shardflow;

struct TrainOptions {
  std::string deck;
  std::vector<std::string> overrides;
  std::string summary, trace_dir, dump_graph;
  bool quiet = false;
};

int64_t max_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

std::string human_bytes(double b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) {
    b /= 1024;
    ++i;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", b, u[i]);
  return buf;
}

std::string human_time(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s) / 3600, (static_cast<int>(s) / 60) % 60);
  return buf;
}

int run_train(const TrainOptions& o) {
  const int rank = app::world_rank();
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  Deck deck = load_deck(o.deck, o.overrides);
  check_world_size(deck, world);
  Mesh mesh(deck.mesh.to_mesh_shape());
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  train::Trainer trainer(deck, mesh, comms);
  if (!o.dump_graph.empty()) {
    const std::string path = world > 1 ? o.dump_graph + ".rank" + std::to_string(rank) : o.dump_graph;
    std::ofstream os(path);
    SHARDFLOW_REQUIRE_INPUT(os.good(), "--dump-graph: cannot write '", path, "'");
    trainer.graph().dump(os);
  }
  graph::ChromeTraceObserver tracer(rank);
  if (!o.trace_dir.empty()) trainer.executor().add_observer(&tracer);

  const auto mem = trainer.memory();
  if (rank == 0 && !o.quiet) {
    std::printf("shardflow train: %s | mesh %s | %d ranks | zero_stage %d | %s\n", o.deck.c_str(),
                mesh.shape().to_string().c_str(), world, deck.strategy.zero_stage, deck.model.to_string().c_str());
    std::printf("per-rank model state: params %s, grads %s, optimizer %s; transient %s; activations %s\n",
                human_bytes(static_cast<double>(mem.params)).c_str(), human_bytes(static_cast<double>(mem.grads)).c_str(),
                human_bytes(static_cast<double>(mem.optimizer)).c_str(),
                human_bytes(static_cast<double>(mem.transient)).c_str(),
                human_bytes(static_cast<double>(mem.activations)).c_str());
    std::fflush(stdout);
  }
  nlohmann::json steps = nlohmann::json::array();
  double total_time = 0, final_loss = 0;
  const int64_t total = deck.train.steps;
  for (int64_t s = trainer.step(); s < total; s = trainer.step()) {
    auto st = trainer.train_step();
    total_time += st.step_time_s;
    final_loss = st.loss;
    // slowest rank's time and the largest footprint decide what the job sees
    double t_local[2] = {st.step_time_s, st.comm_wait_s}, t_max[2];
    MPI_Allreduce(t_local, t_max, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    int64_t rss = max_rss_bytes(), rss_max = 0;
    MPI_Allreduce(&rss, &rss_max, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    const double tps = static_cast<double>(deck.train.global_batch * deck.model.seq) / t_max[0];
    steps.push_back({{"step", st.step}, {"loss", st.loss}, {"step_time_s", t_max[0]}, {"tokens_per_s", tps},
                     {"comm_wait_s", t_max[1]}, {"grad_norm", st.grad_norm}});
    if (rank == 0 && !o.quiet) {
      const double eta = total_time / static_cast<double>(st.step - 0) * static_cast<double>(total - st.step);
      std::printf("step %*lld/%lld  loss %.4f  %8.0f tok/s  step %.3fs  comm-wait %4.1f%%  peak/rank %s  eta %s\n",
                  static_cast<int>(std::to_string(total).size()), static_cast<long long>(st.step),
                  static_cast<long long>(total), st.loss, tps, t_max[0], 100.0 * t_max[1] / std::max(t_max[0], 1e-12),
                  human_bytes(static_cast<double>(rss_max)).c_str(), human_time(eta).c_str());
      std::fflush(stdout);
    }
  }
  if (!o.trace_dir.empty()) tracer.write(o.trace_dir + "/trace.rank" + std::to_string(rank) + ".json");
  std::vector<int64_t> peaks(static_cast<size_t>(world));
  int64_t rss = max_rss_bytes();
  MPI_Gather(&rss, 1, MPI_INT64_T, peaks.data(), 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  std::vector<int64_t> states(static_cast<size_t>(world));
  int64_t ms = mem.model_state();
  MPI_Gather(&ms, 1, MPI_INT64_T, states.data(), 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  if (rank == 0 && !o.summary.empty()) {
    nlohmann::json j;
    j["deck"] = o.deck;
    j["world_size"] = world;
    nlohmann::json m;
    for (size_t i = 0; i < mesh.shape().axis_names().size(); ++i)
      m[mesh.shape().axis_names()[i]] = mesh.shape().sizes()[i];
    j["mesh"] = m;
    j["zero_stage"] = deck.strategy.zero_stage;
    j["steps"] = steps;
    j["final_loss"] = final_loss;
    j["peak_memory_bytes"] = peaks;
    j["model_state_bytes"] = states;
    j["model_flops_per_step"] = trainer.model_flops_per_step();
    std::ofstream os(o.summary);
    SHARDFLOW_REQUIRE_INPUT(os.good(), "--summary: cannot write '", o.summary, "'");
    os << j.dump(2) << "\n";
  }
  return 0;
}

app::CommandRegistration reg("train", "train the reference GPT on a deck (run under mpiexec -n N or srun)",
                             [](CLI::App& sub) {
                               auto o = std::make_shared<TrainOptions>();
                               sub.add_option("deck", o->deck, "input deck (TOML)")->required();
                               sub.add_option("--set", o->overrides, "override a deck key: section.key=value")
                                   ->take_all();
                               sub.add_option("--summary", o->summary, "write a JSON summary to FILE");
                               sub.add_option("--trace", o->trace_dir, "write Chrome traces (one per rank) to DIR");
                               sub.add_option("--dump-graph", o->dump_graph, "write the step's task graph (DOT)");
                               sub.add_flag("--quiet", o->quiet, "no progress lines");
                               return [o] { return run_train(*o); };
                             });

}  // namespace
