// The reference GPT: forward against a plain-loop transcription of MODEL.md, every
// parameter's gradient against central finite differences (f64, tiny config), parameter
// names and shapes, f32 against f64, micro-batch accumulation, bitwise determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "core/error.hpp"
#include "model/model_description.hpp"
#include "nn/gpt.hpp"
#include "nn/init.hpp"
#include "data/loader.hpp"
#include "nn/gpt_test_util.hpp"
#include "nn/nn_test_util.hpp"
#include "optim/adamw.hpp"

namespace {
using namespace shardflow::test::nn;
using shardflow::nn::GptConfig;
using shardflow::nn::GptModel;

GptConfig tiny() {
  GptConfig c;
  c.vocab = 7;
  c.seq = 4;
  c.hidden = 8;
  c.heads = 2;
  c.ffn = 6;
  c.layers = 2;
  return c;
}

/// MODEL.md's forward, transcribed with plain loops.
double reference_loss(const GptModel<double>& m, const std::vector<int32_t>& in, const std::vector<int32_t>& tg) {
  const GptConfig& c = m.config();
  const int64_t T = static_cast<int64_t>(in.size()), S = c.seq, H = c.hidden, A = c.heads, D = H / A, F = c.ffn;
  auto P = [&](const std::string& n) { return m.param(n).data(); };
  Vd x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < H; ++j) x[t * H + j] = P("embed.weight")[in[t] * H + j] + P("pos_embed.weight")[(t % S) * H + j];
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    Vd n = rmsnorm(x, P(p + "attn_norm.weight"), T, H);
    Vd qkv = matmul_t(n, P(p + "attn.qkv.weight"), T, H, 3 * H);
    Vd o(static_cast<size_t>(T * H));
    for (int64_t b = 0; b < T / S; ++b)
      for (int64_t a = 0; a < A; ++a)
        for (int64_t i = 0; i < S; ++i) {
          Vd sc(static_cast<size_t>(i + 1));
          double mx = -1e300, z = 0;
          for (int64_t j = 0; j <= i; ++j) {
            double d = 0;
            for (int64_t e = 0; e < D; ++e) d += qkv[(b * S + i) * 3 * H + a * D + e] * qkv[(b * S + j) * 3 * H + H + a * D + e];
            sc[j] = d / std::sqrt(double(D));
            mx = std::max(mx, sc[j]);
          }
          for (auto& v : sc) z += (v = std::exp(v - mx));
          for (int64_t e = 0; e < D; ++e) {
            double s = 0;
            for (int64_t j = 0; j <= i; ++j) s += sc[j] / z * qkv[(b * S + j) * 3 * H + 2 * H + a * D + e];
            o[(b * S + i) * H + a * D + e] = s;
          }
        }
    block_tail(x, o, P, p, T, H, F);
  }
  return head_loss(x, P("final_norm.weight"), P("lm_head.weight"), T, H, c.vocab, tg);
}

TEST(NnGpt, ParameterNamesShapesAndDecayFlags) {
  GptConfig c;  // quickstart
  const auto ps = shardflow::nn::gpt_parameters(c);
  ASSERT_EQ(ps.size(), size_t(2 + 6 * c.layers + 2));
  EXPECT_EQ(ps[0].name, "embed.weight");
  EXPECT_EQ(ps[0].shape, (shardflow::Shape{256, 128}));
  EXPECT_FALSE(ps[0].weight_decay);
  EXPECT_EQ(ps[1].name, "pos_embed.weight");
  EXPECT_FALSE(ps[1].weight_decay);
  EXPECT_EQ(ps[2].name, "layers.0.attn_norm.weight");
  EXPECT_FALSE(ps[2].weight_decay);
  EXPECT_EQ(ps[3].name, "layers.0.attn.qkv.weight");
  EXPECT_EQ(ps[3].shape, (shardflow::Shape{384, 128}));
  EXPECT_TRUE(ps[3].weight_decay);
  EXPECT_EQ(ps[4].name, "layers.0.attn.out.weight");
  EXPECT_EQ(ps[5].name, "layers.0.mlp_norm.weight");
  EXPECT_EQ(ps[6].name, "layers.0.mlp.gate_up.weight");
  EXPECT_EQ(ps[6].shape, (shardflow::Shape{688, 128}));
  EXPECT_EQ(ps[7].name, "layers.0.mlp.down.weight");
  EXPECT_EQ(ps[7].shape, (shardflow::Shape{128, 344}));
  EXPECT_EQ(ps[ps.size() - 2].name, "final_norm.weight");
  EXPECT_EQ(ps.back().name, "lm_head.weight");
  EXPECT_TRUE(ps.back().weight_decay);
  int64_t off = 0;
  for (const auto& p : ps) {
    EXPECT_EQ(p.offset, off);
    off += p.numel;
  }
  EXPECT_EQ(off, shardflow::nn::gpt_num_params(c));
  GptConfig bad = c;
  bad.heads = 3;
  EXPECT_THROW(bad.validate(), shardflow::InputError);
}

TEST(NnGpt, ForwardMatchesPlainLoopTranscriptionOfModelMd) {
  GptModel<double> m(tiny(), 3);
  randomise(m, 5);
  Tokens tk = make_tokens(3 * 4, 7, 6);
  const double loss = m.forward(tk.in, tk.tg);
  EXPECT_NEAR(loss, reference_loss(m, tk.vin, tk.vtg), 1e-12);
  EXPECT_EQ(m.forward_backward(tk.in, tk.tg), loss);
}

TEST(NnGpt, EveryGradientMatchesFiniteDifferences) {
  GptModel<double> m(tiny(), 2);
  randomise(m, 7);
  Tokens tk = make_tokens(2 * 4, 7, 8);
  m.forward_backward(tk.in, tk.tg);
  // keep a copy of the analytic gradients; the finite differences call forward only
  HVec g("g", m.grads_flat().extent(0));
  Kokkos::deep_copy(g, m.grads_flat());
  for (const auto& p : m.parameters()) {
    HVec gp(g.data() + p.offset, static_cast<size_t>(p.numel));
    check_fd(p.name.c_str(), m.param(p.name), gp, [&] { return m.forward(tk.in, tk.tg); }, 1e-6);
  }
}

TEST(NnGpt, MicroBatchAccumulationEqualsFullBatch) {
  GptModel<double> full(tiny(), 4), micro(tiny(), 2);
  randomise(full, 9);
  Kokkos::deep_copy(micro.params_flat(), full.params_flat());
  Tokens tk = make_tokens(4 * 4, 7, 10);
  const double loss = full.forward_backward(tk.in, tk.tg);
  double sum = 0;
  for (int k = 0; k < 2; ++k) {
    HTok in(tk.in.data() + k * 8, 8), tg(tk.tg.data() + k * 8, 8);
    sum += micro.forward_backward(in, tg, /*accumulate=*/k > 0, 1.0 / 16);
  }
  EXPECT_NEAR(sum / 2, loss, 1e-13);
  EXPECT_LT(max_abs_diff(micro.grads_flat(), full.grads_flat()), 1e-13);
}

TEST(NnGpt, FloatAgreesWithDouble) {
  GptConfig c = tiny();
  c.hidden = 16;
  c.seq = 8;
  GptModel<double> md(c, 2);
  GptModel<float> mf(c, 2);
  md.init(11);
  mf.init(11);
  for (size_t i = 0; i < md.params_flat().extent(0); ++i)
    ASSERT_EQ(static_cast<float>(md.params_flat()(i)), mf.params_flat()(i)) << "init differs at " << i;
  Tokens tk = make_tokens(16, 7, 12);
  const double ld = md.forward_backward(tk.in, tk.tg);
  const double lf = mf.forward_backward(tk.in, tk.tg);
  EXPECT_NEAR(lf, ld, 1e-5 * ld);
  EXPECT_NEAR(ld, std::log(7.0), 0.05);  // small init: near-uniform predictions
  double gmax = 0;
  for (size_t i = 0; i < md.grads_flat().extent(0); ++i) gmax = std::max(gmax, std::abs(md.grads_flat()(i)));
  for (size_t i = 0; i < md.grads_flat().extent(0); ++i)
    ASSERT_NEAR(mf.grads_flat()(i), md.grads_flat()(i), 1e-4 * gmax) << "gradient element " << i;
}

TEST(NnGpt, TwoRunsAreBitwiseIdentical) {
  GptConfig c = tiny();
  c.vocab = 256;
  c.seq = 16;
  c.hidden = 32;
  c.heads = 4;
  c.ffn = 40;
  GptModel<float> a(c, 3), b(c, 3);
  a.init(42);
  b.init(42);
  Tokens tk = make_tokens(3 * 16, 256, 13);
  for (int i = 0; i < 3 * 16; i += 5) tk.in(i) = 32;  // repeated tokens
  const double la = a.forward_backward(tk.in, tk.tg);
  const double lb = b.forward_backward(tk.in, tk.tg);
  EXPECT_EQ(la, lb);
  ASSERT_EQ(a.grads_flat().extent(0), b.grads_flat().extent(0));
  EXPECT_EQ(0, std::memcmp(a.grads_flat().data(), b.grads_flat().data(), sizeof(float) * a.grads_flat().extent(0)));
  EXPECT_EQ(a.forward_backward(tk.in, tk.tg), la);  // same object again
  EXPECT_EQ(0, std::memcmp(a.grads_flat().data(), b.grads_flat().data(), sizeof(float) * a.grads_flat().extent(0)));
}

TEST(NnGpt, RejectsBadBatches) {
  GptModel<float> m(tiny(), 2);
  Tokens tk = make_tokens(12, 7, 14);  // 3 sequences > max_batch 2
  EXPECT_THROW(m.forward(tk.in, tk.tg), shardflow::Error);
  Tokens t2 = make_tokens(8, 7, 15);
  t2.in(3) = 7;  // outside the vocabulary
  EXPECT_THROW(m.forward(t2.in, t2.tg), shardflow::Error);
  EXPECT_THROW(m.param("layers.9.attn.qkv.weight"), shardflow::Error);
}

TEST(NnGpt, ModelFlopsFormula) {
  GptConfig c;
  c.hidden = 256;
  c.heads = 4;
  c.ffn = 688;
  c.layers = 4;
  c.seq = 128;
  EXPECT_EQ(shardflow::nn::gpt_matmul_params(c), 4 * (4 * 256 * 256 + 3 * 688 * 256) + 256 * 256);
  EXPECT_DOUBLE_EQ(shardflow::nn::gpt_model_flops(c, 1024),
                   6.0 * 3227648 * 1024 + 12.0 * 4 * 128 * 256 * 1024);
}

TEST(NnGpt, AdamWTrainingOnTheCorpusLowersTheLoss) {
  // The pieces together: data loader -> model -> global-norm clipping -> AdamW.
  GptConfig c;
  c.seq = 32;
  c.hidden = 32;
  c.heads = 2;
  c.ffn = 64;
  c.layers = 2;
  const int64_t B = 8;
  shardflow::data::DataLoader dl(shardflow::data::Corpus::load(SHARDFLOW_CORPUS_PATH), 3, B, c.seq);
  GptModel<float> m(c, B);
  m.init(3);
  shardflow::optim::AdamWConfig oc;
  oc.lr = 1e-2;
  oc.warmup = 5;
  const size_t n = m.params_flat().extent(0);
  Kokkos::View<float*, Kokkos::HostSpace> mom("m", n), var("v", n);
  using K = Kokkos::View<int32_t*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  double first = 0, last = 0;
  for (int64_t step = 1; step <= 60; ++step) {
    auto batch = dl.global_batch(step);
    const double loss = m.forward_backward(K(batch.inputs.data(), batch.inputs.size()),
                                           K(batch.targets.data(), batch.targets.size()));
    if (step == 1) first = loss;
    last = loss;
    const auto s = shardflow::optim::make_step(oc, step, shardflow::optim::AdamW<float>::sum_of_squares(m.grads_flat()));
    for (const auto& p : m.parameters()) {
      const std::pair<size_t, size_t> r(static_cast<size_t>(p.offset), static_cast<size_t>(p.offset + p.numel));
      shardflow::optim::AdamW<float>::update(m.param(p.name), m.grad(p.name), Kokkos::subview(mom, r),
                                             Kokkos::subview(var, r), s, p.weight_decay);
    }
  }
  std::printf("# AdamW on the corpus: loss %.4f at step 1, %.4f at step 60\n", first, last);
  EXPECT_NEAR(first, std::log(256.0), 0.2);
  EXPECT_LT(last, 3.6) << "60 AdamW steps should take a byte model well below the uniform loss " << first;
}

}  // namespace

// The serial reference keeps its own parameter list (so that a mistake in the model spec
// cannot hide in both), and it is the model spec's list: names, shapes and decay flags.
TEST(NnGpt, ParametersAreTheModelDescriptions) {
  for (int64_t layers : {1, 4}) {
    shardflow::ModelConfig mc = shardflow::ModelConfig::quickstart();
    mc.layers = layers;
    const shardflow::ModelDescription desc(mc);
    const auto ps = shardflow::nn::gpt_parameters(GptConfig::from(mc));
    ASSERT_EQ(ps.size(), desc.params().size());
    for (size_t i = 0; i < ps.size(); ++i) {
      const auto& d = desc.params()[i];
      EXPECT_EQ(ps[i].name, d.name);
      EXPECT_EQ(ps[i].shape, d.shape) << d.name;
      EXPECT_EQ(ps[i].weight_decay, d.weight_decay) << d.name;
    }
  }
}
