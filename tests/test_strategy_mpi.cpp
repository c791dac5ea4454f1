// Strategies on a real MPI mesh: every rank shards the same tensor with apply_sharding,
// the shards travel to every rank (MPI_Allgatherv), and each rank checks that the leaders'
// shards reassemble the original exactly and replicas agree — over several strategies,
// uneven shapes and every mesh that factors the world size.
#include <gtest/gtest.h>
#include <mpi.h>

#include <memory>
#include <random>

#include "core/error.hpp"
#include "strategy/device_mesh_manager.hpp"
#include "model/model_description.hpp"
#include "parallel/layout_plan.hpp"
#include "strategy/sharding_strategy.hpp"
#include "strategy_test_util.hpp"
#include "support/test_util.hpp"

using namespace shardflow;

namespace {

/// Gathers every rank's shard (shapes from the layout) onto every rank.
std::vector<HostTensor<double>> allgather_shards(const HostTensor<double>& mine, const Layout& l, MPI_Comm comm) {
  const int n = l.mesh().size();
  std::vector<int> counts(static_cast<size_t>(n)), displs(static_cast<size_t>(n));
  int total = 0;
  for (int r = 0; r < n; ++r) {
    counts[static_cast<size_t>(r)] = static_cast<int>(l.local_numel(r));
    displs[static_cast<size_t>(r)] = total;
    total += counts[static_cast<size_t>(r)];
  }
  std::vector<double> all(static_cast<size_t>(std::max(total, 1)));
  MPI_Allgatherv(mine.data.data(), static_cast<int>(mine.data.size()), MPI_DOUBLE, all.data(), counts.data(),
                 displs.data(), MPI_DOUBLE, comm);
  std::vector<HostTensor<double>> out;
  for (int r = 0; r < n; ++r) {
    auto b = all.begin() + displs[static_cast<size_t>(r)];
    out.emplace_back(l.local_shape(r), std::vector<double>(b, b + counts[static_cast<size_t>(r)]));
  }
  return out;
}

}  // namespace

TEST(StrategyMpi, ShardsReassembleOnEveryMesh) {
  const int world = shardflow::test::world_size();
  std::mt19937 rng(99);  // same sequence on every rank
  const std::vector<std::vector<std::string>> name_sets{{"data"}, {"data", "tensor"}, {"fsdp", "tensor", "pipeline"}};
  int checked = 0;
  for (const auto& names : name_sets)
    for (const auto& sizes : shardflow::test::factorisations(world, static_cast<int>(names.size()))) {
      Mesh mesh = bind_mesh(create_device_mesh(sizes, names));
      for (int iter = 0; iter < 10; ++iter) {
        Shape shape = shardflow::test::random_shape(rng, 3, 7);
        std::mt19937 data_rng(static_cast<unsigned>(iter * 31 + checked));
        auto t = shardflow::test::random_tensor(shape, data_rng);
        std::vector<std::unique_ptr<ShardingStrategy>> strategies;
        if (mesh.shape().has_axis("data")) strategies.push_back(std::make_unique<DataParallelStrategy>("data", 0));
        if (mesh.shape().has_axis("fsdp")) strategies.push_back(std::make_unique<FSDPStrategy>("fsdp", 0, 4));
        if (mesh.shape().has_axis("tensor")) strategies.push_back(std::make_unique<TensorParallelStrategy>("tensor"));
        for (const auto& s : strategies) {
          Layout l = s->get_layout(shape, mesh.shape());
          auto mine = s->apply_sharding(t, mesh);
          ASSERT_EQ(mine.shape, l.local_shape(mesh.rank()));
          auto shards = allgather_shards(mine, l, mesh.world());
          shardflow::test::expect_reassembles(
              l, t, shards, s->type_name() + " " + shape_to_string(shape) + " on " + mesh.shape().to_string());
        }
        ++checked;
      }
    }
  EXPECT_GT(checked, 0);
}

TEST(StrategyMpi, ModelParametersReassembleOnTheRanks) {
  // Each rank cuts its box of every quickstart parameter (view shape) on a mesh of the
  // world; the gathered boxes rebuild every parameter.
  const int world = shardflow::test::world_size();
  ModelConfig c = ModelConfig::quickstart();
  c.layers = 2;
  ModelDescription model(c);
  for (const auto& sizes : shardflow::test::factorisations(world, 2)) {
    Mesh mesh = bind_mesh(create_device_mesh(sizes, {"fsdp", "tensor"}));
    StrategyOptions z3;
    z3.zero_stage = 3;
    const parallel::LayoutPlan plan(model, mesh.shape(), z3);
    for (const auto& pl : plan.params()) {
      const ParamInfo& p = pl.info;
      Layout l = plan.layout(pl, TensorRole::Param);
      std::mt19937 rng(static_cast<unsigned>(p.numel()));
      auto full = shardflow::test::random_tensor(l.global_shape(), rng);
      auto mine = extract_box(full, l.box(mesh.rank()));
      shardflow::test::expect_reassembles(l, full, allgather_shards(mine, l, mesh.world()), p.name);
    }
  }
}

TEST(StrategyMpi, MeshMustMatchTheWorld) {
  const int world = shardflow::test::world_size();
  // Every rank throws the same InputError naming both numbers.
  try {
    bind_mesh(create_device_mesh({world + 1}, {"data"}));
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(std::to_string(world + 1) + " devices"), std::string::npos) << m;
    EXPECT_NE(m.find(std::to_string(world) + " ranks"), std::string::npos) << m;
  }
  DeviceMeshManager mgr({world}, {"data"});
  Mesh m = mgr.bind();
  EXPECT_EQ(m.size(), world);
  EXPECT_FALSE(mgr.validate_mesh_config({world, 2}, world));
  EXPECT_TRUE(shardflow::test::all_ranks(true));
}
