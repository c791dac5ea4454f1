// LayoutPlan (src/parallel): the one layout decider. On every mesh below, what the plan says
// a rank holds is what the trainer allocates on that rank (parameter, gradient and optimizer
// bytes, and the layout of every state tensor the checkpoints save), and the plan works for a
// mesh far larger than the world (no MPI).
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>

#include "comm/comm_set.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "comm/mesh.hpp"
#include "parallel/layout_plan.hpp"
#include "support/test_util.hpp"
#include "train/trainer.hpp"

using namespace shardflow;

namespace {

// 3 heads (uneven on 2 tensor ranks), F = 42, 3 layers (uneven on 2 stages).
std::string deck_text(const std::string& mesh, int zero, int micro, const std::string& extra = "",
                      const std::string& model_extra = "") {
  return "[mesh]\n" + mesh + "\n[model]\nvocab = 256\nseq = 15\nhidden = 30\nheads = 3\nffn = 42\nlayers = 3\n" +
         model_extra + "[train]\nsteps = 1\nglobal_batch = 8\nmicro_batches = " + std::to_string(micro) +
         "\nlr = 3e-3\nwarmup = 5\nseed = 11\ndata = \"" SHARDFLOW_CORPUS "\"\n[strategy]\nzero_stage = " +
         std::to_string(zero) + "\nfsdp_min_weight_size = 64\n" + extra;
}

struct Case {
  int ranks;
  std::string mesh;
  int zero, micro;
  std::string extra, model_extra;
};

const std::string kMoe = "experts = 4\ntop_k = 2\nmoe_every = 2\n";

std::vector<Case> cases() {
  std::vector<Case> c;
  for (int z = 0; z <= 3; ++z) {
    c.push_back({1, "data = 1", z, 1, "", ""});
    c.push_back({2, "data = 2", z, 1, "", ""});
    c.push_back({4, "data = 4", z, 2, "", ""});
    c.push_back({2, "tensor = 2", z, 1, "", ""});
    c.push_back({2, "pipeline = 2", z, 2, "", ""});
    c.push_back({4, "data = 2\ntensor = 2", z, 1, "", ""});
    c.push_back({4, "data = 2\npipeline = 2", z, 2, "", ""});
    c.push_back({2, "expert = 2", z, 1, "", kMoe});
    c.push_back({4, "expert = 2\ntensor = 2", z, 1, "sequence_parallel = true\n", kMoe});
  }
  for (int z = 1; z <= 3; ++z) {
    c.push_back({2, "fsdp = 2", z, 1, "", ""});
    c.push_back({4, "data = 2\nfsdp = 2", z, 1, "", ""});
    c.push_back({4, "fsdp = 2\ntensor = 2", z, 1, "", ""});
    c.push_back({4, "fsdp = 2\npipeline = 2", z, 2, "", ""});
    c.push_back({4, "fsdp = 2\nexpert = 2", z, 1, "", kMoe});
  }
  return c;
}

TEST(LayoutPlan, AgreesWithTheTrainerOnEveryRank) {
  int ran = 0;
  for (const auto& c : cases()) {
    if (c.ranks != test::world_size()) continue;
    const std::string text = deck_text(c.mesh, c.zero, c.micro, c.extra, c.model_extra);
    Deck deck = parse_deck(text, "test-deck");
    Mesh mesh(deck.mesh.to_mesh_shape(), MPI_COMM_WORLD);
    comm::CommSet comms(mesh, comm::Backend::Mpi);
    train::Trainer t(deck, mesh, comms);
    StrategyOptions so;
    so.zero_stage = c.zero;
    so.fsdp_min_weight_size = deck.strategy.fsdp_min_weight_size;
    parallel::LayoutPlan plan(ModelDescription(deck.model), mesh.shape(), so, deck.strategy.virtual_stages);
    const std::string what = mesh.shape().to_string() + " zero " + std::to_string(c.zero);
    const auto held = t.memory();
    const auto pred = plan.state_bytes(mesh.rank());
    EXPECT_EQ(pred.params, held.params) << what << " rank " << mesh.rank();
    EXPECT_EQ(pred.grads, held.grads) << what << " rank " << mesh.rank();
    EXPECT_EQ(pred.optimizer, held.optimizer) << what << " rank " << mesh.rank();
    for (const auto& st : t.state_tensors()) {
      const bool moment = st.name.size() > 7 && st.name.compare(st.name.size() - 7, 7, ".adam_m") == 0;
      const bool moment2 = st.name.size() > 7 && st.name.compare(st.name.size() - 7, 7, ".adam_v") == 0;
      const std::string base = moment || moment2 ? st.name.substr(0, st.name.size() - 7) : st.name;
      const Layout l = plan.layout(plan.param(base), moment || moment2 ? TensorRole::OptimizerState : TensorRole::Param);
      EXPECT_EQ(l.box(mesh.rank()).extent, st.layout.box(mesh.rank()).extent) << what << " " << st.name;
      EXPECT_EQ(l.box(mesh.rank()).offset, st.layout.box(mesh.rank()).offset) << what << " " << st.name;
      EXPECT_EQ(l.local_numel(mesh.rank()), st.numel) << what << " " << st.name;
    }
    ++ran;
  }
  if (test::world_size() <= 4) {
    EXPECT_GT(ran, 0);
  }
}

TEST(LayoutPlan, HugeMeshWithoutMpi) {
  // 16,384 devices, 96 layers: data 16 x fsdp 8 x pipeline 16 x tensor 8, ZeRO-3
  ModelConfig m;
  m.vocab = 50304;
  m.seq = 2048;
  m.hidden = 12288;
  m.heads = 96;
  m.ffn = 4 * 12288;
  m.layers = 96;
  MeshShape shape({"data", "fsdp", "pipeline", "tensor"}, {16, 8, 16, 8});
  StrategyOptions so;
  so.zero_stage = 3;
  const auto t0 = std::chrono::steady_clock::now();
  parallel::LayoutPlan plan(ModelDescription(m), shape, so);
  const auto b = plan.state_bytes(12345);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 5.0);
  // ~175B parameters over pipeline 16 x tensor 8 x fsdp 8: about 171M elements per rank,
  // each as f32 parameter + gradient + two moments
  const double per_rank = static_cast<double>(ModelDescription(m).parameter_count()) / (16 * 8 * 8);
  EXPECT_NEAR(static_cast<double>(b.total()) / (16 * per_rank), 1.0, 0.1);
  EXPECT_EQ(plan.groups().zero, (parallel::Axes{"fsdp"}));
  EXPECT_EQ(plan.groups().replica, (parallel::Axes{"data"}));
}

TEST(LayoutPlan, RefusesWhatCannotBeSharded) {
  ModelConfig m;  // 4 heads
  StrategyOptions so;
  EXPECT_THROW(parallel::LayoutPlan(ModelDescription(m), MeshShape({"tensor"}, {8}), so), InputError);
  EXPECT_THROW(parallel::LayoutPlan(ModelDescription(m), MeshShape({"expert"}, {2}), so), InputError);
  EXPECT_THROW(parallel::LayoutPlan(ModelDescription(m), MeshShape({"fsdp"}, {2}), so), InputError);  // zero 0
  EXPECT_THROW(parallel::LayoutPlan(ModelDescription(m), MeshShape({"pipeline"}, {2}), so, 3), InputError);
}

}  // namespace
