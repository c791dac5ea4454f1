// Pipeline schedules (src/compile/schedule.hpp) alone: each stage runs every forward and
// backward exactly once, a backward after its forward; 1F1B warms up p − s − 1 forwards
// and keeps at most p micro-batches in flight; the interleaved order matches Megatron's on a
// hand-written case; and executing every stage's order against the cross-stage dependencies
// (forward of chunk c needs chunk c − 1's, backward of c needs c + 1's) never deadlocks.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <tuple>

#include "compile/schedule.hpp"
#include "core/error.hpp"

using namespace shardflow;
using compile::PipelineStep;

namespace {

// Runs all stages' orders round-robin, each step once its inputs exist; true when all finish.
bool runs_to_completion(PipelineSchedule kind, int p, int m, int v) {
  std::vector<std::vector<PipelineStep>> order;
  for (int s = 0; s < p; ++s) order.push_back(compile::pipeline_schedule(kind, p, s, m, v));
  std::vector<size_t> next(static_cast<size_t>(p), 0);
  std::set<std::tuple<bool, int, int>> done;  // (forward, global chunk, micro-batch)
  const int chunks = p * v;
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < p; ++s) {
      auto& k = next[static_cast<size_t>(s)];
      if (k == order[static_cast<size_t>(s)].size()) continue;
      const PipelineStep st = order[static_cast<size_t>(s)][k];
      const int gc = st.chunk * p + s;
      bool ready;
      if (st.forward)
        ready = gc == 0 || done.count({true, gc - 1, st.micro_batch});
      else
        ready = done.count({true, gc, st.micro_batch}) &&
                (gc == chunks - 1 || done.count({false, gc + 1, st.micro_batch}));
      if (!ready) continue;
      done.insert({st.forward, gc, st.micro_batch});
      ++k;
      progress = true;
    }
  }
  for (int s = 0; s < p; ++s)
    if (next[static_cast<size_t>(s)] != order[static_cast<size_t>(s)].size()) return false;
  return true;
}

// Every forward and every backward of `steps` once, micro-batches in [0, m), each backward
// after its forward, `each` of either.
void expect_each_step_once(const std::vector<PipelineStep>& steps, int m, size_t each, const std::string& what) {
  std::set<std::pair<int, int>> fwd, bwd;
  for (const auto& st : steps) {
    ASSERT_GE(st.micro_batch, 0) << what;
    ASSERT_LT(st.micro_batch, m) << what;
    if (st.forward) {
      EXPECT_TRUE(fwd.insert({st.chunk, st.micro_batch}).second) << what;
    } else {
      EXPECT_TRUE(fwd.count({st.chunk, st.micro_batch})) << what << ": backward before forward";
      EXPECT_TRUE(bwd.insert({st.chunk, st.micro_batch}).second) << what;
    }
  }
  EXPECT_EQ(fwd.size(), each) << what;
  EXPECT_EQ(bwd.size(), each) << what;
}

}  // namespace

// The schedule is Megatron-LM's: the k-th forward is chunk (k / p) mod v of micro-batch
// (k / (p·v))·p + k mod p, after w warm-up forwards one forward and one backward alternate
// (written here from that definition, with divisions; the library counts up); gpipe's is
// every forward, then every backward.
TEST(Schedule, OneFOneBIsTheDefinition) {
  for (int p : {1, 2, 3, 4, 8}) {
    for (int v : {1, 2, 3}) {
      for (int m : {1, 2, 3, 4, 8, 12, 16}) {
        if (v > 1 && m % p != 0) continue;
        for (int st = 0; st < p; ++st) {
          const int total = m * v;
          const int w = v == 1 ? std::min(p - st - 1, m) : std::min((p - st - 1) * 2 + (v - 1) * p, total);
          auto fwd = [&](int k) { return compile::PipelineStep{true, (k / p) % v, (k / (p * v)) * p + k % p}; };
          auto bwd = [&](int k) {
            return compile::PipelineStep{false, v - 1 - (k / p) % v, (k / (p * v)) * p + k % p};
          };
          std::vector<compile::PipelineStep> want;
          for (int k = 0; k < w; ++k) want.push_back(fwd(k));
          for (int k = 0; k < total; ++k) {
            if (w + k < total) want.push_back(fwd(w + k));
            want.push_back(bwd(k));
          }
          EXPECT_EQ(compile::pipeline_schedule(PipelineSchedule::OneFOneB, p, st, m, v), want)
              << "p " << p << " v " << v << " m " << m << " stage " << st;
          EXPECT_EQ(compile::in_flight(compile::ScheduleWalk(PipelineSchedule::OneFOneB, p, st, m, v), v),
                    compile::in_flight(want, v))
              << "p " << p << " v " << v << " m " << m << " stage " << st;
          if (v > 1) continue;
          if (p > 1) {  // gpipe: every forward, then every backward (one stage: as 1f1b)
            want.clear();
            for (int j = 0; j < m; ++j) want.push_back({true, 0, j});
            for (int j = 0; j < m; ++j) want.push_back({false, 0, j});
          }
          EXPECT_EQ(compile::pipeline_schedule(PipelineSchedule::GPipe, p, st, m), want)
              << "gpipe p " << p << " m " << m << " stage " << st;
          EXPECT_EQ(compile::in_flight(compile::ScheduleWalk(PipelineSchedule::GPipe, p, st, m), 1),
                    compile::in_flight(want, 1))
              << "gpipe p " << p << " m " << m << " stage " << st;
        }
      }
    }
  }
}

// Interleaved in rounds of g micro-batches (`group`, the simulator's class programs with fewer
// micro-batches than stages): the definition above with g in place of p; g = p is the
// default order; every step once, each backward after its forward; a walk's in-flight
// counts are the list's; a micro-batch count that is not a multiple of g is refused by name.
TEST(Schedule, InterleavedInRoundsOfAnotherSize) {
  for (int p : {2, 4, 12, 35})
    for (int v : {2, 3})
      for (int g : {1, 2, 4, 8})
        for (int m : {g, 2 * g, 3 * g})
          for (int st = 0; st < p; ++st) {
            const int total = m * v, w = std::min((p - st - 1) * 2 + (v - 1) * g, total);
            auto mb = [&](int k) { return (k / (g * v)) * g + k % g; };
            std::vector<PipelineStep> want;
            for (int k = 0; k < w; ++k) want.push_back({true, (k / g) % v, mb(k)});
            for (int k = 0; k < total; ++k) {
              if (w + k < total) want.push_back({true, ((w + k) / g) % v, mb(w + k)});
              want.push_back({false, v - 1 - (k / g) % v, mb(k)});
            }
            const auto got = compile::pipeline_schedule(PipelineSchedule::OneFOneB, p, st, m, v, g);
            ASSERT_EQ(got, want) << "p " << p << " v " << v << " g " << g << " m " << m << " stage " << st;
            EXPECT_EQ(compile::in_flight(compile::ScheduleWalk(PipelineSchedule::OneFOneB, p, st, m, v, g), v),
                      compile::in_flight(want, v))
                << "p " << p << " v " << v << " g " << g << " m " << m << " stage " << st;
            expect_each_step_once(got, m, static_cast<size_t>(total),
                                  "p " + std::to_string(p) + " g " + std::to_string(g));
            if (g == p) {
              EXPECT_EQ(got, compile::pipeline_schedule(PipelineSchedule::OneFOneB, p, st, m, v)) << p << " " << m;
            }
          }
  // without interleaving the round does not change the order
  EXPECT_EQ(compile::pipeline_schedule(PipelineSchedule::OneFOneB, 8, 1, 6, 1, 4),
            compile::pipeline_schedule(PipelineSchedule::OneFOneB, 8, 1, 6, 1));
  try {
    compile::pipeline_schedule(PipelineSchedule::OneFOneB, 12, 0, 6, 2, 4);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("rounds of 4 needs micro-batches = 6"), std::string::npos) << e.what();
  }
  EXPECT_THROW(compile::pipeline_schedule(PipelineSchedule::OneFOneB, 12, 0, 8, 2, -1), InputError);
}

TEST(Schedule, EveryStepOnceAndBackwardAfterForward) {
  for (auto kind : {PipelineSchedule::GPipe, PipelineSchedule::OneFOneB})
    for (int p : {1, 2, 3, 4})
      for (int v : {1, 2, 3})
        for (int m : {1, 2, 4, 8, 12}) {
          if (v > 1 && (kind == PipelineSchedule::GPipe || m % p != 0)) continue;
          for (int s = 0; s < p; ++s) {
            const auto steps = compile::pipeline_schedule(kind, p, s, m, v);
            const int vv = kind == PipelineSchedule::GPipe ? 1 : v;
            ASSERT_EQ(steps.size(), static_cast<size_t>(2 * m * vv)) << p << " " << v << " " << m;
            expect_each_step_once(steps, m, static_cast<size_t>(m * vv),
                                  "p " + std::to_string(p) + " v " + std::to_string(v) + " m " + std::to_string(m));
          }
        }
}

TEST(Schedule, OneFOneBWarmUpAndInFlight) {
  const int p = 4, m = 8;
  for (int s = 0; s < p; ++s) {
    const auto steps = compile::pipeline_schedule(PipelineSchedule::OneFOneB, p, s, m);
    int warm = 0;
    while (steps[static_cast<size_t>(warm)].forward) ++warm;
    EXPECT_EQ(warm, p - s - 1 + 1) << "stage " << s;  // the warm-up, then the first 1F of 1F1B
    EXPECT_EQ(compile::in_flight(steps, 1)[0], p - s) << "stage " << s;
  }
  const auto g = compile::pipeline_schedule(PipelineSchedule::GPipe, p, 0, m);
  EXPECT_EQ(compile::in_flight(g, 1)[0], m);
}

TEST(Schedule, InterleavedMatchesMegatronOnAHandWrittenCase) {
  // p = 2, v = 2, m = 2, stage 0: four warm-up forwards (chunks 0, 0, 1, 1), then the
  // backwards from the last chunk back.
  const std::vector<PipelineStep> want = {{true, 0, 0},  {true, 0, 1},  {true, 1, 0},  {true, 1, 1},
                                          {false, 1, 0}, {false, 1, 1}, {false, 0, 0}, {false, 0, 1}};
  EXPECT_EQ(compile::pipeline_schedule(PipelineSchedule::OneFOneB, 2, 0, 2, 2), want);
  // stage 1: two warm-up forwards, then 1F1B
  const std::vector<PipelineStep> want1 = {{true, 0, 0},  {true, 0, 1},  {true, 1, 0},  {false, 1, 0},
                                           {true, 1, 1},  {false, 1, 1}, {false, 0, 0}, {false, 0, 1}};
  EXPECT_EQ(compile::pipeline_schedule(PipelineSchedule::OneFOneB, 2, 1, 2, 2), want1);
}

TEST(Schedule, NoScheduleDeadlocks) {
  for (auto kind : {PipelineSchedule::GPipe, PipelineSchedule::OneFOneB})
    for (int p : {1, 2, 3, 4})
      for (int m : {1, 2, 4, 8})
        EXPECT_TRUE(runs_to_completion(kind, p, m, 1)) << schedule_name(kind) << " p " << p << " m " << m;
  for (int p : {2, 3, 4})
    for (int v : {2, 3})
      for (int m : {p, 2 * p, 4 * p})
        EXPECT_TRUE(runs_to_completion(PipelineSchedule::OneFOneB, p, m, v)) << "p " << p << " v " << v << " m " << m;
}

TEST(Schedule, BadSizesNameTheValue) {
  EXPECT_THROW(compile::pipeline_schedule(PipelineSchedule::OneFOneB, 0, 0, 4), InputError);
  EXPECT_THROW(compile::pipeline_schedule(PipelineSchedule::OneFOneB, 2, 2, 4), InputError);
  EXPECT_THROW(compile::pipeline_schedule(PipelineSchedule::OneFOneB, 2, 0, 0), InputError);
  try {
    compile::pipeline_schedule(PipelineSchedule::OneFOneB, 2, 0, 3, 2);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("train.micro_batches = 3"), std::string::npos) << e.what();
  }
}
