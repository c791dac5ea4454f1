// `shardflow simulate [DECK] --cluster NAME|FILE [--devices N] [--set k=v ...] [--json] [--trace FILE]`:
// compiles the deck's step for one rank per pipeline stage and replays it on a cluster's
// hardware model (sim/simulator.hpp, docs/simulator.md): step time, throughput, MFU, the
// pipeline bubble, the communication each axis leaves exposed, memory per device and
// whether it fits. Runs in one process, without MPI communication.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "command.hpp"
#include "deck_devices.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "sim/calibrate.hpp"
#include "sim/simulator.hpp"

#include <filesystem>
#include <fstream>

#include <mpi.h>

namespace {

struct SimulateOptions {
  std::string deck, cluster, trace, replay = "auto";
  std::vector<std::string> sets;
  int devices = 0;
  bool json = false;
  bool search = false;
  int top = 10;
};

int run_simulate(const SimulateOptions& o) {
  using namespace shardflow;
  const Deck deck = app::load_deck_on_devices(o.deck, o.sets, o.devices, "simulate");
  if (o.cluster == "local" && !std::filesystem::exists(sim::local_cluster_path())) {
    // calibrating on first use (one process: the link is estimated, the file says so)
    app::ensure_mpi();
    const std::string text = sim::calibrate_local(MPI_COMM_WORLD);
    if (app::world_rank() == 0) {
      const std::filesystem::path p(sim::local_cluster_path());
      std::error_code ec;
      std::filesystem::create_directories(p.parent_path(), ec);
      std::ofstream f(p);
      SHARDFLOW_REQUIRE_INPUT(f.good(), "simulate --cluster local: cannot write ", p.string());
      f << text;
      std::fprintf(stderr, "simulate: calibrated this machine into %s (`shardflow calibrate` to redo it)\n",
                   p.string().c_str());
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  const sim::Cluster cluster = sim::load_cluster(o.cluster);
  if (o.search) {
    sim::SearchOptions sopt;
    sopt.top = o.top;
    const sim::SearchResult sr = sim::search(deck, cluster, deck.mesh.size(), sopt);
    if (app::world_rank() == 0) {
      const std::string text = o.json ? sim::search_json(sr) + "\n" : sim::search_text(sr);
      std::fputs(text.c_str(), stdout);
      std::fflush(stdout);
    }
    return 0;
  }
  sim::SimOptions so;
  so.trace_file = o.trace;
  so.threads = 0;  // the stages compiled on every hardware thread
  so.replay = o.replay == "tasks"    ? sim::SimOptions::Replay::Tasks
              : o.replay == "blocks" ? sim::SimOptions::Replay::Blocks
                                     : sim::SimOptions::Replay::Auto;
  const sim::SimResult r = sim::simulate(deck, cluster, so);
  if (app::world_rank() == 0) {
    const std::string text = o.json ? sim::sim_json(r) + "\n" : sim::sim_text(r);
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  }
  return 0;
}

shardflow::app::CommandRegistration reg(
    "simulate", "simulate the compiled step on a cluster model: step time, MFU, bubble, exposed comm, memory",
    [](CLI::App& sub) {
      auto o = std::make_shared<SimulateOptions>();
      sub.add_option("deck", o->deck, "input deck (TOML); default: the default deck");
      sub.add_option("--cluster", o->cluster,
                     "cluster model: a name (a100-80gb, h100-80gb, h200: inputs/clusters; local: this machine, calibrated on first use) or a TOML file")
          ->required();
      sub.add_option("--set", o->sets, "override a deck key: section.key=value (repeatable)");
      sub.add_option("--devices", o->devices, "grow (or shrink) the deck's data axis to this many devices in all");
      sub.add_flag("--json", o->json, "print a JSON object");
      sub.add_option("--trace", o->trace, "write a Chrome trace of the simulated step (one process per stage)");
      sub.add_option("--replay", o->replay,
                     "how a pipelined step is replayed: tasks (every task of every stage), blocks (group by group, "
                     "each stage class compiled with fewer micro-batches; tasks where it does not apply), auto "
                     "(blocks for ZeRO-0/1 off the compute core, tasks with --trace; the default)")
          ->check(CLI::IsMember({"auto", "tasks", "blocks"}));
      sub.add_flag("--search", o->search,
                   "search every valid configuration of the model and batch on the devices (--devices, else the "
                   "deck's mesh size), prune by memory, rank by simulated tokens/s");
      sub.add_option("--top", o->top, "--search: how many configurations to print (default 10)");
      return [o]() { return run_simulate(*o); };
    },
    /*needs_mpi=*/false);

}  // namespace
