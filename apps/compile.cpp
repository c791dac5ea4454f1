// `shardflow compile [DECK] [--devices N] [--rank R] [--set k=v ...] [--dump-graph FILE] [--json]`:
// compiles rank R's training step for the deck's mesh (or the deck's mesh grown to N devices
// along `data`) without running it and without MPI communication, and prints what the step
// contains: tasks, collectives per group of axes (count and bytes), buffers by class.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "command.hpp"
#include "deck_devices.hpp"
#include "compile/compiler.hpp"
#include "compile/summary.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"

namespace {

struct CompileOptions {
  std::string deck;
  std::vector<std::string> sets;
  int devices = 0;
  int rank = 0;
  std::string dump_graph;
  bool json = false;
};

int run_compile(const CompileOptions& o) {
  using namespace shardflow;
  const std::string path = o.deck.empty() ? "(defaults)" : o.deck;
  const Deck deck = app::load_deck_on_devices(o.deck, o.sets, o.devices, "compile");
  const MeshShape mesh = deck.mesh.to_mesh_shape();
  SHARDFLOW_REQUIRE_INPUT(o.rank >= 0 && o.rank < mesh.size(), "compile: --rank ", o.rank, " is outside mesh ",
                          mesh.to_string(), " of ", mesh.size(), " devices");
  const auto t0 = std::chrono::steady_clock::now();
  const parallel::LayoutPlan plan = compile::layout_plan(deck, mesh);
  const compile::StepProgram prog = compile::compile_step(deck, plan, o.rank);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  compile::ProgramSummary sum = compile::summarize(prog);
  sum.model = deck.model.to_string();
  sum.compile_seconds = secs;
  if (!o.dump_graph.empty()) {
    std::ofstream f(o.dump_graph);
    SHARDFLOW_REQUIRE_INPUT(f.good(), "compile: cannot write --dump-graph ", o.dump_graph);
    compile::unbound_graph(prog).dump(f);
    SHARDFLOW_REQUIRE_INPUT(f.good(), "compile: writing --dump-graph ", o.dump_graph, " failed");
  }
  if (shardflow::app::world_rank() == 0) {
    std::string text;
    if (o.json) {
      text = compile::summary_json(sum) + "\n";
    } else {
      char head[256];
      std::snprintf(head, sizeof head, "shardflow compile: %s, model %s, compiled in %.3f s\n", path.c_str(),
                    deck.model.to_string().c_str(), secs);
      text = head + compile::summary_text(sum);
    }
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  }
  return 0;
}

shardflow::app::CommandRegistration reg(
    "compile", "compile one rank's training step (no run, no MPI) and show its tasks, collectives and buffers",
    [](CLI::App& sub) {
      auto o = std::make_shared<CompileOptions>();
      sub.add_option("deck", o->deck, "input deck (TOML); default: the default deck (quickstart model, one device)");
      sub.add_option("--set", o->sets, "override a deck key: section.key=value (repeatable)");
      sub.add_option("--devices", o->devices, "grow (or shrink) the deck's data axis to this many devices in all");
      sub.add_option("--rank", o->rank, "the rank whose step is compiled (default 0)");
      sub.add_option("--dump-graph", o->dump_graph, "write the rank's task graph as Graphviz DOT to this file");
      sub.add_flag("--json", o->json, "print a JSON object");
      return [o]() { return run_compile(*o); };
    });

}  // namespace
