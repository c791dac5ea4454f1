#pragma once
// CommSet: one Communicator for each mesh axis and each group of axes (every non-empty
// subset, built from Mesh::comm(axes)), plus one over the whole mesh whose ranks are the
// mesh ranks ("world"), all with one backend. Construction is collective over the mesh;
// the CommSet must not outlive the Mesh.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/mesh.hpp"

namespace shardflow::comm {

class CommSet {
 public:
  CommSet(const Mesh& mesh, Backend backend);
  Backend backend() const { return backend_; }
  const Mesh& mesh() const { return *mesh_; }
  /// The communicator of one axis; InputError naming the axis when the mesh has none.
  Communicator& axis(const std::string& name) const;
  /// The communicator of a group of axes (any order); an empty list gives this rank alone.
  Communicator& group(const std::vector<std::string>& axes) const;
  /// All ranks of the mesh, rank i = mesh rank i (what Layout::box(rank) refers to).
  Communicator& world() const { return *world_; }

 private:
  const Mesh* mesh_;
  Backend backend_;
  std::map<std::vector<std::string>, std::unique_ptr<Communicator>> comms_;
  std::unique_ptr<Communicator> world_;
};

}  // namespace shardflow::comm
