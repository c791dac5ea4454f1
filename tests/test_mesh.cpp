#include <gtest/gtest.h>
#include <mpi.h>

#include "core/error.hpp"
#include "comm/mesh.hpp"
#include "support/test_util.hpp"

using namespace shardflow;

// Each axis communicator holds exactly the ranks MeshShape::group_ranks predicts, in
// group-index order, on every factorisation of the world into three axes.
TEST(Mesh, AxisAndGroupCommunicatorsMatchTheShape) {
  const int n = test::world_size();
  for (auto sizes : test::factorisations(n, 3)) {
    Mesh mesh(MeshShape({"data", "fsdp", "tensor"}, sizes));
    const int me = mesh.rank();
    for (std::vector<std::string> axes :
         {std::vector<std::string>{"data"}, {"fsdp"}, {"tensor"}, {"data", "fsdp"}, {"fsdp", "tensor"},
          {"data", "fsdp", "tensor"}}) {
      MPI_Comm c = mesh.comm(axes);
      int csize = 0, crank = 0;
      MPI_Comm_size(c, &csize);
      MPI_Comm_rank(c, &crank);
      auto canon = mesh.canonical_axes(axes);
      auto expected = mesh.shape().group_ranks(me, canon);
      ASSERT_EQ(csize, static_cast<int>(expected.size()));
      EXPECT_EQ(crank, mesh.shape().group_index(me, canon));
      std::vector<int> members(static_cast<size_t>(csize));
      MPI_Allgather(&me, 1, MPI_INT, members.data(), 1, MPI_INT, c);
      EXPECT_EQ(members, expected);
    }
  }
}

TEST(Mesh, WrongWorldSizeThrowsOnEveryRank) {
  const int n = test::world_size();
  bool threw = false;
  try {
    Mesh mesh(MeshShape({"data", "tensor"}, {n, 2}));
  } catch (const InputError& e) {
    threw = std::string(e.what()).find("has " + std::to_string(2 * n) + " devices but the job has " +
                                       std::to_string(n) + " ranks") != std::string::npos;
  }
  EXPECT_TRUE(threw);
  EXPECT_TRUE(test::all_ranks(threw));
}
