#include <gtest/gtest.h>

#include <random>

#include "core/error.hpp"
#include "layout/layout.hpp"
#include "support/test_util.hpp"

using namespace shardflow;

TEST(UnevenRule, FirstRemainderShardsGetOneMore) {
  EXPECT_EQ(split_extent(10, 4, 0), 3);
  EXPECT_EQ(split_extent(10, 4, 1), 3);
  EXPECT_EQ(split_extent(10, 4, 2), 2);
  EXPECT_EQ(split_extent(10, 4, 3), 2);
  EXPECT_EQ(split_offset(10, 4, 2), 6);
  EXPECT_EQ(split_extent(3, 4, 3), 0);
  for (int64_t d = 0; d < 40; ++d)
    for (int64_t n = 1; n < 9; ++n) {
      int64_t off = 0;
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_EQ(split_offset(d, n, i), off);
        off += split_extent(d, n, i);
      }
      EXPECT_EQ(off, d);
    }
}

TEST(PartitionSpec, ToStringParsesBack) {
  PartitionSpec s{{"data"}, {}, {"data", "fsdp"}};
  EXPECT_EQ(s.to_string(), "('data', None, ('data', 'fsdp'))");
  EXPECT_EQ(PartitionSpec::parse(s.to_string()), s);
  PartitionSpec one{{"tensor"}};
  EXPECT_EQ(one.to_string(), "('tensor',)");
  EXPECT_EQ(PartitionSpec::parse(one.to_string()), one);
  EXPECT_EQ(PartitionSpec::parse("()"), PartitionSpec());
  EXPECT_THROW(PartitionSpec::parse("('data'"), InputError);
  EXPECT_THROW(PartitionSpec::parse("(data)"), InputError);
}

// Property: on random shapes, meshes and specs, every element of the global tensor is
// held by exactly one shard owner, and each replica group holds the same box.
TEST(Layout, BoxesTileTheTensorExactlyOnce) {
  std::mt19937 rng(1234);
  const std::vector<std::string> axes{"data", "fsdp", "tensor", "pipeline"};
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<int> sizes;
    for (size_t i = 0; i < axes.size(); ++i) sizes.push_back(1 + static_cast<int>(rng() % 3));
    MeshShape mesh(axes, sizes, rng() % 2 == 0);
    const size_t ndim = 1 + rng() % 3;
    Shape shape;
    for (size_t d = 0; d < ndim; ++d) shape.push_back(static_cast<int64_t>(rng() % 9));
    std::vector<PartitionSpec::DimAxes> dims(ndim);
    for (const auto& a : axes) {
      int pick = static_cast<int>(rng() % (ndim + 1));
      if (pick < static_cast<int>(ndim)) dims[static_cast<size_t>(pick)].push_back(a);
    }
    Layout L(shape, PartitionSpec(dims), mesh);
    std::vector<int> count(static_cast<size_t>(numel(shape)), 0);
    auto strides = row_major_strides(shape);
    for (int r : L.shard_owners()) {
      Box b = L.box(r);
      for (int64_t flat = 0; flat < b.numel(); ++flat) {
        int64_t rem = flat, g = 0;
        for (size_t d = ndim; d-- > 0;) {
          g += (b.offset[d] + rem % b.extent[d]) * strides[d];
          rem /= b.extent[d];
        }
        count[static_cast<size_t>(g)]++;
      }
    }
    for (size_t i = 0; i < count.size(); ++i) ASSERT_EQ(count[i], 1) << L.to_string() << " element " << i;
    for (int r = 0; r < mesh.size(); ++r)
      for (int q : L.replicas(r)) ASSERT_EQ(L.box(q), L.box(r)) << L.to_string();
    EXPECT_EQ(static_cast<int64_t>(L.shard_owners().size()), L.num_shards());
  }
}

TEST(Layout, PinnedLayoutLivesOnOneStage) {
  MeshShape mesh({"pipeline", "data"}, {2, 2});
  Layout L({8, 4}, PartitionSpec{{"data"}, {}}, mesh, {{"pipeline", 1}});
  for (int r = 0; r < 4; ++r) {
    bool on_stage = mesh.coord(r, "pipeline") == 1;
    EXPECT_EQ(L.holds(r), on_stage);
    EXPECT_EQ(L.local_numel(r), on_stage ? 16 : 0);
  }
  EXPECT_EQ(L.shard_owners().size(), 2u);
}

TEST(Layout, BadInputNamesTheValue) {
  MeshShape mesh({"data"}, {2});
  try {
    Layout({4, 4}, PartitionSpec{{"tensor"}, {}}, mesh);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("axis 'tensor'"), std::string::npos) << e.what();
  }
  try {
    Layout({4, 4}, PartitionSpec{{"data"}, {"data"}}, mesh);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'data' more than once"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Layout({4}, PartitionSpec{{"data"}, {}}, mesh), InputError);
}
