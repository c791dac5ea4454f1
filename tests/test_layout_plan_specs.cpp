// LayoutPlan specs: the placement of every parameter under DP, TP, PP, FSDP/ZeRO, EP and
// their compositions; every layout tiles its parameter exactly once; meshes that cannot shard
// the model throw naming the numbers.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "parallel/layout_plan.hpp"
#include "strategy/sharding_strategy.hpp"
#include "strategy_test_util.hpp"

using namespace shardflow;
using parallel::LayoutPlan;

namespace {
PartitionSpec P(const std::string& s) { return PartitionSpec::parse(s); }
using shardflow::test::message_of;
StrategyOptions zero(int stage, int64_t min_size = 1024) {
  StrategyOptions o;
  o.zero_stage = stage;
  o.fsdp_min_weight_size = min_size;
  return o;
}
}  // namespace

TEST(LayoutPlanSpecs, DefaultSpecsPerStrategy) {
  ModelDescription m(ModelConfig::quickstart());
  auto spec = [&](const std::string& name, const MeshShape& mesh, StrategyOptions o = {},
                  TensorRole role = TensorRole::Param) {
    LayoutPlan plan(m, mesh, o);
    return plan.spec(plan.param(name), role);
  };
  // DP: everything replicated.
  MeshShape dp({"data"}, {2});
  LayoutPlan dp_plan(m, dp, {});
  for (const auto& p : dp_plan.params())
    EXPECT_TRUE(dp_plan.spec(p, TensorRole::OptimizerState).is_replicated()) << p.info.name;
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
  LayoutPlan pp(m, MeshShape({"pipeline"}, {2}), {});
  EXPECT_EQ(pp.param("layers.1.attn.qkv.weight").stage, 0);
  EXPECT_EQ(pp.param("layers.2.attn.qkv.weight").stage, 1);
  EXPECT_EQ(pp.param("embed.weight").stage, 0);
  EXPECT_EQ(pp.param("pos_embed.weight").stage, 0);
  EXPECT_EQ(pp.param("final_norm.weight").stage, 1);
  EXPECT_EQ(pp.param("lm_head.weight").stage, 1);
  EXPECT_EQ(pp.layout(pp.param("lm_head.weight"), TensorRole::Param).pinned().at("pipeline"), 1);
  // Interleaved: 4 layers in 4 chunks on 2 stages: chunk c on stage c mod 2.
  LayoutPlan pv(m, MeshShape({"pipeline"}, {2}), {}, 2);
  EXPECT_EQ(pv.param("layers.1.attn.qkv.weight").stage, 1);
  EXPECT_EQ(pv.param("layers.2.attn.qkv.weight").stage, 0);
  // FSDP axis: the FSDP rule on the view; small tensors replicated.
  MeshShape fsdp({"fsdp"}, {2});
  EXPECT_EQ(spec("embed.weight", fsdp, zero(3)), P("('fsdp', None)"));
  EXPECT_EQ(spec("layers.0.attn.qkv.weight", fsdp, zero(3)), P("(None, None, None, 'fsdp')"));
  EXPECT_EQ(spec("layers.0.mlp.down.weight", fsdp, zero(3)), P("(None, 'fsdp')"));
  EXPECT_EQ(spec("layers.0.attn_norm.weight", fsdp, zero(3)), P("(None,)"));
  EXPECT_EQ(spec("layers.0.attn_norm.weight", fsdp, zero(3, 0)), P("('fsdp',)"));
  // ZeRO stages over the data axis: which roles are sharded.
  for (int stage = 0; stage <= 3; ++stage) {
    EXPECT_EQ(!spec("embed.weight", dp, zero(stage), TensorRole::OptimizerState).is_replicated(), stage >= 1) << stage;
    EXPECT_EQ(!spec("embed.weight", dp, zero(stage), TensorRole::Grad).is_replicated(), stage >= 2) << stage;
    EXPECT_EQ(!spec("embed.weight", dp, zero(stage), TensorRole::Param).is_replicated(), stage >= 3) << stage;
  }
  // Composition (HSDP): tensor splits heads; ZeRO-3 over fsdp takes the largest other dim,
  // data holds replicas of the shards.
  MeshShape all_axes({"data", "fsdp", "pipeline", "tensor"}, {2, 2, 2, 2});
  LayoutPlan all(m, all_axes, zero(3));
  EXPECT_EQ(all.spec(all.param("layers.3.attn.qkv.weight"), TensorRole::Param), P("(None, 'tensor', None, 'fsdp')"));
  EXPECT_EQ(all.param("layers.3.attn.qkv.weight").stage, 1);
  EXPECT_EQ(all.spec(all.param("embed.weight"), TensorRole::Param), P("('tensor', 'fsdp')"));
  EXPECT_EQ(all.groups().zero, (parallel::Axes{"fsdp"}));
  EXPECT_EQ(all.groups().replica, (parallel::Axes{"data"}));
  EXPECT_EQ(all.groups().norm, (parallel::Axes{"fsdp", "pipeline", "tensor"}));
  EXPECT_EQ(parallel::group_key(all.groups().loss), "data+fsdp+pipeline");
}

TEST(LayoutPlanSpecs, EveryLayoutTilesItsParameterOnce) {
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
    for (int stage = 0; stage <= 3; ++stage) {
      if (stage == 0 && mesh.axis_size_or_1("fsdp") > 1) continue;
      LayoutPlan plan(m, mesh, zero(stage, 100));
      for (TensorRole role : {TensorRole::Param, TensorRole::Grad, TensorRole::OptimizerState})
        for (const auto& p : plan.params()) {
          Layout l = plan.layout(p, role);
          auto full = shardflow::test::iota_tensor(l.global_shape());
          std::vector<HostTensor<float>> shards;
          for (int r = 0; r < mesh.size(); ++r) shards.push_back(extract_box(full, l.box(r)));
          shardflow::test::expect_reassembles(l, full, shards, p.info.name + " on " + mesh.to_string());
          EXPECT_EQ(numel(l.global_shape()), p.info.numel());
        }
    }
}

TEST(LayoutPlanSpecs, MixtureOfExperts) {
  ModelConfig c = ModelConfig::quickstart();
  c.experts = 4;
  c.top_k = 2;
  c.moe_every = 2;
  ModelDescription m(c);
  LayoutPlan plan(m, MeshShape({"expert", "tensor"}, {2, 2}), {});
  auto spec = [&](const std::string& n) { return plan.spec(plan.param(n), TensorRole::Param); };
  EXPECT_EQ(spec("layers.1.mlp.experts.gate_up.weight"), P("('expert', None, 'tensor', None)"));
  EXPECT_EQ(spec("layers.3.mlp.experts.down.weight"), P("('expert', None, 'tensor')"));
  EXPECT_TRUE(spec("layers.3.mlp.router.weight").is_replicated());
  EXPECT_THROW(LayoutPlan(m, MeshShape({"expert"}, {8}), {}), InputError);  // 8 > 4 experts
}

TEST(LayoutPlanSpecs, MeshesThatCannotShardNameTheNumbers) {
  ModelDescription m(ModelConfig::quickstart());
  std::string msg = message_of([&] { LayoutPlan(m, MeshShape({"tensor"}, {8}), {}); });
  EXPECT_NE(msg.find("8 devices"), std::string::npos) << msg;
  EXPECT_NE(msg.find("4 heads"), std::string::npos) << msg;
  msg = message_of([&] { LayoutPlan(m, MeshShape({"pipeline"}, {5}), {}); });
  EXPECT_NE(msg.find("5 stages"), std::string::npos) << msg;
  EXPECT_NE(msg.find("4 layers"), std::string::npos) << msg;
  msg = message_of([&] { LayoutPlan(m, MeshShape({"expert"}, {2}), {}); });
  EXPECT_NE(msg.find("model.experts = 0"), std::string::npos) << msg;
  EXPECT_THROW(LayoutPlan(m, MeshShape({"data"}, {2}), zero(4)), InputError);
  msg = message_of([&] { LayoutPlan(m, MeshShape({"fsdp"}, {2}), zero(0)); });
  EXPECT_NE(msg.find("mesh.fsdp = 2"), std::string::npos) << msg;
}

// The seeds' strategies decide: the plan's tensor specs are TensorParallelStrategy's (its
// attention specs for qkv and attn.out), its ZeRO dimension is FSDPStrategy's rule, and the
// two are merged by MultiDimensionalStrategy::resolve_sharding_conflicts.
TEST(LayoutPlanSpecs, TheSeedStrategiesDecide) {
  ModelDescription m(ModelConfig::quickstart());
  const MeshShape mesh({"fsdp", "tensor"}, {2, 2});
  LayoutPlan plan(m, mesh, zero(3));
  const TensorParallelStrategy tps("tensor");
  EXPECT_EQ(plan.spec(plan.param("layers.0.attn.qkv.weight"), TensorRole::Grad)[1],
            tps.get_attention_qkv_spec()[1]);
  EXPECT_EQ(plan.spec(plan.param("layers.0.attn.out.weight"), TensorRole::Grad)[1],
            tps.get_attention_output_spec()[1]);
  for (const auto& p : plan.params()) {
    const PartitionSpec t = tps.get_weight_spec(p.info.kind, p.info.shape, 4, 32, mesh);
    const PartitionSpec got = plan.spec(p, TensorRole::Param);
    std::vector<bool> excluded(t.ndim());
    for (size_t d = 0; d < t.ndim(); ++d) {
      excluded[d] = !t[d].empty();
      if (!t[d].empty()) {
        EXPECT_EQ(got[d][0], "tensor") << p.info.name;
      }
    }
    const FSDPStrategy fsdp("fsdp", -1, 1024);
    const int zd = fsdp.should_shard_weight(p.info.shape) ? FSDPStrategy::choose_shard_dim(p.info.view_shape, 2, excluded)
                                                           : -1;
    EXPECT_EQ(p.zero_dim, zd) << p.info.name;
  }
}
