#pragma once
// The step compiler: one rank's training step as a StepProgram (task graph + buffer plan),
// for any rank of any mesh, without MPI and without allocating the step's memory.
//
//   compile_step(deck, plan, rank)
//     = make_step_shape      (compile/step_shape.hpp: what this rank holds and runs)
//     + plan_buffers         (every array of the step, sized)
//     + the emitters         (compile/impl/emit_*.cpp), in the step's order:
//         pipeline   receive rings posted as early as their slots free, sends      (emit_pipeline)
//         zero       ZeRO-3 gathers ahead of use, reduce-scatters, ZeRO-1/2 gathers (emit_zero)
//         block      each use's compute segments and, between them, the tensor/
//                    sequence-parallel conjugate pairs and the expert dispatch     (emit_block)
//         gradients  per-parameter gradient sync, loss and norm reductions, AdamW  (emit_step)
//
// The trainer binds the program to live communicators and buffers (train/impl/bind.cpp),
// `shardflow compile` summarises it (compile/summary.hpp).
#include "compile/step_program.hpp"

namespace shardflow::compile {

/// The deck's LayoutPlan on `mesh` (the one every consumer of a deck uses).
parallel::LayoutPlan layout_plan(const Deck& deck, const MeshShape& mesh);

/// What a compiled program carries besides what runs.
struct CompileOptions {
  /// Task names (TaskSpec::name) and the collectives' tensor names (CollectiveDesc::tensor):
  /// what traces, deadlock messages, `compile --tasks` and the graph's verification show.
  /// The simulator compiles without them unless it writes a trace (their strings were most
  /// of compile_step's time); the program is otherwise the same, task for task.
  bool names = true;
  /// The shape's parameters (compile::ShapeParams): every parameter of the model, or only
  /// the rank's pipeline stage's, all that the program's tasks and buffers use (the
  /// simulator's programs; the same program otherwise, task for task).
  ShapeParams params = ShapeParams::All;
  /// Micro-batches per round of an interleaved schedule (compile::pipeline_schedule's
  /// `group`): 0 is mesh.pipeline, the schedule training runs, and the deck's micro-batches
  /// must be a multiple of it; the simulator's class programs, replayed alone with free
  /// pipeline messages, run a few micro-batches in one round of their own (docs/simulator.md).
  int mb_group = 0;
};

/// Rank `rank`'s step. Throws InputError naming the deck key for a step that cannot be built.
StepProgram compile_step(const Deck& deck, const parallel::LayoutPlan& plan, int rank, StepMode mode = StepMode::Train,
                         CompileOptions options = {});

/// Pools the staging of prog's shard collectives (StepProgram::staging_slots): chains each
/// staged all-gather / reduce-scatter after the previous one of its communicator and kind
/// and sizes one buffer per such pool. compile_step calls it.
void pool_staging(StepProgram& prog);

}  // namespace shardflow::compile
