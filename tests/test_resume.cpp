// Invariant 5: a checkpoint saved on mesh A (any world size, any ZeRO stage) and restored
// on mesh B continues as the uninterrupted run would: losses to the sharded-vs-unsharded
// tolerance, bitwise when A = B.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <filesystem>

#include "ckpt/checkpoint.hpp"
#include "comm/comm_set.hpp"
#include "config/deck.hpp"
#include "comm/mesh.hpp"
#include "support/resume_run.hpp"
#include "support/test_util.hpp"
#include "train/trainer.hpp"

using namespace shardflow;

namespace {

constexpr int kSaveAt = 3, kTotal = 6;

struct Config {
  int ranks;
  std::string kind;  // dp, z1, z2, z3 (z3 on fsdp), hsdp (z3 on data x fsdp)
  std::string model_extra = "";  // more [model] keys
  std::string name() const { return kind + "@" + std::to_string(ranks) + (model_extra.empty() ? "" : "+"); }
};

std::string deck_text(const Config& c) {
  std::string mesh, zero = "0";
  if (c.kind == "dp") mesh = "data = " + std::to_string(c.ranks);
  if (c.kind == "z1") mesh = "data = " + std::to_string(c.ranks), zero = "1";
  if (c.kind == "z2") mesh = "data = " + std::to_string(c.ranks), zero = "2";
  if (c.kind == "z3") mesh = "data = 1\nfsdp = " + std::to_string(c.ranks), zero = "3";
  if (c.kind == "hsdp") mesh = "data = 2\nfsdp = " + std::to_string(c.ranks / 2), zero = "3";
  return "[mesh]\n" + mesh + "\n[model]\nvocab = 256\nseq = 15\nhidden = 30\nheads = 3\nffn = 42\nlayers = 2\n" +
         c.model_extra +
         "[train]\nsteps = 6\nglobal_batch = 8\nlr = 3e-3\nwarmup = 2\nseed = 11\ndata = \"" SHARDFLOW_CORPUS
         "\"\n[strategy]\nfsdp_min_weight_size = 64\nzero_stage = " +
         zero + "\n";
}

/// Runs config c: `from_step` > 0 restores `dir` first; steps up to `to_step`; saves at
/// kSaveAt into `save_dir` when given. Returns the losses of the steps run.
std::vector<double> run(const Config& c, int from_step, int to_step, const std::string& dir,
                        const std::string& save_dir) {
  return test::run_resumable({deck_text(c), c.name(), c.ranks, from_step, to_step, dir, save_dir, kSaveAt});
}

std::string scratch_dir(const std::string& tag) { return test::fresh_scratch_dir("shardflow_resume", tag); }

}  // namespace

TEST(Resume, AnyMeshAndStageContinuesTheUninterruptedRun) {
  const int n = test::world_size();
  std::vector<Config> configs;
  for (int r = 1; r <= n; r *= 2)
    for (const char* k : {"dp", "z1", "z2", "z3", "hsdp"}) {
      if (std::string(k) == "hsdp" && r < 4) continue;
      if (r == 1 && std::string(k) != "dp") continue;  // one rank: all stages are the same run
      configs.push_back({r, k});
    }
  // the uninterrupted one-rank run
  const auto ref = run({1, "dp"}, 0, kTotal, "", "");
  size_t pairs = 0;
  for (size_t a = 0; a < configs.size(); ++a) {
    const std::string dir = scratch_dir(configs[a].name());
    const auto first = run(configs[a], 0, kSaveAt, "", dir);
    for (int s = 0; s < kSaveAt; ++s)
      EXPECT_NEAR(first[static_cast<size_t>(s)], ref[static_cast<size_t>(s)], 1e-5 * ref[static_cast<size_t>(s)]);
    // restore onto the same config and onto two others (rotating through the list)
    for (size_t k : {a, (a + 1) % configs.size(), (a + 3) % configs.size()}) {
      const auto& b = configs[k];
      const auto cont = run(b, kSaveAt, kTotal, dir, "");
      for (int s = kSaveAt; s < kTotal; ++s)
        EXPECT_NEAR(cont[static_cast<size_t>(s - kSaveAt)], ref[static_cast<size_t>(s)],
                    1e-5 * ref[static_cast<size_t>(s)])
            << "saved on " << configs[a].name() << ", restored on " << b.name() << ", step " << s + 1;
      if (k == a) {  // same mesh: bitwise equal to the uninterrupted run on that mesh
        const auto whole = run(b, 0, kTotal, "", "");
        for (int s = kSaveAt; s < kTotal; ++s)
          EXPECT_EQ(cont[static_cast<size_t>(s - kSaveAt)], whole[static_cast<size_t>(s)])
              << "same mesh " << b.name() << " step " << s + 1;
      }
      ++pairs;
    }
    if (test::world_rank() == 0) std::filesystem::remove_all(dir);
  }
  EXPECT_GE(pairs, configs.size() * 3);
}

// Attention dropout's masks are keyed by the step number, which the checkpoint carries: a run
// restored at step 3, on its own mesh or another, drops at steps 4-6 what the uninterrupted
// run drops (losses to the sharded tolerance, bitwise on the same mesh).
TEST(Resume, AttentionDropoutContinuesTheUninterruptedRun) {
  const int n = test::world_size();
  const std::string drop = "attention_dropout = 0.3\n";
  std::vector<Config> configs{{1, "dp", drop}};
  if (n >= 2) configs.push_back({n, "z3", drop});
  if (n >= 2) configs.push_back({n, "dp", drop});
  const auto ref = run({1, "dp", drop}, 0, kTotal, "", "");
  const auto plain = run({1, "dp"}, 0, kTotal, "", "");
  EXPECT_NE(ref.back(), plain.back());  // the deck does drop
  for (size_t a = 0; a < configs.size(); ++a) {
    const std::string dir = scratch_dir("dropout-" + configs[a].name());
    run(configs[a], 0, kSaveAt, "", dir);
    for (size_t k : {a, (a + 1) % configs.size()}) {
      const auto cont = run(configs[k], kSaveAt, kTotal, dir, "");
      for (int s = kSaveAt; s < kTotal; ++s)
        EXPECT_NEAR(cont[static_cast<size_t>(s - kSaveAt)], ref[static_cast<size_t>(s)],
                    1e-5 * ref[static_cast<size_t>(s)])
            << "saved on " << configs[a].name() << ", restored on " << configs[k].name() << ", step " << s + 1;
      if (k == a) {
        const auto whole = run(configs[a], 0, kTotal, "", "");
        for (int s = kSaveAt; s < kTotal; ++s)
          EXPECT_EQ(cont[static_cast<size_t>(s - kSaveAt)], whole[static_cast<size_t>(s)])
              << "same mesh " << configs[a].name() << " step " << s + 1;
      }
    }
    if (test::world_rank() == 0) std::filesystem::remove_all(dir);
  }
}
