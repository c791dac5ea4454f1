#include <gtest/gtest.h>

#include <set>

#include "core/error.hpp"
#include "mesh/mesh_shape.hpp"
#include "support/test_util.hpp"

using namespace shardflow;

TEST(MeshShape, CoordsRoundTripAndCoverEveryRankOnce) {
  for (int n : {1, 2, 4, 6, 8, 12}) {
    for (auto sizes : test::factorisations(n, 3)) {
      MeshShape m({"data", "tensor", "pipeline"}, sizes);
      std::set<std::vector<int>> seen;
      for (int r = 0; r < n; ++r) {
        auto c = m.coords(r);
        EXPECT_EQ(m.rank_of(c), r);
        EXPECT_TRUE(seen.insert(c).second);
      }
      EXPECT_EQ(static_cast<int>(seen.size()), n);
    }
  }
}

TEST(MeshShape, TensorGroupRanksAreAdjacent) {
  MeshShape m({"tensor", "data"}, {4, 2});
  // tensor is innermost whatever its declared position: ranks 0..3 form one group.
  EXPECT_EQ(m.group_ranks(0, {"tensor"}), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(m.group_ranks(5, {"tensor"}), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(m.group_ranks(5, {"data"}), (std::vector<int>{1, 5}));
  MeshShape plain({"tensor", "data"}, {4, 2}, /*tensor_adjacent=*/false);
  EXPECT_EQ(plain.group_ranks(0, {"tensor"}), (std::vector<int>{0, 2, 4, 6}));
}

TEST(MeshShape, GroupIndexIsMixedRadixFirstAxisMajor) {
  MeshShape m({"data", "fsdp"}, {2, 3});
  for (int r = 0; r < 6; ++r) {
    EXPECT_EQ(m.group_index(r, {"data", "fsdp"}), m.coord(r, "data") * 3 + m.coord(r, "fsdp"));
    EXPECT_EQ(m.group_index(r, {"fsdp", "data"}), m.coord(r, "fsdp") * 2 + m.coord(r, "data"));
    auto g = m.group_ranks(r, {"data", "fsdp"});
    EXPECT_EQ(g.size(), 6u);
    EXPECT_EQ(g[static_cast<size_t>(m.group_index(r, {"data", "fsdp"}))], r);
  }
}

TEST(MeshShape, BadInputNamesTheValue) {
  auto msg = [](auto f) {
    try {
      f();
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([] { MeshShape({"data", "data"}, {2, 2}); }).find("'data' is named more than once"), std::string::npos);
  EXPECT_NE(msg([] { MeshShape({"model"}, {2}); }).find("unknown axis 'model'"), std::string::npos);
  EXPECT_NE(msg([] { MeshShape({"data"}, {0}); }).find("size 0"), std::string::npos);
  EXPECT_NE(msg([] { MeshShape({"data"}, {-3}); }).find("size -3"), std::string::npos);
  EXPECT_NE(msg([] { MeshShape({"data", "tensor"}, {2}); }).find("2 axis names"), std::string::npos);
  EXPECT_NE(msg([] { MeshShape({"data"}, {2}).axis_size("tensor"); }).find("no axis 'tensor'"), std::string::npos);
}
