#include "compile/schedule.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace shardflow::compile {

std::vector<PipelineStep> pipeline_schedule(PipelineSchedule kind, int stages, int stage, int micro_batches,
                                            int virtual_stages) {
  const int p = stages, m = micro_batches, v = virtual_stages;
  SHARDFLOW_REQUIRE_INPUT(p >= 1, "pipeline schedule: mesh.pipeline = ", p, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(stage >= 0 && stage < p, "pipeline schedule: stage ", stage, " is outside [0, ", p, ")");
  SHARDFLOW_REQUIRE_INPUT(m >= 1, "pipeline schedule: train.micro_batches = ", m, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(v >= 1, "pipeline schedule: strategy.virtual_stages = ", v, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(v == 1 || m % p == 0, "pipeline schedule: interleaved 1f1b needs train.micro_batches = ",
                          m, " to be a multiple of mesh.pipeline = ", p);
  std::vector<PipelineStep> out;
  out.reserve(2 * static_cast<size_t>(m) * static_cast<size_t>(kind == PipelineSchedule::GPipe && p > 1 ? 1 : v));
  if (kind == PipelineSchedule::GPipe && p > 1) {
    for (int j = 0; j < m; ++j) out.push_back({true, 0, j});
    for (int j = 0; j < m; ++j) out.push_back({false, 0, j});
    return out;
  }
  const int total = m * v;
  const int w = v == 1 ? std::min(p - stage - 1, m) : std::min((p - stage - 1) * 2 + (v - 1) * p, total);
  // The k-th forward runs chunk (k / p) mod v of micro-batch (k / (p·v))·p + k mod p (Megatron's
  // interleaved order; chunk 0 and micro-batch k without interleaving), the k-th backward
  // the chunks in reverse. Counted up step by step (the simulator makes a schedule per stage
  // of thousands of micro-batches: no divisions).
  struct Walk {
    int p, v, r = 0, chunk = 0, round = 0;  // k = (round·v + chunk)·p + r
    int micro_batch() const { return round * p + r; }
    void next() {
      if (++r < p) return;
      r = 0;
      if (++chunk < v) return;
      chunk = 0;
      ++round;
    }
  };
  Walk f{p, v}, b{p, v};
  for (int k = 0; k < w; ++k, f.next()) out.push_back({true, f.chunk, f.micro_batch()});
  for (int k = 0; k < total; ++k, b.next()) {
    if (w + k < total) {
      out.push_back({true, f.chunk, f.micro_batch()});
      f.next();
    }
    out.push_back({false, v - 1 - b.chunk, b.micro_batch()});
  }
  return out;
}

std::vector<int> in_flight(const std::vector<PipelineStep>& steps, int virtual_stages) {
  std::vector<int> live(static_cast<size_t>(virtual_stages), 0), most(static_cast<size_t>(virtual_stages), 1);
  for (const auto& s : steps) {
    SHARDFLOW_REQUIRE(s.chunk >= 0 && s.chunk < virtual_stages, "in_flight: step of virtual stage ", s.chunk,
                      " outside [0, ", virtual_stages, ")");
    int& n = live[static_cast<size_t>(s.chunk)];
    n += s.forward ? 1 : -1;
    most[static_cast<size_t>(s.chunk)] = std::max(most[static_cast<size_t>(s.chunk)], n);
  }
  return most;
}

}  // namespace shardflow::compile
