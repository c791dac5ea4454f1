// The model description: MODEL.md names, shapes, order and count; kinds and view shapes;
// bad configs throw naming the values (the layouts: test_layout_plan_specs.cpp).
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "model/model_description.hpp"
#include "strategy_test_util.hpp"

using namespace shardflow;

namespace {
using shardflow::test::message_of;
}  // namespace

TEST(ModelDescription, QuickstartParametersFollowModelMd) {
  ModelDescription m(ModelConfig::quickstart());
  const auto& ps = m.params();
  ASSERT_EQ(ps.size(), 2u + 4u * 6u + 2u);
  EXPECT_EQ(ps[0].name, "embed.weight");
  EXPECT_EQ(ps[0].shape, (Shape{256, 128}));
  EXPECT_EQ(ps[1].name, "pos_embed.weight");
  EXPECT_EQ(ps[1].shape, (Shape{64, 128}));
  const char* per_layer[] = {"attn_norm.weight", "attn.qkv.weight",    "attn.out.weight",
                             "mlp_norm.weight",  "mlp.gate_up.weight", "mlp.down.weight"};
  const Shape shapes[] = {{128}, {384, 128}, {128, 128}, {128}, {688, 128}, {128, 344}};
  for (int l = 0; l < 4; ++l)
    for (int i = 0; i < 6; ++i) {
      const auto& p = ps[static_cast<size_t>(2 + l * 6 + i)];
      EXPECT_EQ(p.name, "layers." + std::to_string(l) + "." + per_layer[i]);
      EXPECT_EQ(p.shape, shapes[i]) << p.name;
      EXPECT_EQ(p.layer, l);
    }
  EXPECT_EQ(ps[26].name, "final_norm.weight");
  EXPECT_EQ(ps[27].name, "lm_head.weight");
  EXPECT_EQ(ps[27].shape, (Shape{256, 128}));
  // V·H + S·H + L·(2H + 3H² + H² + 2FH + HF) + H + V·H
  const int64_t V = 256, S = 64, H = 128, F = 344, L = 4;
  EXPECT_EQ(m.parameter_count(), V * H + S * H + L * (2 * H + 3 * H * H + H * H + 2 * F * H + H * F) + H + V * H);
  EXPECT_EQ(m.parameter_count(), 865408);
}

TEST(ModelDescription, KindsViewsAndDecay) {
  ModelDescription m(ModelConfig::quickstart());
  auto& qkv = m.param("layers.1.attn.qkv.weight");
  EXPECT_EQ(qkv.kind, ParamKind::StackedQkv);
  EXPECT_EQ(qkv.view_shape, (Shape{3, 4, 32, 128}));
  EXPECT_TRUE(qkv.weight_decay);
  auto& out = m.param("layers.0.attn.out.weight");
  EXPECT_EQ(out.kind, ParamKind::AttentionOut);
  EXPECT_EQ(out.view_shape, (Shape{128, 4, 32}));
  auto& gu = m.param("layers.3.mlp.gate_up.weight");
  EXPECT_EQ(gu.kind, ParamKind::GateUp);
  EXPECT_EQ(gu.view_shape, (Shape{2, 344, 128}));
  EXPECT_EQ(m.param("layers.0.mlp.down.weight").kind, ParamKind::Down);
  EXPECT_EQ(m.param("embed.weight").kind, ParamKind::Embedding);
  EXPECT_FALSE(m.param("embed.weight").weight_decay);
  EXPECT_FALSE(m.param("pos_embed.weight").weight_decay);
  EXPECT_FALSE(m.param("final_norm.weight").weight_decay);
  EXPECT_EQ(m.param("final_norm.weight").kind, ParamKind::NormGain);
  EXPECT_EQ(m.param("lm_head.weight").kind, ParamKind::LmHead);
  EXPECT_TRUE(m.param("lm_head.weight").weight_decay);
  EXPECT_THROW(m.param("layers.9.attn.qkv.weight"), InputError);
}

TEST(ModelDescription, MixtureOfExperts) {
  ModelConfig c = ModelConfig::quickstart();
  c.experts = 4;
  c.top_k = 2;
  c.moe_every = 2;
  ModelDescription m(c);
  EXPECT_NO_THROW(m.param("layers.0.mlp.gate_up.weight"));
  EXPECT_THROW(m.param("layers.1.mlp.gate_up.weight"), InputError);
  auto& e = m.param("layers.1.mlp.experts.gate_up.weight");
  EXPECT_EQ(e.shape, (Shape{4, 688, 128}));
  EXPECT_EQ(e.view_shape, (Shape{4, 2, 344, 128}));
  EXPECT_EQ(m.param("layers.3.mlp.router.weight").shape, (Shape{4, 128}));
  EXPECT_EQ(m.param("layers.3.mlp.experts.down.weight").shape, (Shape{4, 128, 344}));
}

TEST(ModelDescription, BadConfigsAndMeshesNameTheValues) {
  ModelConfig c = ModelConfig::quickstart();
  c.heads = 5;
  EXPECT_EQ(message_of([&] { ModelDescription{c}; }), "model.heads = 5 does not divide model.hidden = 128");
  c = ModelConfig::quickstart();
  c.layers = 0;
  EXPECT_NE(message_of([&] { c.validate(); }).find("model.layers = 0"), std::string::npos);
  c = ModelConfig::quickstart();
  c.vocab = -3;
  EXPECT_NE(message_of([&] { c.validate(); }).find("model.vocab = -3"), std::string::npos);
  c = ModelConfig::quickstart();
  c.top_k = 2;
  EXPECT_NE(message_of([&] { c.validate(); }).find("model.top_k = 2"), std::string::npos);
  c.experts = 4;
  c.top_k = 5;
  c.moe_every = 1;
  EXPECT_NE(message_of([&] { c.validate(); }).find("model.top_k = 5"), std::string::npos);
}
