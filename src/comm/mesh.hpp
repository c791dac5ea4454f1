#pragma once
// Mesh: a MeshShape bound to MPI ranks, with one MPI communicator per axis and per
// group of axes (every non-empty subset, created collectively at construction).
//
// Inside the communicator of a group of axes, ranks are ordered by their group index
// with the axes taken in the mesh's declared order (first declared axis most
// significant), whatever order the caller lists them in.
#include <mpi.h>

#include <map>
#include <string>
#include <vector>

#include "mesh/mesh_shape.hpp"

namespace shardflow {

class Mesh {
 public:
  /// Collective over `world`. Throws InputError when the mesh's size differs from the
  /// number of ranks in `world` (naming both), on every rank alike.
  explicit Mesh(MeshShape shape, MPI_Comm world = MPI_COMM_WORLD);
  ~Mesh();
  Mesh(const Mesh&) = delete;
  Mesh& operator=(const Mesh&) = delete;
  Mesh(Mesh&& o) noexcept;
  Mesh& operator=(Mesh&& o) noexcept;

  const MeshShape& shape() const { return shape_; }
  int rank() const { return rank_; }
  int size() const { return shape_.size(); }
  MPI_Comm world() const { return world_; }
  std::vector<int> coords() const { return shape_.coords(rank_); }
  int coord(const std::string& axis) const { return shape_.coord(rank_, axis); }

  /// Communicator of one axis (a group of axis_size ranks).
  MPI_Comm comm(const std::string& axis) const;
  /// Communicator of a group of axes; an empty list gives a communicator of this rank alone.
  MPI_Comm comm(const std::vector<std::string>& axes) const;
  /// Axes of a group in declared mesh order (the canonical key of a group).
  std::vector<std::string> canonical_axes(const std::vector<std::string>& axes) const;

 private:
  void free_comms() noexcept;
  MeshShape shape_;
  MPI_Comm world_ = MPI_COMM_NULL;
  int rank_ = 0;
  std::map<std::vector<std::string>, MPI_Comm> comms_;
};

}  // namespace shardflow
