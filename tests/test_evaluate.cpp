// The evaluation step (StepMode::Evaluate: the compiled forwards and the loss, no gradients)
// on every mesh:
//  - dense: equals the independent serial model (nn::GptModel::forward) on the same batch
//    and parameters, to 1e-5;
//  - dense and MoE: on the mesh it was compiled for, equals the cross-entropy of the first
//    training step of the same deck bitwise (the training step's forward, minus the aux loss);
//  - it changes nothing: two evaluations are bitwise equal.
#include <gtest/gtest.h>
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <cmath>

#include "comm/comm_set.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "comm/mesh.hpp"
#include "nn/gpt.hpp"
#include "support/test_util.hpp"
#include "train/trainer.hpp"

using namespace shardflow;

namespace {

std::string deck_text(const std::string& mesh, int zero, int micro, const std::string& model_extra,
                      const std::string& strategy_extra) {
  return "[mesh]\n" + mesh + "\n[model]\nvocab = 256\nseq = 15\nhidden = 30\nheads = 3\nffn = 42\nlayers = 4\n" +
         model_extra + "[train]\nsteps = 4\nglobal_batch = 8\nmicro_batches = " + std::to_string(micro) +
         "\nlr = 3e-3\nwarmup = 4\nseed = 7\ndata = \"" SHARDFLOW_CORPUS "\"\n[strategy]\nzero_stage = " +
         std::to_string(zero) + "\nprefetch = 1\nfsdp_min_weight_size = 64\n" + strategy_extra;
}

struct Batch {
  std::vector<int32_t> in, tg;
};
Batch step_batch(const Deck& d, int64_t step) {
  data::DataLoader loader(data::Corpus::load(d.train.data), static_cast<uint64_t>(d.train.seed), d.train.global_batch,
                          d.model.seq);
  auto b = loader.slice(step, 0, d.train.global_batch);
  return {std::vector<int32_t>(b.inputs.begin(), b.inputs.end()),
          std::vector<int32_t>(b.targets.begin(), b.targets.end())};
}

// nn::GptModel's mean cross-entropy of the deck's initial parameters on the batch
double serial_loss(const Deck& d, const Batch& b) {
  const nn::GptConfig cfg = nn::GptConfig::from(d.model);
  nn::GptModel<float> model(cfg, d.train.global_batch);
  model.init(static_cast<uint64_t>(d.train.seed));
  Kokkos::View<int32_t*> in("in", b.in.size()), tg("tg", b.tg.size());
  auto hi = Kokkos::create_mirror_view(in);
  auto ht = Kokkos::create_mirror_view(tg);
  for (size_t i = 0; i < b.in.size(); ++i) {
    hi(i) = b.in[i];
    ht(i) = b.tg[i];
  }
  Kokkos::deep_copy(in, hi);
  Kokkos::deep_copy(tg, ht);
  return model.forward(in, tg);
}

struct Case {
  int ranks;
  std::string mesh;
  int zero, micro;
  std::string model, strategy;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {1, "data = 1", 0, 1, "", ""},
      {1, "data = 1", 0, 2, "experts = 4\ntop_k = 2\nmoe_every = 2\n", ""},
      {2, "data = 2", 1, 1, "", ""},
      {2, "tensor = 2", 0, 1, "", "sequence_parallel = true\n"},
      {2, "pipeline = 2", 0, 4, "", ""},
      {2, "expert = 2", 0, 1, "experts = 4\ntop_k = 2\nmoe_every = 2\n", ""},
      {4, "fsdp = 2\npipeline = 2", 3, 2, "", ""},
      {4, "data = 2\npipeline = 2", 0, 2, "", "virtual_stages = 2\n"},
      {4, "expert = 2\ntensor = 2", 0, 1, "experts = 4\ntop_k = 1\nmoe_every = 1\n", "sequence_parallel = true\n"},
  };
  return c;
}

}  // namespace

TEST(Evaluate, EqualsTheTrainingForwardAndTheSerialModel) {
  int ran = 0;
  for (const auto& c : cases()) {
    if (c.ranks != test::world_size()) continue;
    ++ran;
    const Deck deck = parse_deck(deck_text(c.mesh, c.zero, c.micro, c.model, c.strategy), "evaluate");
    const std::string what = deck.mesh.to_mesh_shape().to_string() + (deck.model.is_moe() ? " moe" : "");
    Mesh mesh(deck.mesh.to_mesh_shape(), MPI_COMM_WORLD);
    comm::CommSet comms(mesh, comm::Backend::Mpi);
    const Batch b = step_batch(deck, 1);
    const double tokens = static_cast<double>(deck.train.global_batch * deck.model.seq);
    double eval_sum = 0, again = 0;
    {
      train::Trainer ev(deck, mesh, comms, /*evaluate=*/true);
      eval_sum = ev.evaluate(b.in, b.tg);
      again = ev.evaluate(b.in, b.tg);
      EXPECT_THROW(ev.train_step(), Error) << what;
    }
    EXPECT_EQ(eval_sum, again) << what;
    train::Trainer tr(deck, mesh, comms);
    const auto st = tr.train_step();
    if (deck.model.is_moe())  // loss = ce + aux: subtracting aux back may round the last bit
      EXPECT_NEAR(eval_sum / tokens, st.loss - st.aux_loss, 1e-12 * st.loss) << what;
    else
      EXPECT_EQ(eval_sum / tokens, st.loss) << what;
    if (!deck.model.is_moe()) {
      const double ref = serial_loss(deck, b);
      EXPECT_NEAR(eval_sum / tokens, ref, 1e-5 * ref) << what;
    }
  }
  if (test::world_size() <= 4) {
    EXPECT_GT(ran, 0);
  }
}

// Evaluation never drops: with model.attention_dropout the evaluation equals the one without
// (bitwise) and the serial model's forward, while the training step's forward does drop.
TEST(Evaluate, NeverDropsAttention) {
  const int n = test::world_size();
  if (n != 1 && n != 2 && n != 4) GTEST_SKIP() << "cases for 1, 2 and 4 ranks";
  const std::string mesh = n == 1 ? "data = 1" : n == 2 ? "tensor = 2" : "data = 2\npipeline = 2";
  const int micro = n == 4 ? 2 : 1;
  const Deck drop = parse_deck(deck_text(mesh, 0, micro, "attention_dropout = 0.3\n", ""), "evaluate-dropout");
  const Deck plain = parse_deck(deck_text(mesh, 0, micro, "", ""), "evaluate");
  Mesh m(drop.mesh.to_mesh_shape(), MPI_COMM_WORLD);
  comm::CommSet comms(m, comm::Backend::Mpi);
  const Batch b = step_batch(drop, 1);
  const double tokens = static_cast<double>(drop.train.global_batch * drop.model.seq);
  auto evaluate = [&](const Deck& d) { return train::Trainer(d, m, comms, /*evaluate=*/true).evaluate(b.in, b.tg); };
  const double with = evaluate(drop), without = evaluate(plain);
  EXPECT_EQ(with, without) << mesh;
  const double ref = serial_loss(drop, b);
  EXPECT_NEAR(with / tokens, ref, 1e-5 * ref) << mesh;
  train::Trainer tr(drop, m, comms);
  EXPECT_NE(tr.train_step().loss, with / tokens) << mesh;
}
