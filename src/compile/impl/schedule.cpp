#include "compile/schedule.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace shardflow::compile {

ScheduleWalk::ScheduleWalk(PipelineSchedule kind, int stages, int stage, int micro_batches, int virtual_stages,
                           int group) {
  const int p = stages, m = micro_batches, v = virtual_stages, g = group > 0 ? group : stages;
  SHARDFLOW_REQUIRE_INPUT(p >= 1, "pipeline schedule: mesh.pipeline = ", p, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(stage >= 0 && stage < p, "pipeline schedule: stage ", stage, " is outside [0, ", p, ")");
  SHARDFLOW_REQUIRE_INPUT(m >= 1, "pipeline schedule: train.micro_batches = ", m, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(v >= 1, "pipeline schedule: strategy.virtual_stages = ", v, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(group >= 0, "pipeline schedule: ", group, " micro-batches per round");
  if (group == 0)
    SHARDFLOW_REQUIRE_INPUT(v == 1 || m % p == 0, "pipeline schedule: interleaved 1f1b needs train.micro_batches = ", m,
                            " to be a multiple of mesh.pipeline = ", p);
  else
    SHARDFLOW_REQUIRE_INPUT(v == 1 || m % g == 0, "pipeline schedule: interleaved 1f1b in rounds of ", g,
                            " needs micro-batches = ", m, " to be a multiple of ", g);
  if (kind == PipelineSchedule::GPipe && p > 1) {  // every forward (chunk 0), then every backward
    v_ = 1;
    total_ = m;
    warm_ = m;
    f_ = b_ = Count{m, 1};
  } else {
    // the k-th forward runs chunk (k / g) mod v of micro-batch (k / (g·v))·g + k mod g, the
    // k-th backward the chunks in reverse; w warm-up forwards, then the k-th backward after
    // forward w + k (while there is one)
    v_ = v;
    total_ = m * v;
    warm_ = v == 1 ? std::min(p - stage - 1, m) : std::min((p - stage - 1) * 2 + (v - 1) * g, total_);
    f_ = b_ = Count{g, v};  // (one chunk: the k-th step is micro-batch k whatever the round)
  }
  decide();
}

std::vector<PipelineStep> pipeline_schedule(PipelineSchedule kind, int stages, int stage, int micro_batches,
                                            int virtual_stages, int group) {
  ScheduleWalk w(kind, stages, stage, micro_batches, virtual_stages, group);
  std::vector<PipelineStep> out;
  out.reserve(w.size());
  for (; !w.done(); w.next()) out.push_back(w.step());
  return out;
}

namespace {
struct InFlight {
  std::vector<int> live, most;
  explicit InFlight(int v) : live(static_cast<size_t>(v), 0), most(static_cast<size_t>(v), 1) {}
  void add(const PipelineStep& s) {
    SHARDFLOW_REQUIRE(s.chunk >= 0 && s.chunk < static_cast<int>(live.size()), "in_flight: step of virtual stage ",
                      s.chunk, " outside [0, ", live.size(), ")");
    int& n = live[static_cast<size_t>(s.chunk)];
    n += s.forward ? 1 : -1;
    most[static_cast<size_t>(s.chunk)] = std::max(most[static_cast<size_t>(s.chunk)], n);
  }
};
}  // namespace

std::vector<int> in_flight(const std::vector<PipelineStep>& steps, int virtual_stages) {
  InFlight f(virtual_stages);
  for (const auto& s : steps) f.add(s);
  return f.most;
}

std::vector<int> in_flight(ScheduleWalk walk, int virtual_stages) {
  if (virtual_stages == 1 && walk.chunks() == 1) {
    // one chunk: the warm-up forwards, then one more before the first backward when there
    // is one left (the steps alternate from there)
    const int w = walk.warm_up(), total = static_cast<int>(walk.size() / 2);
    return {std::max(1, w < total ? w + 1 : w)};
  }
  // After the warm-up a forward and a backward alternate, each round of them running every
  // chunk p times, so every chunk's count repeats from one round to the next until the
  // forwards run out, and falls from there: its most is reached within the warm-up and
  // one round of pairs.
  InFlight f(virtual_stages);
  const size_t enough = static_cast<size_t>(walk.warm_up()) + 2 * static_cast<size_t>(walk.round());
  for (size_t k = 0; k < enough && !walk.done(); ++k, walk.next()) f.add(walk.step());
  return f.most;
}

}  // namespace shardflow::compile
