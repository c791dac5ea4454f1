// Invariants 2 and 3: training on any mesh gives the losses and parameters of one rank
// (to fp tolerance), and the same mesh twice gives bitwise identical results.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <map>

#include "comm/comm_set.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "comm/mesh.hpp"
#include "support/test_util.hpp"
#include "train/trainer.hpp"

using namespace shardflow;

namespace {

// A small model with shapes that split unevenly on 2 and 4 ranks (S = 15, 3H = 90, H = 30).
std::string deck_text(const std::string& mesh, int zero, int micro, const std::string& extra = "") {
  return "[mesh]\n" + mesh +
         "\n[model]\nvocab = 256\nseq = 15\nhidden = 30\nheads = 3\nffn = 42\nlayers = 2\n"
         "[train]\nsteps = 20\nglobal_batch = 8\nmicro_batches = " +
         std::to_string(micro) + "\nlr = 3e-3\nwarmup = 5\nseed = 7\ndata = \"" SHARDFLOW_CORPUS "\"\n" +
         "[strategy]\nzero_stage = " + std::to_string(zero) + "\nfsdp_min_weight_size = 64\nprefetch = 1\n" + extra;
}

struct TrainRun {
  std::vector<double> losses;
  std::map<std::string, std::vector<float>> params;
};

TrainRun run_training(const std::string& text, MPI_Comm world, int steps = 20) {
  Deck deck = parse_deck(text, "test-deck");
  Mesh mesh(deck.mesh.to_mesh_shape(), world);
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  train::Trainer t(deck, mesh, comms);
  TrainRun r;
  for (int s = 0; s < steps; ++s) r.losses.push_back(t.train_step().loss);
  for (const auto& n : t.parameter_names()) r.params[n] = t.gather_parameter(n);
  return r;
}

// The one-rank reference, computed on rank 0 and broadcast.
const TrainRun& reference() {
  static TrainRun ref;
  static bool done = false;
  if (done) return ref;
  const int me = test::world_rank();
  if (me == 0) ref = run_training(deck_text("data = 1", 0, 1), MPI_COMM_SELF);
  int nl = static_cast<int>(ref.losses.size());
  MPI_Bcast(&nl, 1, MPI_INT, 0, MPI_COMM_WORLD);
  ref.losses.resize(static_cast<size_t>(nl));
  MPI_Bcast(ref.losses.data(), nl, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  // parameter names and sizes are the same everywhere: take them from a local description
  Deck d = parse_deck(deck_text("data = 1", 0, 1), "test-deck");
  if (me != 0) {
    TrainRun tmp = run_training(deck_text("data = 1", 0, 1), MPI_COMM_SELF, 0);
    for (auto& kv : tmp.params) ref.params[kv.first].resize(kv.second.size());
  }
  for (auto& kv : ref.params)
    MPI_Bcast(kv.second.data(), static_cast<int>(kv.second.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  done = true;
  return ref;
}

void expect_close(const TrainRun& got, const TrainRun& ref, double loss_rtol, double param_tol, const std::string& what) {
  ASSERT_EQ(got.losses.size(), ref.losses.size());
  for (size_t i = 0; i < ref.losses.size(); ++i)
    EXPECT_NEAR(got.losses[i], ref.losses[i], loss_rtol * std::abs(ref.losses[i])) << what << " step " << i + 1;
  for (const auto& kv : ref.params) {
    const auto& g = got.params.at(kv.first);
    ASSERT_EQ(g.size(), kv.second.size()) << kv.first;
    double worst = 0;
    for (size_t i = 0; i < g.size(); ++i) worst = std::max(worst, std::abs(double(g[i]) - double(kv.second[i])));
    EXPECT_LE(worst, param_tol) << what << " parameter " << kv.first;
  }
}

std::string mesh_for(const std::string& kind, int n) {
  if (kind == "dp") return "data = " + std::to_string(n);
  if (kind == "fsdp") return "data = 1\nfsdp = " + std::to_string(n);
  return "data = 2\nfsdp = " + std::to_string(n / 2);
}

}  // namespace

// One rank, gradient accumulation: 2 and 4 micro-batches give the single-batch result.
TEST(TrainEquivalence, MicroBatchesMatchOneBatch) {
  const auto& ref = reference();
  for (int micro : {2, 4}) {
    TrainRun r = run_training(deck_text("data = 1", 0, micro), MPI_COMM_SELF);
    expect_close(r, ref, 1e-5, 1e-4, "micro_batches=" + std::to_string(micro));
  }
}

struct Case {
  const char* name;
  const char* mesh_kind;
  int zero;
  int micro;
};

class Sharded : public ::testing::TestWithParam<Case> {};

TEST_P(Sharded, MatchesOneRankAndIsBitwiseReproducible) {
  const int n = test::world_size();
  const Case c = GetParam();
  if (n == 1) GTEST_SKIP() << "needs more than one rank";
  if (std::string(c.mesh_kind) == "hsdp" && n < 4) GTEST_SKIP() << "data x fsdp needs 4 ranks";
  const auto& ref = reference();
  const std::string text = deck_text(mesh_for(c.mesh_kind, n), c.zero, c.micro);
  TrainRun a = run_training(text, MPI_COMM_WORLD);
  expect_close(a, ref, 1e-5, 1e-4, c.name);
  TrainRun b = run_training(text, MPI_COMM_WORLD);
  EXPECT_EQ(a.losses, b.losses) << c.name << ": not bitwise reproducible";
  for (const auto& kv : a.params) EXPECT_EQ(kv.second, b.params.at(kv.first)) << c.name << " " << kv.first;
}

INSTANTIATE_TEST_SUITE_P(Strategies, Sharded,
                         ::testing::Values(Case{"dp", "dp", 0, 1}, Case{"zero1", "dp", 1, 1},
                                           Case{"zero2", "dp", 2, 1}, Case{"fsdp_zero3", "fsdp", 3, 1},
                                           Case{"fsdp_zero3_micro2", "fsdp", 3, 2}, Case{"zero2_micro2", "dp", 2, 2},
                                           Case{"hsdp_zero3", "hsdp", 3, 1}, Case{"hsdp_zero2", "hsdp", 2, 1}),
                         [](const ::testing::TestParamInfo<Case>& pinfo) { return std::string(pinfo.param.name); });

// gather_dtype / grad_scatter_dtype are honoured: bf16 moves change the numbers a little
// (so they are really used) but training still tracks the f32 run.
TEST(TrainEquivalence, Bf16GatherAndScatterAreHonoured) {
  const int n = test::world_size();
  if (n == 1) GTEST_SKIP() << "needs more than one rank";
  const auto& ref = reference();
  TrainRun r = run_training(deck_text(mesh_for("fsdp", n), 3, 1, "gather_dtype = \"bf16\"\ngrad_scatter_dtype = \"bf16\"\n"),
                MPI_COMM_WORLD);
  bool differs = false;
  for (size_t i = 0; i < ref.losses.size(); ++i) {
    differs = differs || r.losses[i] != ref.losses[i];
    EXPECT_NEAR(r.losses[i], ref.losses[i], 2e-2 * ref.losses[i]) << "step " << i + 1;
  }
  EXPECT_TRUE(differs) << "bf16 collectives gave exactly the f32 losses: the dtype was not used";
}

TEST(TrainEquivalence, BadDecksAreRefusedOnEveryRank) {
  const int n = test::world_size();
  // global batch 8 not divisible by data-parallel size x micro-batches
  std::string msg;
  try {
    run_training(deck_text("data = " + std::to_string(n), 0, 3), MPI_COMM_WORLD, 0);
  } catch (const InputError& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("train.global_batch = 8"), std::string::npos) << msg;
  EXPECT_TRUE(test::all_ranks(!msg.empty()));
  if (n > 1) {
    msg.clear();
    try {
      run_training(deck_text("data = 1\nfsdp = " + std::to_string(n), 0, 1), MPI_COMM_WORLD, 0);
    } catch (const InputError& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find("zero_stage"), std::string::npos) << msg;
    EXPECT_TRUE(test::all_ranks(!msg.empty()));
  }
}
