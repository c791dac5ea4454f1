// AdamW: the schedule, clipping and two update steps against values computed by hand
// (independently, in double, from MODEL.md's formulas), shard-wise updates equal to the
// whole-tensor update, the weight-decay rule.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.hpp"
#include "optim/adamw.hpp"

namespace {
using shardflow::optim::AdamW;
using shardflow::optim::AdamWConfig;
using HV = Kokkos::View<double*, Kokkos::HostSpace>;
using FV = Kokkos::View<float*, Kokkos::HostSpace>;

TEST(OptimAdamW, LearningRateWarmupThenConstant) {
  AdamWConfig c;
  c.lr = 0.4;
  c.warmup = 4;
  const double want[] = {0.1, 0.2, 0.3, 0.4, 0.4, 0.4};
  for (int t = 1; t <= 6; ++t) EXPECT_DOUBLE_EQ(shardflow::optim::learning_rate(c, t), want[t - 1]) << "step " << t;
  c.warmup = 0;
  EXPECT_EQ(shardflow::optim::learning_rate(c, 1), 0.4);
  EXPECT_THROW(shardflow::optim::learning_rate(c, 0), shardflow::Error);
}

TEST(OptimAdamW, ClipScale) {
  EXPECT_DOUBLE_EQ(shardflow::optim::clip_scale(4.0, 1.0), 1.0 / (2.0 + 1e-6));
  EXPECT_EQ(shardflow::optim::clip_scale(0.25, 1.0), 1.0);
  EXPECT_EQ(shardflow::optim::clip_scale(0.0, 1.0), 1.0);
  EXPECT_THROW(shardflow::optim::clip_scale(-1.0, 1.0), shardflow::Error);
}

TEST(OptimAdamW, WeightDecayRule) {
  using shardflow::optim::uses_weight_decay;
  EXPECT_FALSE(uses_weight_decay("embed.weight", 2));
  EXPECT_FALSE(uses_weight_decay("pos_embed.weight", 2));
  EXPECT_FALSE(uses_weight_decay("layers.0.attn_norm.weight", 1));
  EXPECT_FALSE(uses_weight_decay("final_norm.weight", 1));
  EXPECT_TRUE(uses_weight_decay("layers.3.attn.qkv.weight", 2));
  EXPECT_TRUE(uses_weight_decay("lm_head.weight", 2));
}

TEST(OptimAdamW, TwoStepsMatchHandComputedValues) {
  AdamWConfig c;
  c.lr = 0.01;
  c.warmup = 2;
  c.clip_norm = 0.1;  // both steps clip
  HV p("p", 3), m("m", 3), v("v", 3), g("g", 3);
  p(0) = 0.5, p(1) = -1.0, p(2) = 2.0;
  const double g1[3] = {0.2, -0.3, 0.0}, g2[3] = {-0.05, 0.4, 0.01};
  for (int i = 0; i < 3; ++i) g(i) = g1[i];
  auto s1 = shardflow::optim::make_step(c, 1, AdamW<double>::sum_of_squares(g));
  EXPECT_NEAR(s1.grad_scale, 0.2773493288839788, 1e-15);
  EXPECT_DOUBLE_EQ(s1.lr, 0.005);
  AdamW<double>::update(p, g, m, v, s1, true);
  const double p1[3] = {0.49475000090139021, -0.99450000060092691, 1.9990000000000001};
  const double m1[3] = {0.0055469865776795746, -0.0083204798665193619, 0};
  const double v1[3] = {0.000153845300464787, 0.00034615192604577072, 0};
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(p(i), p1[i], 1e-15) << i;
    EXPECT_NEAR(m(i), m1[i], 1e-17) << i;
    EXPECT_NEAR(v(i), v1[i], 1e-18) << i;
  }
  for (int i = 0; i < 3; ++i) g(i) = g2[i];
  auto s2 = shardflow::optim::make_step(c, 2, AdamW<double>::sum_of_squares(g));
  AdamW<double>::update(p, g, m, v, s2, true);
  const double p2[3] = {0.48928345133515783, -0.99490010454326994, 1.9896514413616735};
  const double m2[3] = {0.0037523251183261344, 0.0024312705328164361, 0.00024799256031709653};
  const double v2[3] = {0.00015384057418812625, 0.00082084680952451282, 3.0750154986314423e-07};
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(p(i), p2[i], 1e-15) << i;
    EXPECT_NEAR(m(i), m2[i], 1e-17) << i;
    EXPECT_NEAR(v(i), v2[i], 1e-18) << i;
  }
}

TEST(OptimAdamW, NoDecayLeavesZeroGradientElementsAlone) {
  AdamWConfig c;
  HV p("p", 2), m("m", 2), v("v", 2), g("g", 2);
  p(0) = 2.0, p(1) = -3.0;
  auto s = shardflow::optim::make_step(c, 1, 0.0);
  AdamW<double>::update(p, g, m, v, s, false);
  EXPECT_EQ(p(0), 2.0);
  EXPECT_EQ(p(1), -3.0);
  AdamW<double>::update(p, g, m, v, s, true);
  EXPECT_DOUBLE_EQ(p(0), 2.0 * (1 - 1e-3 * 0.1));
}

TEST(OptimAdamW, ShardWiseUpdateEqualsWholeTensorBitwise) {
  const int n = 1001;
  FV p("p", n), m("m", n), v("v", n), g("g", n), ps("ps", n), ms("ms", n), vs("vs", n);
  for (int i = 0; i < n; ++i) {
    p(i) = ps(i) = 0.01f * static_cast<float>((i * 37) % 101 - 50);
    g(i) = 0.003f * static_cast<float>((i * 53) % 89 - 44);
  }
  AdamWConfig c;
  c.warmup = 10;
  double sq = 0;
  const std::vector<std::pair<int, int>> shards{{0, 334}, {334, 667}, {667, 1001}};
  for (auto [a, b] : shards) sq += AdamW<float>::sum_of_squares(FV(g.data() + a, b - a));
  EXPECT_NEAR(sq, AdamW<float>::sum_of_squares(g), 1e-12 * sq);
  for (int step = 1; step <= 3; ++step) {
    auto s = shardflow::optim::make_step(c, step, sq);
    AdamW<float>::update(p, g, m, v, s, true);
    for (auto [a, b] : shards)
      AdamW<float>::update(FV(ps.data() + a, b - a), FV(g.data() + a, b - a), FV(ms.data() + a, b - a),
                           FV(vs.data() + a, b - a), s, true);
  }
  EXPECT_EQ(0, std::memcmp(p.data(), ps.data(), sizeof(float) * n));
  EXPECT_EQ(0, std::memcmp(m.data(), ms.data(), sizeof(float) * n));
  EXPECT_EQ(0, std::memcmp(v.data(), vs.data(), sizeof(float) * n));
}

TEST(OptimAdamW, ConfigValidationNamesTheField) {
  AdamWConfig c;
  c.beta2 = 1.0;
  try {
    c.validate();
    FAIL();
  } catch (const shardflow::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("beta2"), std::string::npos);
  }
  HV a("a", 3), b("b", 2);
  EXPECT_THROW(AdamW<double>::update(a, b, a, a, shardflow::optim::make_step(AdamWConfig{}, 1, 0.0), true),
               shardflow::Error);
}

}  // namespace
