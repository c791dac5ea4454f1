// DeviceMeshManager, ShardingConfig and ParallelismConfig: mesh creation and validation,
// balanced factorisations, the documented transformer rule, and bad input.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "strategy/device_mesh_manager.hpp"
#include "strategy/sharding_config.hpp"

using namespace shardflow;

TEST(DeviceMeshManager, CreateDeviceMesh) {
  MeshShape m = create_device_mesh({2, 4}, {"data", "tensor"});
  EXPECT_EQ(m.to_string(), "data=2 x tensor=4");
  EXPECT_EQ(m.size(), 8);
  DeviceMeshManager mgr({2, 2}, {"data", "fsdp"});
  EXPECT_EQ(mgr.mesh_shape().size(), 4);
  try {
    create_device_mesh({2, 2}, {"data", "data"});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'data'"), std::string::npos) << e.what();
  }
  try {
    create_device_mesh({2}, {"model"});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'model'"), std::string::npos) << e.what();
  }
  try {
    create_device_mesh({0, 2}, {"data", "tensor"});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("size 0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(create_device_mesh({-2}, {"data"}), InputError);
  EXPECT_THROW(create_device_mesh({2, 2}, {"data"}), InputError);
}

TEST(DeviceMeshManager, ValidateMeshConfigGivesTheReason) {
  DeviceMeshManager mgr;
  EXPECT_TRUE(mgr.validate_mesh_config({2, 4}, 8));
  auto bad = mgr.validate_mesh_config({2, 4}, 6);
  EXPECT_FALSE(bad);
  EXPECT_NE(bad.reason.find("8 devices"), std::string::npos) << bad.reason;
  EXPECT_NE(bad.reason.find("6"), std::string::npos) << bad.reason;
  auto zero = mgr.validate_mesh_config({2, 0}, 0);
  EXPECT_FALSE(zero);
  EXPECT_NE(zero.reason.find("size 0"), std::string::npos) << zero.reason;
  EXPECT_FALSE(mgr.validate_mesh_config({}, 1));
  auto named = mgr.validate_mesh_config({2, 2}, {"tensor", "tensor"}, 4);
  EXPECT_FALSE(named);
  EXPECT_NE(named.reason.find("'tensor'"), std::string::npos) << named.reason;
  EXPECT_TRUE(mgr.validate_mesh_config({2, 2}, {"data", "tensor"}, 4));
}

TEST(DeviceMeshManager, OptimalMeshShapeIsBalanced) {
  DeviceMeshManager mgr;
  EXPECT_EQ(mgr.get_optimal_mesh_shape(8, 1), (std::vector<int>{8}));
  EXPECT_EQ(mgr.get_optimal_mesh_shape(8, 2), (std::vector<int>{4, 2}));
  EXPECT_EQ(mgr.get_optimal_mesh_shape(16, 2), (std::vector<int>{4, 4}));
  EXPECT_EQ(mgr.get_optimal_mesh_shape(12, 3), (std::vector<int>{3, 2, 2}));
  EXPECT_EQ(mgr.get_optimal_mesh_shape(7, 2), (std::vector<int>{7, 1}));
  EXPECT_EQ(mgr.get_optimal_mesh_shape(64, 3), (std::vector<int>{4, 4, 4}));
  EXPECT_EQ(mgr.get_optimal_mesh_shape(1, 3), (std::vector<int>{1, 1, 1}));
  for (int n = 1; n <= 48; ++n)
    for (int k = 1; k <= 4; ++k) {
      auto s = mgr.get_optimal_mesh_shape(n, k);
      ASSERT_EQ(static_cast<int>(s.size()), k);
      int p = 1;
      for (int f : s) p *= f;
      EXPECT_EQ(p, n) << n << " in " << k;
      EXPECT_TRUE(std::is_sorted(s.rbegin(), s.rend())) << n;
    }
  EXPECT_THROW(mgr.get_optimal_mesh_shape(0, 2), InputError);
  EXPECT_THROW(mgr.get_optimal_mesh_shape(8, 0), InputError);
}

TEST(DeviceMeshManager, ModelSizes) {
  EXPECT_DOUBLE_EQ(parse_model_size("7B"), 7e9);
  EXPECT_DOUBLE_EQ(parse_model_size("350M"), 350e6);
  EXPECT_DOUBLE_EQ(parse_model_size("1.5b"), 1.5e9);
  EXPECT_DOUBLE_EQ(parse_model_size("7.5e9"), 7.5e9);
  EXPECT_THROW(parse_model_size("seven"), InputError);
  EXPECT_THROW(parse_model_size("-1B"), InputError);
  EXPECT_THROW(parse_model_size(""), InputError);
  auto d7 = llama_like_dims("7B");
  EXPECT_EQ(d7.hidden, 4096);
  EXPECT_EQ(d7.layers, 32);
  EXPECT_NEAR(transformer_param_count(d7), 6.74e9, 0.01e9);
  auto d = llama_like_dims(1.0e9);
  EXPECT_EQ(d.hidden % 128, 0);
  EXPECT_EQ(d.heads, d.hidden / 128);
  EXPECT_EQ(d.ffn % 256, 0);
  EXPECT_NEAR(transformer_param_count(d), 1.0e9, 0.35e9);
}

TEST(DeviceMeshManager, TransformerRule) {
  DeviceMeshManager mgr;
  // Small model: everything data parallel.
  EXPECT_EQ(mgr.optimize_for_transformer(8, "125M", 2048).to_string(), "data=8");
  EXPECT_EQ(mgr.optimize_for_transformer(1, "125M", 2048).to_string(), "data=1");
  // 7B on 80 GiB: 16Ψ = 108 GB does not fit one device; tensor=2 is the smallest that does.
  EXPECT_EQ(mgr.optimize_for_transformer(64, "7B", 2048).to_string(), "data=32 x tensor=2");
  // On 40 GiB devices tensor parallelism must grow to 4.
  EXPECT_EQ(mgr.optimize_for_transformer(64, "7B", 2048, 8, 40.0).to_string(), "data=16 x tensor=4");
  // Tensor parallelism never leaves the node: 4 GPUs per node, then pipeline.
  auto plan = mgr.plan_transformer_mesh(64, llama_like_dims("70B"), transformer_param_count(llama_like_dims("70B")),
                                        2048, 4, 80.0);
  EXPECT_EQ(plan.tensor, 4);
  EXPECT_GT(plan.pipeline, 1);
  EXPECT_LE(plan.state_bytes + plan.activation_bytes, plan.memory_bytes);
  EXPECT_EQ(plan.mesh.size(), 64);
  // Where the model only fits with its states sharded over the replicas: an fsdp axis.
  // 2 layers cap the pipeline at 2 and 2 GPUs per node cap tensor parallelism at 2, so on
  // 10 GiB devices the 2.47e9-parameter model needs its states sharded over 4 replicas.
  TransformerDims wide{32000, 8192, 2, 64, 28672};
  auto tight = mgr.plan_transformer_mesh(16, wide, transformer_param_count(wide), 2048, 2, 10.0);
  EXPECT_EQ(tight.tensor, 2);
  EXPECT_EQ(tight.pipeline, 2);
  EXPECT_EQ(tight.replicas, 4);
  EXPECT_TRUE(tight.shard_states);
  EXPECT_TRUE(tight.mesh.has_axis("fsdp")) << tight.mesh.to_string();
  // Does not fit at all.
  try {
    mgr.optimize_for_transformer(8, "70B", 2048);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("8 devices"), std::string::npos) << e.what();
  }
  EXPECT_THROW(mgr.optimize_for_transformer(0, "7B", 2048), InputError);
  EXPECT_THROW(mgr.optimize_for_transformer(8, "7B", 0), InputError);
  EXPECT_THROW(mgr.optimize_for_transformer(8, "7B", 2048, 0), InputError);
  EXPECT_THROW(mgr.optimize_for_transformer(8, "7B", 2048, 8, -1.0), InputError);
}

TEST(ShardingConfig, TotalsAndDefaults) {
  ShardingConfig c;
  c.data_parallel_size = 2;
  c.tensor_parallel_size = 4;
  c.pipeline_parallel_size = 3;
  EXPECT_EQ(c.get_total_device_count(), 24);
  EXPECT_EQ(ShardingConfig::from_device_count(1).get_total_device_count(), 1);
  EXPECT_EQ(ShardingConfig::from_device_count(4).data_parallel_size, 4);
  for (int n = 1; n <= 100; ++n) {
    auto s = ShardingConfig::from_device_count(n);
    EXPECT_EQ(s.get_total_device_count(), n) << n;
    EXPECT_LE(s.tensor_parallel_size, 8);
  }
  auto s16 = ShardingConfig::from_device_count(16);
  EXPECT_EQ(s16.tensor_parallel_size, 4);
  EXPECT_EQ(s16.data_parallel_size, 4);
  EXPECT_THROW(ShardingConfig::from_device_count(0), InputError);
  ShardingConfig bad;
  bad.tensor_parallel_size = 0;
  try {
    bad.validate();
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor_parallel_size = 0"), std::string::npos) << e.what();
  }
}

TEST(ParallelismConfig, FromShardingConfig) {
  ShardingConfig c;
  c.data_parallel_size = 2;
  c.tensor_parallel_size = 4;
  auto p = ParallelismConfig::from_sharding_config(c);
  EXPECT_EQ(p.mesh_axis_names, (std::vector<std::string>{"data", "tensor"}));
  EXPECT_EQ(p.mesh_shape, (std::vector<int>{2, 4}));
  EXPECT_TRUE(p.is_valid());
  EXPECT_EQ(DeviceMeshManager().create_mesh_from_config(p).to_string(), "data=2 x tensor=4");
  auto one = ParallelismConfig::from_sharding_config(ShardingConfig{});
  EXPECT_EQ(one.mesh_axis_names, (std::vector<std::string>{"data"}));
  EXPECT_EQ(one.mesh_shape, (std::vector<int>{1}));
  p.mesh_shape = {2, 2};
  EXPECT_FALSE(p.is_valid());
  EXPECT_NE(p.invalid_reason().find("needs 8"), std::string::npos) << p.invalid_reason();
  EXPECT_THROW(p.to_mesh_shape(), InputError);
  p.mesh_shape = {2, 4};
  // Artifex's "model" axis is the tensor axis (issue 11)
  p.mesh_axis_names = {"data", "model"};
  EXPECT_TRUE(p.is_valid()) << p.invalid_reason();
  EXPECT_EQ(p.to_mesh_shape().to_string(), "data=2 x tensor=4");
  p.mesh_axis_names = {"data", "modle"};
  EXPECT_FALSE(p.is_valid());
  EXPECT_NE(p.invalid_reason().find("'modle'"), std::string::npos) << p.invalid_reason();
}
