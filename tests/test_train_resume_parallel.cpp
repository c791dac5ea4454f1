// Checkpoints across tensor, sequence and pipeline parallel meshes: a checkpoint saved on
// mesh A (tensor / pipeline / composed, via Trainer::state_tensors()) and restored on mesh
// B continues as the uninterrupted one-rank run would (1e-5 relative), bitwise when A = B.
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
  std::string name;
  std::string mesh;
  int zero;
  std::string extra;
  std::string model_extra = "";
  int layers = 3;
  int seq = 15;
};

std::string deck_text(const Config& c) {
  return "[mesh]\n" + c.mesh + "\n[model]\nvocab = 256\nseq = " + std::to_string(c.seq) + "\nhidden = 30\nheads = 3\nffn = 42\nlayers = " +
         std::to_string(c.layers) + "\n" +
         c.model_extra +
         "[train]\nsteps = 6\nglobal_batch = 8\nmicro_batches = 2\nlr = 3e-3\nwarmup = 2\nseed = 5\ndata = "
         "\"" SHARDFLOW_CORPUS "\"\n[strategy]\nfsdp_min_weight_size = 64\nzero_stage = " +
         std::to_string(c.zero) + "\n" + c.extra;
}

/// Runs config c: `from_step` > 0 restores `dir` first; steps up to `to_step`; saves at
/// kSaveAt into `save_dir` when given. Returns the losses of the steps run.
std::vector<double> run(const Config& c, int from_step, int to_step, const std::string& dir,
                        const std::string& save_dir) {
  return test::run_resumable({deck_text(c), c.name, c.ranks, from_step, to_step, dir, save_dir, kSaveAt});
}

std::string scratch_dir(const std::string& tag) { return test::fresh_scratch_dir("shardflow_resume_par", tag); }

}  // namespace

void check_round_trips(const std::vector<Config>& configs) {
  const auto ref = run(configs[0], 0, kTotal, "", "");
  for (size_t a = 0; a < configs.size(); ++a) {
    const std::string dir = scratch_dir(configs[a].name);
    const auto first = run(configs[a], 0, kSaveAt, "", dir);
    for (int s = 0; s < kSaveAt; ++s)
      EXPECT_NEAR(first[static_cast<size_t>(s)], ref[static_cast<size_t>(s)], 1e-5 * ref[static_cast<size_t>(s)])
          << configs[a].name << " step " << s + 1;
    for (size_t k : {a, (a + 1) % configs.size(), (a + 2) % configs.size()}) {
      const auto& b = configs[k];
      const auto cont = run(b, kSaveAt, kTotal, dir, "");
      for (int s = kSaveAt; s < kTotal; ++s)
        EXPECT_NEAR(cont[static_cast<size_t>(s - kSaveAt)], ref[static_cast<size_t>(s)],
                    1e-5 * ref[static_cast<size_t>(s)])
            << "saved on " << configs[a].name << ", restored on " << b.name << ", step " << s + 1;
      if (k == a) {
        const auto whole = run(b, 0, kTotal, "", "");
        for (int s = kSaveAt; s < kTotal; ++s)
          EXPECT_EQ(cont[static_cast<size_t>(s - kSaveAt)], whole[static_cast<size_t>(s)])
              << "same mesh " << b.name << " step " << s + 1;
      }
    }
    if (test::world_rank() == 0) std::filesystem::remove_all(dir);
  }
}

TEST(TrainResumeParallel, TensorPipelineCheckpointsRestoreOnAnyMesh) {
  const int n = test::world_size();
  std::vector<Config> configs = {{1, "one", "data = 1", 0, ""}};
  if (n >= 2) {
    configs.push_back({2, "tp2", "data = 1\ntensor = 2", 0, ""});
    configs.push_back({2, "pp2", "data = 1\npipeline = 2", 0, ""});
    configs.push_back({2, "tp2_sp", "data = 1\ntensor = 2", 0, "sequence_parallel = true\n"});
  }
  if (n >= 4) {
    configs.push_back({4, "fsdp2_tp2", "data = 1\nfsdp = 2\ntensor = 2", 3, ""});
    configs.push_back({4, "pp2_tp2", "data = 1\npipeline = 2\ntensor = 2", 0, ""});
    configs.push_back({4, "dp2_pp2_z1", "data = 2\npipeline = 2", 1, ""});
  }
  check_round_trips(configs);
}

// Expert weights (split over the expert axis, and on F over the tensor axis) and their
// moments round-trip too.
TEST(TrainResumeParallel, ExpertCheckpointsRestoreOnAnyMesh) {
  const int n = test::world_size();
  const std::string moe = "experts = 4\ntop_k = 2\nmoe_every = 2\n";
  std::vector<Config> configs = {{1, "moe_one", "data = 1", 0, "", moe}};
  if (n >= 2) {
    configs.push_back({2, "moe_ep2", "data = 1\nexpert = 2", 0, "", moe});
    configs.push_back({2, "moe_dp2_z1", "data = 2", 1, "", moe});
    // expert weights split on F over tensor
    configs.push_back({2, "moe_tp2_sp", "data = 1\ntensor = 2", 0, "sequence_parallel = true\n", moe});
  }
  if (n >= 4) {
    configs.push_back({4, "moe_fsdp2_ep2", "data = 1\nfsdp = 2\nexpert = 2", 3, "", moe});
    configs.push_back({4, "moe_ep2_tp2", "data = 1\nexpert = 2\ntensor = 2", 0, "", moe});
  }
  check_round_trips(configs);
}

// Interleaved 1F1B places layers 0, 2 on stage 0 and 1, 3 on stage 1 (their Layouts pinned
// there): its checkpoints restore on meshes without interleaving and back.
TEST(TrainResumeParallel, InterleavedCheckpointsRestoreOnAnyMesh) {
  const int n = test::world_size();
  if (n < 2) GTEST_SKIP() << "needs a pipeline";
  const std::string v2 = "schedule = \"1f1b\"\nvirtual_stages = 2\n";
  std::vector<Config> configs = {{1, "l4_one", "data = 1", 0, "", "", 4},
                                 {2, "l4_pp2_v2", "data = 1\npipeline = 2", 0, v2, "", 4},
                                 {2, "l4_pp2", "data = 1\npipeline = 2", 0, "", "", 4}};
  if (n >= 4) configs.push_back({4, "l4_pp2_v2_tp2", "data = 1\npipeline = 2\ntensor = 2", 0, v2, "", 4});
  check_round_trips(configs);
}

// The Llama family (RoPE, 3 query heads sharing 1 kv head) and context parallelism: a
// checkpoint saved on context x tensor ranks restores on one rank, on data-parallel ranks and
// on context ranks alone, and continues as the uninterrupted run does.
TEST(TrainResumeParallel, LlamaContextCheckpointsRestoreOnAnyMesh) {
  const int n = test::world_size();
  const std::string llama = "family = \"llama\"\nkv_heads = 1\n";
  const Config one{1, "llama_one", "data = 1", 0, "", llama, 3, 16};
  const Config dp2{2, "llama_dp2", "data = 2", 1, "", llama, 3, 16};
  const Config cp2{2, "llama_cp2", "data = 1\ncontext = 2", 0, "", llama, 3, 16};
  const Config cp2_tp2{4, "llama_cp2_tp2", "data = 1\ncontext = 2\ntensor = 2", 0, "sequence_parallel = true\n",
                       llama, 3, 16};
  if (n >= 4)
    check_round_trips({cp2_tp2, one, dp2, cp2});
  else if (n >= 2)
    check_round_trips({cp2, one, dp2});
  else
    check_round_trips({one});
}
