// The model description: MODEL.md names, shapes, order and count; kinds and view shapes;
// default specs under DP, TP, PP, FSDP/ZeRO and compositions; every layout tiles its
// parameter exactly once; bad configs and meshes throw naming the values.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "model/model_description.hpp"
#include "strategy_test_util.hpp"

using namespace shardflow;

namespace {
PartitionSpec P(const std::string& s) { return PartitionSpec::parse(s); }
std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "<no InputError>";
}
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
  EXPECT_EQ(qkv.tensor_split_dim, 1);
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

TEST(ModelDescription, DefaultSpecsPerStrategy) {
  ModelDescription m(ModelConfig::quickstart());
  auto spec = [&](const std::string& name, const MeshShape& mesh, StrategyOptions o = {},
                  TensorRole role = TensorRole::Param) { return m.sharding(m.param(name), mesh, o, role).spec; };
  // DP: everything replicated.
  MeshShape dp({"data"}, {2});
  for (const auto& p : m.params()) EXPECT_TRUE(m.sharding(p, dp).spec.is_replicated()) << p.name;
  // TP.
  MeshShape tp({"data", "tensor"}, {2, 2});
  EXPECT_EQ(spec("layers.0.attn.qkv.weight", tp), P("(None, 'tensor', None, None)"));
  EXPECT_EQ(spec("layers.0.attn.out.weight", tp), P("(None, 'tensor', None)"));
  EXPECT_EQ(spec("layers.0.mlp.gate_up.weight", tp), P("(None, 'tensor', None)"));
  EXPECT_EQ(spec("layers.0.mlp.down.weight", tp), P("(None, 'tensor')"));
  EXPECT_EQ(spec("embed.weight", tp), P("('tensor', None)"));
  EXPECT_EQ(spec("lm_head.weight", tp), P("('tensor', None)"));
  EXPECT_EQ(spec("pos_embed.weight", tp), P("(None, None)"));
  EXPECT_EQ(spec("layers.0.attn_norm.weight", tp), P("(None,)"));
  // PP: pinned to the stage.
  MeshShape pp({"pipeline"}, {2});
  EXPECT_EQ(m.sharding(m.param("layers.1.attn.qkv.weight"), pp).pinned.at("pipeline"), 0);
  EXPECT_EQ(m.sharding(m.param("layers.2.attn.qkv.weight"), pp).pinned.at("pipeline"), 1);
  EXPECT_EQ(m.sharding(m.param("embed.weight"), pp).pinned.at("pipeline"), 0);
  EXPECT_EQ(m.sharding(m.param("pos_embed.weight"), pp).pinned.at("pipeline"), 0);
  EXPECT_EQ(m.sharding(m.param("final_norm.weight"), pp).pinned.at("pipeline"), 1);
  EXPECT_EQ(m.sharding(m.param("lm_head.weight"), pp).pinned.at("pipeline"), 1);
  // FSDP axis: the FSDP rule on the view; small tensors replicated.
  MeshShape fsdp({"fsdp"}, {2});
  EXPECT_EQ(spec("embed.weight", fsdp), P("('fsdp', None)"));
  EXPECT_EQ(spec("layers.0.attn.qkv.weight", fsdp), P("(None, None, None, 'fsdp')"));
  EXPECT_EQ(spec("layers.0.mlp.down.weight", fsdp), P("(None, 'fsdp')"));
  EXPECT_EQ(spec("layers.0.attn_norm.weight", fsdp), P("(None,)"));
  StrategyOptions all;
  all.fsdp_min_weight_size = 0;
  EXPECT_EQ(spec("layers.0.attn_norm.weight", fsdp, all), P("('fsdp',)"));
  // ZeRO stages over the data axis: which roles are sharded.
  for (int stage = 0; stage <= 3; ++stage) {
    StrategyOptions o;
    o.zero_stage = stage;
    EXPECT_EQ(!spec("embed.weight", dp, o, TensorRole::OptimizerState).is_replicated(), stage >= 1) << stage;
    EXPECT_EQ(!spec("embed.weight", dp, o, TensorRole::Grad).is_replicated(), stage >= 2) << stage;
    EXPECT_EQ(!spec("embed.weight", dp, o, TensorRole::Param).is_replicated(), stage >= 3) << stage;
  }
  // Composition: tensor splits heads; ZeRO-3 over (data, fsdp) takes the largest other dim.
  MeshShape all_axes({"data", "fsdp", "pipeline", "tensor"}, {2, 2, 2, 2});
  StrategyOptions z3;
  z3.zero_stage = 3;
  auto s = m.sharding(m.param("layers.3.attn.qkv.weight"), all_axes, z3);
  EXPECT_EQ(s.spec, P("(None, 'tensor', None, ('data', 'fsdp'))"));
  EXPECT_EQ(s.pinned.at("pipeline"), 1);
  EXPECT_EQ(spec("embed.weight", all_axes, z3), P("('tensor', ('data', 'fsdp'))"));
}

TEST(ModelDescription, EveryLayoutTilesItsParameterOnce) {
  const std::vector<MeshShape> meshes{MeshShape({"data"}, {3}),
                                      MeshShape({"tensor"}, {3}),
                                      MeshShape({"data", "tensor"}, {2, 4}),
                                      MeshShape({"fsdp", "tensor"}, {3, 2}),
                                      MeshShape({"data", "fsdp", "pipeline", "tensor"}, {2, 2, 2, 2}),
                                      MeshShape({"data", "pipeline"}, {2, 3})};
  ModelConfig c = ModelConfig::quickstart();
  c.hidden = 96;  // 4 heads of 24
  c.ffn = 250;
  c.layers = 3;
  ModelDescription m(c);
  for (const auto& mesh : meshes)
    for (int stage = 0; stage <= 3; ++stage)
      for (TensorRole role : {TensorRole::Param, TensorRole::Grad, TensorRole::OptimizerState}) {
        StrategyOptions o;
        o.zero_stage = stage;
        o.fsdp_min_weight_size = 100;
        for (const auto& p : m.params()) {
          Layout l = m.sharding(p, mesh, o, role).layout(mesh);
          auto full = shardflow::test::iota_tensor(l.global_shape());
          std::vector<HostTensor<float>> shards;
          for (int r = 0; r < mesh.size(); ++r) shards.push_back(extract_box(full, l.box(r)));
          shardflow::test::expect_reassembles(l, full, shards, p.name + " on " + mesh.to_string());
          EXPECT_EQ(numel(l.global_shape()), p.numel());
        }
      }
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
  MeshShape mesh({"expert", "tensor"}, {2, 2});
  EXPECT_EQ(m.sharding(e, mesh).spec, P("('expert', None, 'tensor', None)"));
  EXPECT_EQ(m.sharding(m.param("layers.3.mlp.experts.down.weight"), mesh).spec, P("('expert', None, 'tensor')"));
  EXPECT_TRUE(m.sharding(m.param("layers.3.mlp.router.weight"), mesh).spec.is_replicated());
  EXPECT_THROW(m.check_mesh(MeshShape({"expert"}, {8})), InputError);  // 8 > 4 experts
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

  ModelDescription m(ModelConfig::quickstart());
  std::string msg = message_of([&] { m.check_mesh(MeshShape({"tensor"}, {8})); });
  EXPECT_NE(msg.find("8 devices"), std::string::npos) << msg;
  EXPECT_NE(msg.find("4 heads"), std::string::npos) << msg;
  msg = message_of([&] { m.check_mesh(MeshShape({"pipeline"}, {5})); });
  EXPECT_NE(msg.find("5 stages"), std::string::npos) << msg;
  EXPECT_NE(msg.find("4 layers"), std::string::npos) << msg;
  msg = message_of([&] { m.check_mesh(MeshShape({"expert"}, {2})); });
  EXPECT_NE(msg.find("model.experts = 0"), std::string::npos) << msg;
  StrategyOptions o;
  o.zero_stage = 4;
  EXPECT_THROW(m.sharding(m.params()[0], MeshShape({"data"}, {2}), o), InputError);
}
