#pragma once
// Pipeline schedules as pure functions: the order in which one pipeline stage runs the
// forward and backward of each micro-batch through each of its chunks. They know nothing of
// layers, buffers or communicators (Megatron-Core's lesson: a schedule takes a step, not a
// model), so they are tested alone and any compiler or simulator can use them.
//
// Nomenclature
//   stages p       ranks along the `pipeline` axis; `stage` s in [0, p).
//   chunks         with v virtual stages (interleaved 1F1B) the layers form p·v chunks;
//                  chunk c runs on stage c mod p as that stage's virtual stage c / p.
//   PipelineStep   {forward?, virtual stage of this stage, micro-batch}.
//
//   gpipe:            F0 … F(m−1), then B0 … B(m−1).
//   1f1b:             p − s − 1 warm-up forwards (at most m), then one forward / one
//                     backward, then the drain.
//   interleaved 1f1b (v > 1, Narayanan et al. 2021, as in Megatron-LM): the k-th forward
//                     runs virtual stage (k / p) mod v of micro-batch (k / (p·v))·p + k mod p,
//                     the k-th backward virtual stage v − 1 − (k / p) mod v of the same
//                     micro-batch; (p − s − 1)·2 + (v − 1)·p warm-up forwards (at most m·v).
//                     In rounds of g micro-batches (`group`; g = p unless given): g in place
//                     of p in both formulas, every other rule the same. Training runs g = p;
//                     the simulator's class programs, replayed alone, run fewer micro-batches
//                     in rounds of g < p (docs/simulator.md, "Block replay").
#include <vector>

#include "config/deck.hpp"

namespace shardflow::compile {

struct PipelineStep {
  bool forward = true;
  int chunk = 0;  // this stage's virtual stage (0 … v − 1)
  int micro_batch = 0;
  bool operator==(const PipelineStep& o) const {
    return forward == o.forward && chunk == o.chunk && micro_batch == o.micro_batch;
  }
};

/// The steps stage `stage` of `stages` runs, in order. With one stage every schedule is
/// 1F1B's degenerate form (forward then backward of each micro-batch); gpipe with one stage
/// is all forwards then all backwards. `group`: micro-batches per round of the interleaved
/// order (0: `stages`). Throws InputError for sizes < 1, stage outside [0, stages), or an
/// interleaved schedule whose micro-batches are not a multiple of the round's.
std::vector<PipelineStep> pipeline_schedule(PipelineSchedule kind, int stages, int stage, int micro_batches,
                                            int virtual_stages = 1, int group = 0);

/// pipeline_schedule's steps one at a time, without storing them (the simulator walks the
/// schedules of thousands of stages): `for (ScheduleWalk w(...); !w.done(); w.next()) w.step()`.
/// Throws as pipeline_schedule does.
class ScheduleWalk {
 public:
  ScheduleWalk(PipelineSchedule kind, int stages, int stage, int micro_batches, int virtual_stages = 1, int group = 0);
  bool done() const { return fdone_ == total_ && bdone_ == total_; }
  PipelineStep step() const {
    return fwd_ ? PipelineStep{true, f_.chunk, f_.micro_batch()}
                : PipelineStep{false, v_ - 1 - b_.chunk, b_.micro_batch()};
  }
  void next() {
    if (fwd_) {
      f_.next();
      ++fdone_;
    } else {
      b_.next();
      ++bdone_;
    }
    decide();
  }
  size_t size() const { return 2 * static_cast<size_t>(total_); }  // steps in all
  int chunks() const { return v_; }                                // 1 for gpipe
  int warm_up() const { return warm_; }                            // forwards before the first backward
  int round() const { return f_.p * v_; }  // forwards of one round through every chunk (group · chunks)

 private:
  // the k-th forward (or backward) of the interleaved order, k = (round·v + chunk)·p + r,
  // counted up (no divisions); p: micro-batches per round
  struct Count {
    int p = 1, v = 1, r = 0, chunk = 0, round = 0;
    int micro_batch() const { return round * p + r; }
    void next() {
      if (++r < p) return;
      r = 0;
      if (++chunk < v) return;
      chunk = 0;
      ++round;
    }
  };
  // a forward next: a warm-up one, or the one after each backward (while there is one)
  void decide() { fwd_ = fdone_ < warm_ || (fdone_ < total_ && fdone_ == warm_ + bdone_); }
  int v_ = 1, total_ = 0, warm_ = 0, fdone_ = 0, bdone_ = 0;
  bool fwd_ = true;
  Count f_, b_;
};

/// For each virtual stage, the most micro-batches between their forward and their backward at
/// any point of `steps` (at least 1): how many activation slots that chunk needs.
std::vector<int> in_flight(const std::vector<PipelineStep>& steps, int virtual_stages);
/// The same of the schedule `walk` walks (from its start; `walk` is taken by value).
std::vector<int> in_flight(ScheduleWalk walk, int virtual_stages);

}  // namespace shardflow::compile
