// DP / FSDP / TP / PP / multi-dimensional strategies: specs by dimension names, the FSDP
// dimension rule, pipeline stage assignment, conflict resolution, and the property that
// every strategy's shards (apply_sharding on every rank) reassemble the original tensor
// over many random shapes and meshes, uneven cases included.
#include <gtest/gtest.h>

#include <memory>
#include <random>

#include "core/error.hpp"
#include "strategy/sharding_strategy.hpp"
#include "strategy_test_util.hpp"

using namespace shardflow;

namespace {
PartitionSpec P(const std::string& s) { return PartitionSpec::parse(s); }

template <typename S>
void check_all_ranks(const S& strategy, const MeshShape& mesh, const HostTensor<double>& t, const std::string& what) {
  Layout l = strategy.get_layout(t.shape, mesh);
  std::vector<HostTensor<double>> shards;
  for (int r = 0; r < mesh.size(); ++r) shards.push_back(strategy.apply_sharding(t, mesh, r));
  shardflow::test::expect_reassembles(l, t, shards, what);
}

using shardflow::test::message_of;
}  // namespace

TEST(DataParallelStrategy, SplitsBatchOnly) {
  DataParallelStrategy dp("data", 0);
  EXPECT_EQ(dp.get_partition_spec({"batch", "sequence", "hidden"}), P("('data', None, None)"));
  EXPECT_EQ(dp.get_partition_spec({"vocab", "hidden"}), P("(None, None)"));
  MeshShape mesh({"data"}, {3});
  EXPECT_EQ(dp.get_tensor_spec({7, 5}, mesh), P("('data', None)"));
  auto t = shardflow::test::iota_tensor({7, 5});
  auto s0 = dp.apply_sharding(t, mesh, 0);
  EXPECT_EQ(s0.shape, (Shape{3, 5}));  // 7 = 3 + 2 + 2
  EXPECT_EQ(s0.data[0], t.data[0]);
  auto s2 = dp.apply_sharding(t, mesh, 2);
  EXPECT_EQ(s2.shape, (Shape{2, 5}));
  EXPECT_EQ(s2.data[0], t.data[5 * 5]);
  auto c = dp.get_sharding_constraints();
  EXPECT_EQ(c["axis_name"], "data");
  EXPECT_EQ(c["mesh_axis"], "0");
}

TEST(FSDPStrategy, DimensionRule) {
  // Largest dimension divisible by the axis size; ties → first.
  EXPECT_EQ(FSDPStrategy::choose_shard_dim({6, 8, 4}, 2), 1);
  EXPECT_EQ(FSDPStrategy::choose_shard_dim({8, 8}, 4), 0);
  EXPECT_EQ(FSDPStrategy::choose_shard_dim({9, 6, 12}, 3), 2);
  EXPECT_EQ(FSDPStrategy::choose_shard_dim({10, 7, 3}, 5), 0);
  EXPECT_EQ(FSDPStrategy::choose_shard_dim({7, 12, 9}, 4), 1);  // only 12 divisible
  EXPECT_EQ(FSDPStrategy::choose_shard_dim({7, 9, 9}, 4), 1);   // none divisible → largest, first of ties
  EXPECT_EQ(FSDPStrategy::choose_shard_dim({16, 12}, 4, {true, false}), 1);  // excluded dim skipped
  EXPECT_EQ(FSDPStrategy::choose_shard_dim({16}, 4, {true}), -1);
  FSDPStrategy fsdp("fsdp", -1, 100);
  EXPECT_FALSE(fsdp.should_shard_weight({9, 11}));  // 99 < 100
  EXPECT_TRUE(fsdp.should_shard_weight({10, 10}));
  EXPECT_FALSE(fsdp.should_shard_weight({}));
  MeshShape mesh({"fsdp"}, {4});
  EXPECT_EQ(fsdp.get_tensor_spec({9, 11}, mesh), P("(None, None)"));
  EXPECT_EQ(fsdp.get_tensor_spec({10, 12}, mesh), P("(None, 'fsdp')"));
  EXPECT_EQ(fsdp.get_gradient_partition_spec({10, 12}, mesh), fsdp.get_tensor_spec({10, 12}, mesh));
  EXPECT_EQ(fsdp.get_partition_spec({"out_features", "in_features"}), P("('fsdp', None)"));
  EXPECT_EQ(fsdp.get_partition_spec({"batch", "hidden"}), P("(None, None)"));
  EXPECT_EQ(fsdp.get_gradient_partition_spec({"hidden"}), P("('fsdp',)"));
  EXPECT_EQ(fsdp.get_sharding_constraints()["min_weight_size"], "100");
}

TEST(TensorParallelStrategy, Specs) {
  TensorParallelStrategy col("tensor", -1, "out_features"), row("tensor", -1, "in_features"), def("tensor");
  EXPECT_EQ(col.get_linear_weight_spec(), P("('tensor', None)"));
  EXPECT_EQ(row.get_linear_weight_spec(), P("(None, 'tensor')"));
  EXPECT_EQ(def.get_partition_spec({"batch", "sequence", "hidden"}), P("(None, None, 'tensor')"));
  EXPECT_EQ(row.get_partition_spec({"out_features", "in_features"}), P("(None, 'tensor')"));
  EXPECT_EQ(def.get_attention_qkv_spec(), P("(None, 'tensor', None, None)"));
  EXPECT_EQ(def.get_attention_output_spec(), P("(None, 'tensor', None)"));
  MeshShape mesh({"data", "tensor"}, {2, 2});
  EXPECT_EQ(row.get_tensor_spec({4, 6}, mesh), P("(None, 'tensor')"));
  EXPECT_EQ(def.get_tensor_spec({4, 6, 5}, mesh), P("(None, None, 'tensor')"));
}

TEST(PipelineParallelStrategy, AssignLayersToStages) {
  PipelineParallelStrategy pp("pipeline", -1, 4);
  EXPECT_EQ(pp.assign_layers_to_stages(24), (std::vector<int>{6, 6, 6, 6}));
  EXPECT_EQ(pp.assign_layers_to_stages(10), (std::vector<int>{3, 3, 2, 2}));
  EXPECT_EQ(pp.assign_layers_to_stages(5), (std::vector<int>{2, 1, 1, 1}));
  EXPECT_EQ(pp.assign_layers_to_stages(4), (std::vector<int>{1, 1, 1, 1}));
  EXPECT_EQ(pp.stage_of_layer(0, 10), 0);
  EXPECT_EQ(pp.stage_of_layer(2, 10), 0);
  EXPECT_EQ(pp.stage_of_layer(3, 10), 1);
  EXPECT_EQ(pp.stage_of_layer(6, 10), 2);
  EXPECT_EQ(pp.stage_of_layer(9, 10), 3);
  const std::string m = message_of([&] { pp.assign_layers_to_stages(3); });
  EXPECT_NE(m.find("4 stages"), std::string::npos) << m;
  EXPECT_NE(m.find("3 layers"), std::string::npos) << m;
  EXPECT_THROW(PipelineParallelStrategy("pipeline", -1, 0), InputError);
  EXPECT_THROW(pp.stage_of_layer(10, 10), InputError);
}

TEST(PipelineParallelStrategy, CommunicationPatterns) {
  PipelineParallelStrategy pp("pipeline", -1, 3);
  auto f = pp.get_forward_communication_pattern();
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0], (StageTransfer{0, 1, "activations"}));
  EXPECT_EQ(f[1], (StageTransfer{1, 2, "activations"}));
  auto b = pp.get_backward_communication_pattern();
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0], (StageTransfer{2, 1, "activation gradients"}));
  EXPECT_EQ(b[1], (StageTransfer{1, 0, "activation gradients"}));
  EXPECT_TRUE(PipelineParallelStrategy("pipeline", -1, 1).get_forward_communication_pattern().empty());
  EXPECT_EQ(pp.get_partition_spec({"batch", "hidden"}), P("(None, None)"));
  // A stage layout: only that stage's ranks hold the tensor, whole.
  MeshShape mesh({"data", "pipeline"}, {2, 3});
  Layout l = pp.get_stage_layout({4, 4}, mesh, 1);
  for (int r = 0; r < mesh.size(); ++r) EXPECT_EQ(l.holds(r), mesh.coord(r, "pipeline") == 1) << r;
  EXPECT_THROW(pp.get_stage_layout({4, 4}, MeshShape({"pipeline"}, {2}), 0), InputError);
}

TEST(ShardingStrategy, EveryStrategyReassemblesOnRandomShapesAndMeshes) {
  std::mt19937 rng(7);
  const std::vector<std::vector<std::string>> axis_sets{
      {"data"}, {"fsdp"}, {"tensor"}, {"data", "tensor"}, {"data", "fsdp", "tensor"}, {"pipeline", "data"}};
  int cases = 0;
  for (int iter = 0; iter < 300; ++iter) {
    const auto& names = axis_sets[static_cast<size_t>(iter) % axis_sets.size()];
    std::vector<int> sizes;
    for (size_t i = 0; i < names.size(); ++i) sizes.push_back(std::uniform_int_distribution<int>(1, 4)(rng));
    MeshShape mesh(names, sizes);
    Shape shape = shardflow::test::random_shape(rng, 4, 9);
    std::mt19937 data_rng(static_cast<unsigned>(iter));
    auto t = shardflow::test::random_tensor(shape, data_rng);
    const std::string what = shape_to_string(shape) + " on " + mesh.to_string();
    if (mesh.has_axis("data")) check_all_ranks(DataParallelStrategy("data"), mesh, t, "DP " + what);
    if (mesh.has_axis("fsdp")) check_all_ranks(FSDPStrategy("fsdp", -1, 8), mesh, t, "FSDP " + what);
    if (mesh.has_axis("tensor")) check_all_ranks(TensorParallelStrategy("tensor"), mesh, t, "TP " + what);
    if (mesh.has_axis("pipeline"))
      check_all_ranks(PipelineParallelStrategy("pipeline", -1, mesh.axis_size("pipeline")), mesh, t, "PP " + what);
    if (mesh.has_axis("tensor") && mesh.has_axis("fsdp") && mesh.has_axis("data")) {
      ShardingConfig sc;
      sc.data_parallel_size = mesh.axis_size("data");
      sc.fsdp_parallel_size = mesh.axis_size("fsdp");
      sc.tensor_parallel_size = mesh.axis_size("tensor");
      ParallelismConfig pc{mesh.sizes(), mesh.axis_names(), sc};
      MultiDimensionalStrategy md({{"dp", std::make_shared<DataParallelStrategy>("data")},
                                   {"fsdp", std::make_shared<FSDPStrategy>("fsdp", -1, 8)},
                                   {"tp", std::make_shared<TensorParallelStrategy>("tensor")}},
                                  pc);
      Layout l = md.get_combined_layout("w", shape);
      std::vector<HostTensor<double>> shards;
      for (int r = 0; r < mesh.size(); ++r) shards.push_back(md.apply_sharding("w", t, r));
      shardflow::test::expect_reassembles(l, t, shards, "multi " + what);
    }
    ++cases;
  }
  EXPECT_EQ(cases, 300);
}

TEST(ShardingStrategy, MeshAxisMustMatch) {
  MeshShape mesh({"data", "tensor"}, {2, 2});
  auto t = shardflow::test::iota_tensor({4, 4});
  EXPECT_THROW(DataParallelStrategy("data", 1).apply_sharding(t, mesh, 0), InputError);  // data is axis 0
  EXPECT_THROW(DataParallelStrategy("fsdp").apply_sharding(t, mesh, 0), InputError);     // not in mesh
  EXPECT_THROW(DataParallelStrategy("model"), InputError);                               // unknown axis name
  const std::string m = message_of([] { DataParallelStrategy("model"); });
  EXPECT_NE(m.find("'model'"), std::string::npos) << m;
}

namespace {
ParallelismConfig config_for(std::vector<std::string> names, std::vector<int> sizes) {
  ShardingConfig sc;
  MeshShape m(names, sizes);
  sc.data_parallel_size = m.axis_size_or_1("data");
  sc.fsdp_parallel_size = m.axis_size_or_1("fsdp");
  sc.tensor_parallel_size = m.axis_size_or_1("tensor");
  sc.pipeline_parallel_size = m.axis_size_or_1("pipeline");
  return ParallelismConfig{sizes, names, sc};
}
}  // namespace

TEST(MultiDimensionalStrategy, CombinedSpecsByName) {
  auto cfg = config_for({"data", "fsdp", "tensor"}, {2, 2, 2});
  MultiDimensionalStrategy md({{"dp", std::make_shared<DataParallelStrategy>("data")},
                               {"fsdp", std::make_shared<FSDPStrategy>("fsdp")},
                               {"tp", std::make_shared<TensorParallelStrategy>("tensor")}},
                              cfg);
  EXPECT_EQ(md.get_combined_partition_spec("x", DimNames{"batch", "sequence", "hidden"}),
            P("('data', None, 'tensor')"));
  // TP and FSDP both claim dim 0 → composed, tensor most significant.
  EXPECT_EQ(md.get_combined_partition_spec("w", DimNames{"hidden", "in_features"}), P("(('tensor', 'fsdp'), None)"));
  EXPECT_EQ(md.get_combined_partition_spec("w", DimNames{"out_features", "in_features"}), P("('fsdp', None)"));
}

TEST(MultiDimensionalStrategy, CombinedSpecsByShape) {
  auto cfg = config_for({"data", "fsdp", "tensor"}, {2, 2, 2});
  MultiDimensionalStrategy md({{"dp", std::make_shared<DataParallelStrategy>("data")},
                               {"fsdp", std::make_shared<FSDPStrategy>("fsdp", -1, 16)},
                               {"tp", std::make_shared<TensorParallelStrategy>("tensor", -1, "out_features")}},
                              cfg);
  // TP takes dim 0 of [out, in]; FSDP composes onto the dimension TP left unsplit.
  EXPECT_EQ(md.get_combined_partition_spec("w", Shape{64, 32}), P("('tensor', 'fsdp')"));
  // 1-D: TP splits the only dimension, FSDP stacks onto it.
  EXPECT_EQ(md.get_combined_partition_spec("g", Shape{64}), P("(('tensor', 'fsdp'),)"));
  // Small tensors stay replicated under FSDP.
  EXPECT_EQ(md.get_combined_partition_spec("b", Shape{4, 2}), P("('tensor', None)"));
}

TEST(MultiDimensionalStrategy, DataAndFsdpMayShareAnAxis) {
  auto cfg = config_for({"data", "tensor"}, {2, 2});
  MultiDimensionalStrategy md({{"dp", std::make_shared<DataParallelStrategy>("data")},
                               {"zero3", std::make_shared<FSDPStrategy>("data", -1, 1)}},
                              cfg);
  // FSDP over the data axis keeps the axis; DP's claim on another dimension is dropped.
  EXPECT_EQ(md.resolve_sharding_conflicts("w", {{"dp", P("(None, 'data')")}, {"zero3", P("('data', None)")}}),
            P("('data', None)"));
  EXPECT_EQ(md.get_combined_partition_spec("x", DimNames{"batch", "hidden"}), P("('data', None)"));
}

TEST(MultiDimensionalStrategy, ConflictsAreClearErrors) {
  auto cfg = config_for({"data", "tensor"}, {2, 2});
  // Same axis for TP and DP.
  std::string m = message_of([&] {
    MultiDimensionalStrategy({{"dp", std::make_shared<DataParallelStrategy>("data")},
                              {"tp", std::make_shared<TensorParallelStrategy>("data")}},
                             cfg);
  });
  EXPECT_NE(m.find("'dp' (DataParallelStrategy)"), std::string::npos) << m;
  EXPECT_NE(m.find("'tp' (TensorParallelStrategy)"), std::string::npos) << m;
  EXPECT_NE(m.find("'data'"), std::string::npos) << m;
  // Two strategies of one type.
  m = message_of([&] {
    MultiDimensionalStrategy({{"a", std::make_shared<DataParallelStrategy>("data")},
                              {"b", std::make_shared<DataParallelStrategy>("tensor")}},
                             cfg);
  });
  EXPECT_NE(m.find("'a'"), std::string::npos) << m;
  EXPECT_NE(m.find("'b'"), std::string::npos) << m;
  // Axis not in the mesh.
  m = message_of([&] {
    MultiDimensionalStrategy({{"pp", std::make_shared<PipelineParallelStrategy>("pipeline", -1, 2)}}, cfg);
  });
  EXPECT_NE(m.find("'pipeline'"), std::string::npos) << m;
  // Pipeline stages differ from the axis size.
  auto cfg_pp = config_for({"pipeline"}, {2});
  EXPECT_THROW(
      MultiDimensionalStrategy({{"pp", std::make_shared<PipelineParallelStrategy>("pipeline", -1, 3)}}, cfg_pp),
      InputError);
  // The same axis on two dimensions from two non-DP/FSDP strategies.
  MultiDimensionalStrategy ok({{"dp", std::make_shared<DataParallelStrategy>("data")},
                               {"tp", std::make_shared<TensorParallelStrategy>("tensor")}},
                              cfg);
  m = message_of([&] {
    ok.resolve_sharding_conflicts("w", {{"dp", P("('tensor', None)")}, {"tp", P("(None, 'tensor')")}});
  });
  EXPECT_NE(m.find("tensor 'w'"), std::string::npos) << m;
  EXPECT_NE(m.find("'dp'"), std::string::npos) << m;
  EXPECT_NE(m.find("'tp'"), std::string::npos) << m;
  // Unknown strategy name, mismatched ranks.
  EXPECT_THROW(ok.resolve_sharding_conflicts("w", {{"nope", P("(None,)")}}), InputError);
  EXPECT_THROW(ok.resolve_sharding_conflicts("w", {{"dp", P("(None,)")}, {"tp", P("(None, None)")}}), InputError);
  // Different dims on different axes compose fine; the priority order puts tensor first.
  EXPECT_EQ(ok.resolve_sharding_conflicts("w", {{"dp", P("('data', None)")}, {"tp", P("('tensor', None)")}}),
            P("(('tensor', 'data'), None)"));
}
