#pragma once
// What a compiled step contains, counted: tasks, kernel calls, the collectives on each
// group of axes (count and bytes), and the buffers by class. `shardflow compile` prints it;
// the simulator and the tests read it.
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "compile/step_program.hpp"
#include "graph/task_graph.hpp"

namespace shardflow::compile {

/// Collectives of one kind on one group of axes.
struct CollectiveCount {
  std::string group;  // "tensor", "data+fsdp", ...
  std::string kind;   // all_reduce, all_gather, reduce_scatter, send, recv, all_to_all, all_to_allv
  int64_t count = 0;
  int64_t bytes = 0;  // Σ CommOp::tensor_bytes (all_to_allv: the dispatch capacity, an upper bound)
};

struct ProgramSummary {
  int rank = 0, world = 1;
  std::string mesh;
  std::vector<std::pair<std::string, int>> coords;  // axis -> this rank's coordinate
  int stage = 0, stages = 1;
  std::vector<std::pair<int, int>> layers;  // this rank's chunks' layers [begin, end)
  int64_t tasks = 0, compute_tasks = 0, comm_tasks = 0, kernel_calls = 0, edges = 0;
  std::vector<CollectiveCount> collectives;  // by group (first use), then kind
  int64_t buffers = 0;
  int64_t params_bytes = 0, grads_bytes = 0, optimizer_bytes = 0, transient_bytes = 0, staging_bytes = 0,
          activation_bytes = 0, input_bytes = 0;
  int64_t model_state_bytes() const { return params_bytes + grads_bytes + optimizer_bytes; }
  // set by the caller when known (printed when set)
  std::string model;            // e.g. ModelConfig::to_string()
  double compile_seconds = -1;  // how long compile_step took
};

ProgramSummary summarize(const StepProgram& prog);

/// The most bytes a rank's framework allocations hold at once (what core/memory.hpp
/// measures in `train`): every buffer of the plan and the collectives' staging for the
/// whole run, plus the largest set-up or checkpoint transient on top of them: one whole
/// parameter while the parameters are initialised, a staged restore's copy of the rank's
/// state (0 for an in-place restore, which `train --resume` does), or an async save's
/// snapshot of what the rank writes (ckpt::save_bytes; 0 for sync saves, which write from
/// the buffers).
struct PeakPrediction {
  int64_t buffers = 0;          // Σ BufferPlan
  int64_t staging = 0;          // the pooled staging (StepProgram::staging_total)
  int64_t init = 0;             // the largest whole parameter (initialisation)
  int64_t restore_staging = 0;  // a staged restore's copy of the rank's state
  int64_t save_snapshot = 0;    // an async save's copy of what this rank writes
  int64_t peak() const;
};
PeakPrediction predict_peak(const StepProgram& prog, int64_t restore_staging_bytes, int64_t async_snapshot_bytes);
/// The rank's parameters and AdamW moments: what a staged restore copies.
int64_t state_bytes(const StepProgram& prog);
/// A human-readable report (what `shardflow compile` prints).
std::string summary_text(const ProgramSummary& s);
/// The same as JSON (`shardflow compile --json`).
std::string summary_json(const ProgramSummary& s);

/// The program as a TaskGraph whose tasks do nothing (for DOT and the verify checks).
graph::TaskGraph unbound_graph(const StepProgram& prog);

/// The collectives of `key`'s communicator in issue order as "kind tensor count dtype"
/// (send/recv: with the peer), what the verify pass compares between ranks.
std::vector<std::string> collective_sequence(const StepProgram& prog, const std::string& key);

}  // namespace shardflow::compile
