// The planner: ZeRO model-state numbers (the paper's 7.5B example), the activation
// formula, per-rank exact memory on real meshes, and the JSON output.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "planner/planner.hpp"

using namespace shardflow;

namespace {
double round1(double x) { return std::round(x * 10.0) / 10.0; }
}  // namespace

TEST(Planner, ZeroPaperNumbers) {
  // Ψ = 7.5B on N = 64 devices: 120, 31.4, 16.6, 1.9 GB.
  const double psi = 7.5e9;
  EXPECT_DOUBLE_EQ(zero_model_state_bytes(psi, 64, 0), 120e9);
  EXPECT_DOUBLE_EQ(round1(zero_model_state_bytes(psi, 64, 1) / 1e9), 31.4);
  EXPECT_DOUBLE_EQ(round1(zero_model_state_bytes(psi, 64, 2) / 1e9), 16.6);
  EXPECT_DOUBLE_EQ(round1(zero_model_state_bytes(psi, 64, 3) / 1e9), 1.9);
  EXPECT_DOUBLE_EQ(zero_model_state_bytes(psi, 64, 1), 4 * psi + 12 * psi / 64);
  EXPECT_DOUBLE_EQ(zero_model_state_bytes(psi, 64, 2), 2 * psi + 14 * psi / 64);
  EXPECT_DOUBLE_EQ(zero_model_state_bytes(psi, 64, 3), 16 * psi / 64);
  EXPECT_THROW(zero_model_state_bytes(psi, 0, 1), InputError);
  EXPECT_THROW(zero_model_state_bytes(psi, 4, 4), InputError);
}

TEST(Planner, ActivationFormula) {
  // s·b·h·(34 + 5as/h) without tensor parallelism.
  EXPECT_DOUBLE_EQ(layer_activation_bytes(2048, 1, 4096, 32, 1, false), 2048.0 * 4096 * (34 + 5.0 * 32 * 2048 / 4096));
  EXPECT_DOUBLE_EQ(layer_activation_bytes(2048, 2, 4096, 32, 4, false),
                   2048.0 * 2 * 4096 * (10 + 24.0 / 4 + 5.0 * 32 * 2048 / (4096 * 4)));
  EXPECT_DOUBLE_EQ(layer_activation_bytes(2048, 2, 4096, 32, 4, true),
                   2048.0 * 2 * 4096 * (34 + 5.0 * 32 * 2048 / 4096) / 4);
  // recomputation (Korthikanti et al. 2022, Table 2): selective drops 5as/h, full keeps 2sbh
  EXPECT_DOUBLE_EQ(layer_activation_bytes(2048, 2, 4096, 32, 4, true, Recompute::Selective),
                   34.0 * 2048 * 2 * 4096 / 4);
  EXPECT_DOUBLE_EQ(layer_activation_bytes(2048, 2, 4096, 32, 4, false, Recompute::Selective),
                   2048.0 * 2 * 4096 * (10 + 24.0 / 4));
  EXPECT_DOUBLE_EQ(layer_activation_bytes(2048, 2, 4096, 32, 4, false, Recompute::Full), 2.0 * 2048 * 2 * 4096);
  EXPECT_DOUBLE_EQ(layer_activation_bytes(2048, 2, 4096, 32, 4, true, Recompute::Full), 2.0 * 2048 * 2 * 4096 / 4);
}

TEST(Planner, DataParallelMeshMatchesTheFormulaExactly) {
  // On a pure data-parallel mesh with every dimension divisible, the exact per-rank counts
  // equal the ZeRO formulas with Ψ = the model's parameter count.
  ModelConfig c;
  c.vocab = 256;
  c.seq = 64;
  c.hidden = 128;
  c.heads = 4;
  c.ffn = 384;
  c.layers = 2;
  PlanInput in;
  in.model = c;
  in.devices = 8;
  in.mesh = MeshShape({"data"}, {8});
  Plan p = make_plan(in);
  ASSERT_EQ(p.memory.size(), 4u);
  EXPECT_EQ(p.zero_group, 8);
  const double psi = static_cast<double>(p.parameter_count);
  for (int s = 0; s <= 3; ++s) {
    const auto& m = p.memory[static_cast<size_t>(s)];
    EXPECT_NEAR(m.params + m.grads + m.optimizer, zero_model_state_bytes(psi, 8, s), 16.0 * 8) << m.strategy;
  }
  EXPECT_EQ(p.memory[0].strategy, "DP");
  EXPECT_EQ(p.memory[3].strategy, "ZeRO-3");
  EXPECT_DOUBLE_EQ(p.memory[0].params, 2 * psi);
  EXPECT_DOUBLE_EQ(p.memory[0].activations, 2.0 * layer_activation_bytes(64, 1, 128, 4, 1, false));
}

TEST(Planner, TensorAndPipelineReduceModelStates) {
  PlanInput in;
  in.model = llama_like_model("7B", 2048);
  in.devices = 64;
  Plan p = make_plan(in);
  EXPECT_EQ(p.mesh.to_string(), "data=32 x tensor=2");
  EXPECT_EQ(p.zero_group, 32);
  // With tensor = 2 every rank holds about half of the model.
  EXPECT_NEAR(p.memory[0].params, p.parameter_count, 0.01 * p.parameter_count);
  EXPECT_LT(p.memory[3].total(), p.memory[2].total());
  EXPECT_LT(p.memory[2].total(), p.memory[1].total());
  EXPECT_LT(p.memory[1].total(), p.memory[0].total());
  // layers.{l} rows are collapsed to one layer.
  bool collapsed = false;
  for (const auto& row : p.params)
    if (row.name == "layers.{l}.attn.qkv.weight") {
      collapsed = true;
      EXPECT_EQ(row.spec, "(None, 'tensor', None, None)");
      EXPECT_EQ(row.max_local_view_shape, (Shape{3, 16, 128, 4096}));
    }
  EXPECT_TRUE(collapsed);
  // Pipelining: the rank with the most layers decides.
  in.mesh = MeshShape({"data", "pipeline", "tensor"}, {4, 4, 4});
  in.all_layers = true;
  Plan pp = make_plan(in);
  EXPECT_EQ(pp.params.size(), 2u + 32u * 6u + 2u);
  EXPECT_NEAR(pp.memory[0].params, 2.0 * p.parameter_count / 16, 0.05 * p.parameter_count);
}

TEST(Planner, JsonIsMachineReadable) {
  PlanInput in;
  in.model = ModelConfig::quickstart();
  in.devices = 2;
  auto j = nlohmann::json::parse(plan_to_json(make_plan(in)));
  EXPECT_EQ(j["devices"], 2);
  EXPECT_EQ(j["model"]["parameters"], 865408);
  EXPECT_EQ(j["recommended_mesh"]["data"], 2);
  ASSERT_EQ(j["memory_per_device"].size(), 4u);
  EXPECT_EQ(j["memory_per_device"][1]["strategy"], "ZeRO-1");
  EXPECT_EQ(j["parameters"][0]["name"], "embed.weight");
  EXPECT_EQ(j["parameters"][0]["spec"], "(None, None)");
  const std::string text = plan_to_text(make_plan(in));
  EXPECT_NE(text.find("recommended mesh: data=2"), std::string::npos) << text;
  EXPECT_NE(text.find("ZeRO-3"), std::string::npos);
}

TEST(Planner, BadInput) {
  PlanInput in;
  in.model = ModelConfig::quickstart();
  in.devices = 8;
  in.mesh = MeshShape({"tensor"}, {8});  // 8 > 4 heads
  EXPECT_THROW(make_plan(in), InputError);
  in.mesh.reset();
  in.devices = 0;
  EXPECT_THROW(make_plan(in), InputError);
  EXPECT_EQ(parse_mesh_text("data=4,tensor=2").to_string(), "data=4 x tensor=2");
  EXPECT_THROW(parse_mesh_text("data=x"), InputError);
  EXPECT_THROW(parse_mesh_text("data"), InputError);
  EXPECT_THROW(parse_mesh_text("data=2,data=2"), InputError);
  EXPECT_THROW(llama_like_model("7B", 0), InputError);
}
