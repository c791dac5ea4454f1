#pragma once
// `shardflow simulate`: the compiled step (compile::StepProgram, the program `train` runs)
// of one representative rank per pipeline stage, replayed as an event simulation on a
// cluster's hardware model (sim/cluster.hpp). docs/simulator.md describes the model.
//
//  * Each representative rank runs its tasks as the trainer's executor does: compute tasks
//    one after another in emission order; each communicator's collectives one after another
//    in emission order, each as soon as its dependencies are done; a pipeline send and its
//    receive (the k-th send from stage a to b meets b's k-th receive from a, MPI's order
//    for one tag) transfer when both are posted.
//  * A compute task costs the sum of its kernels: GEMMs at the cluster's efficiency for their
//    size and the step's precision, everything else by the bytes it moves. A collective costs
//    a ring (inside a node) or a hierarchical ring (a group over several nodes) on the links
//    its group spans; a send / receive the link between the two ranks.
//  * Ranks that differ only in their data, fsdp, tensor or expert coordinates are taken to
//    run the same program at the same time (the uneven rule makes them differ by one row at
//    most), so one rank stands for its stage.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "compile/step_program.hpp"
#include "config/deck.hpp"
#include "parallel/layout_plan.hpp"
#include "sim/cluster.hpp"

namespace shardflow::sim {

struct SimOptions {
  std::string trace_file;  // write a Chrome trace of the simulated step (one process per stage)
  /// Stages compiled at once (0: the machine's hardware threads). The search simulates one
  /// configuration per worker and keeps the default, 1.
  int threads = 1;
  /// How the pipelined step is replayed (docs/simulator.md, "Block replay"): Tasks replays
  /// every task of every stage; Blocks replays the schedule group by group, each group's
  /// time taken from its stage class's program compiled with fewer micro-batches and replayed
  /// alone; Auto takes Blocks for a pipelined step with ZeRO-0 or 1 off the compute core,
  /// unless a trace is asked for (it needs the tasks). Blocks falls back to Tasks where it
  /// does not apply (one stage; as many classes as stages and no fewer micro-batches; a class
  /// program that deadlocks alone): SimResult::replay says which ran.
  enum class Replay { Auto, Tasks, Blocks };
  Replay replay = Replay::Auto;
};

/// Programs already compiled for some stages (the search's memory check compiles the first
/// and the last), by stage; simulate compiles the others.
using CompiledStages = std::map<int, std::shared_ptr<const compile::StepProgram>>;

struct MemoryEstimate {
  double params = 0, grads = 0, optimizer = 0, activations = 0, transient = 0, peak = 0;  // bytes
};

struct SimResult {
  std::string cluster, mesh, model;
  int devices = 0, roles = 0;  // roles: representative ranks simulated (one per stage)
  double step_time_s = 0, tokens_per_s = 0;
  double achieved_tflops_per_gpu = 0;  // FLOPs executed (recomputation included) / s / GPU
  double model_tflops_per_gpu = 0;     // the model's FLOPs (gpt_model_flops) / s / GPU
  double mfu = 0;                      // model FLOPs / (step time · devices · peak of the precision)
  double bubble_fraction = 0;          // the largest share of a stage's step spent waiting on the pipeline
  std::map<std::string, double> exposed_comm_s;  // per communicator (mesh axes joined by '+'): compute waiting on it, the worst stage
  std::map<std::string, double> comm_busy_s;     // per communicator: time its collectives take, the worst stage
  MemoryEstimate memory;  // the stage with the largest predicted peak (compile::predict_peak)
  bool fits = false;      // memory.peak <= the device's memory
  double compile_s = 0, simulate_s = 0;
  std::string replay = "tasks";  // "tasks" or "blocks" (SimOptions::Replay)
  int stages_compiled = 0;       // programs compiled (blocks: one per stage class)
};

/// Simulates the deck's step (its mesh as given) on `cluster`. Throws InputError for a deck
/// the compiler refuses or a mesh larger than the cluster model allows.
SimResult simulate(const Deck& deck, const Cluster& cluster, const SimOptions& options = {});
/// The same with the deck's LayoutPlan and some stages' programs given (their compile is not
/// repeated; they must be the deck's).
SimResult simulate(const Deck& deck, const Cluster& cluster, const parallel::LayoutPlan& plan,
                   const CompiledStages& given, const SimOptions& options = {});

/// `simulate --search`: every valid configuration of the deck's model, global batch and
/// precision on `devices` devices, pruned by memory, simulated, ranked by tokens/s.
struct SearchOptions {
  int top = 10;
  bool exhaustive = false;  // simulate every configuration that fits the memory check (no bound)
  int threads = 0;          // workers (0: the machine's hardware threads)
};
struct SearchCandidate {
  std::string sets;  // the --set overrides that give it (mesh, strategy, micro-batches)
  SimResult result;
  double bound_s = 0;  // its lower bound (SearchResult::bounded), <= result.step_time_s
};
struct SearchResult {
  std::vector<SearchCandidate> best;  // the fastest that fit, fastest first (at most top)
  int enumerated = 0;      // configurations generated
  int invalid = 0;         // refused by the compiler (e.g. virtual stages that do not divide the layers)
  std::map<std::string, int> invalid_reasons;  // the compiler's message (its first 160 characters) -> count
  int pruned_memory = 0;   // predicted peak above the device's memory (first and last stage compiled)
  int simulated = 0;
  /// Not simulated: their lower bound (the longest path of their first or last stage over its
  /// dependencies, compute stream and communicators' orders, pipeline messages free; for a
  /// step replayed by blocks, that stage's schedule from its class program alone) is not
  /// below the top-th fastest simulated step, so they cannot be among the best (the list is
  /// the exhaustive search's).
  int bounded = 0;
  double seconds = 0;
  double memory_check_s = 0, simulate_s = 0;  // thread-seconds: compiling for the memory check, simulating
  int threads = 1;
};
/// Enumerates tensor (divides the heads, at most a node), pipeline (at most the layers),
/// context (dense models without attention dropout whose ranks keep at least 4,096 positions each), expert (MoE: up
/// to the experts, part of the batch split), the rest as data with ZeRO 0/1/2 or as fsdp
/// with ZeRO 3, micro-batch size 1/2/4/8, interleaving 1-4,
/// recompute none/selective/full and sequence parallelism (tensor > 1).
SearchResult search(const Deck& base, const Cluster& cluster, int devices, const SearchOptions& options = {});
std::string search_text(const SearchResult& r);
std::string search_json(const SearchResult& r);

/// The result as JSON (the fields of SimResult, memory as memory_bytes_per_device).
std::string sim_json(const SimResult& r);
/// A few lines for people.
std::string sim_text(const SimResult& r);

}  // namespace shardflow::sim
