#include "comm/mesh.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "comm/mpi_check.hpp"

namespace shardflow {

Mesh::Mesh(MeshShape shape, MPI_Comm world) : shape_(std::move(shape)) {
  int world_size = 0;
  CHECK_MPI(MPI_Comm_size(world, &world_size));
  CHECK_MPI(MPI_Comm_rank(world, &rank_));
  // Every rank evaluates the same condition on the same inputs, so all throw together.
  SHARDFLOW_REQUIRE_INPUT(shape_.size() == world_size, "mesh ", shape_.to_string(), " has ", shape_.size(),
                          " devices but the job has ", world_size, " ranks");
  CHECK_MPI(MPI_Comm_dup(world, &world_));
  const int n = shape_.ndim();
  try {
    for (int mask = 0; mask < (1 << n); ++mask) {
      std::vector<std::string> axes;
      for (int i = 0; i < n; ++i)
        if (mask & (1 << i)) axes.push_back(shape_.axis_names()[static_cast<size_t>(i)]);
      // color: the rank's coordinates on the other axes; key: group index on these axes.
      std::vector<std::string> others;
      for (int i = 0; i < n; ++i)
        if (!(mask & (1 << i))) others.push_back(shape_.axis_names()[static_cast<size_t>(i)]);
      int color = shape_.group_index(rank_, others);
      int key = shape_.group_index(rank_, axes);
      MPI_Comm c = MPI_COMM_NULL;
      CHECK_MPI(MPI_Comm_split(world_, color, key, &c));
      comms_[axes] = c;
    }
  } catch (...) {
    free_comms();
    throw;
  }
}

Mesh::~Mesh() { free_comms(); }

void Mesh::free_comms() noexcept {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (auto& kv : comms_)
    if (kv.second != MPI_COMM_NULL) MPI_Comm_free(&kv.second);
  comms_.clear();
  if (world_ != MPI_COMM_NULL) MPI_Comm_free(&world_);
  world_ = MPI_COMM_NULL;
}

Mesh::Mesh(Mesh&& o) noexcept
    : shape_(std::move(o.shape_)), world_(o.world_), rank_(o.rank_), comms_(std::move(o.comms_)) {
  o.world_ = MPI_COMM_NULL;
  o.comms_.clear();
}

Mesh& Mesh::operator=(Mesh&& o) noexcept {
  if (this != &o) {
    free_comms();
    shape_ = std::move(o.shape_);
    world_ = o.world_;
    rank_ = o.rank_;
    comms_ = std::move(o.comms_);
    o.world_ = MPI_COMM_NULL;
    o.comms_.clear();
  }
  return *this;
}

std::vector<std::string> Mesh::canonical_axes(const std::vector<std::string>& axes) const {
  std::vector<std::string> out;
  for (const auto& name : shape_.axis_names())
    if (std::find(axes.begin(), axes.end(), name) != axes.end()) out.push_back(name);
  for (const auto& a : axes) {
    shape_.axis_index(a);  // throws for an unknown axis
    SHARDFLOW_REQUIRE_INPUT(std::count(axes.begin(), axes.end(), a) == 1, "axis '", a,
                            "' listed twice in a communicator group");
  }
  return out;
}

MPI_Comm Mesh::comm(const std::string& axis) const { return comm(std::vector<std::string>{axis}); }

MPI_Comm Mesh::comm(const std::vector<std::string>& axes) const {
  auto it = comms_.find(canonical_axes(axes));
  SHARDFLOW_REQUIRE(it != comms_.end(), "mesh has no communicator for the requested axes");
  return it->second;
}

}  // namespace shardflow
