#pragma once
// MeshShape: the pure (MPI-free) description of an N-D device mesh with named axes.
//
// Axis names come from a fixed vocabulary: data, fsdp, tensor, pipeline, expert (any
// subset, any order, each at most once). Ranks are laid out row-major over the axes in
// "placement order": the declared order, except that `tensor` is moved innermost (fastest
// varying) when tensor_adjacent is true (the default), so the ranks of one tensor-parallel
// group are consecutive and land on one node under a block rank placement.
#include <string>
#include <vector>

namespace shardflow {

/// The axis names shardflow knows.
const std::vector<std::string>& known_axis_names();

class MeshShape {
 public:
  /// The trivial mesh: no axes, one device.
  MeshShape() = default;
  /// Throws InputError for an unknown axis, an axis named twice, a size < 1, or
  /// names/sizes of different lengths; the message names the value.
  MeshShape(std::vector<std::string> axis_names, std::vector<int> sizes, bool tensor_adjacent = true);

  int ndim() const { return static_cast<int>(names_.size()); }
  const std::vector<std::string>& axis_names() const { return names_; }
  const std::vector<int>& sizes() const { return sizes_; }
  bool tensor_adjacent() const { return tensor_adjacent_; }
  /// Number of devices (product of the sizes; 1 for the trivial mesh).
  int size() const;

  bool has_axis(const std::string& axis) const;
  /// Index of the axis in the declared order; throws InputError naming the axis otherwise.
  int axis_index(const std::string& axis) const;
  /// Size of the axis; throws InputError when the mesh has no such axis.
  int axis_size(const std::string& axis) const;
  /// Size of the axis, or 1 when the mesh has no such axis.
  int axis_size_or_1(const std::string& axis) const;
  /// Product of the sizes of the given axes (each must exist).
  int group_size(const std::vector<std::string>& axes) const;

  /// Coordinates of a rank, in declared axis order.
  std::vector<int> coords(int rank) const;
  /// Rank of the given coordinates (declared axis order).
  int rank_of(const std::vector<int>& coords) const;
  int coord(int rank, const std::string& axis) const;

  /// Index of `rank` inside its group over `axes`: mixed radix of its coordinates on
  /// those axes, the first listed axis most significant.
  int group_index(int rank, const std::vector<std::string>& axes) const;
  /// All ranks sharing rank's coordinates on every axis not in `axes`, ordered by
  /// group_index over `axes`.
  std::vector<int> group_ranks(int rank, const std::vector<std::string>& axes) const;

  /// e.g. "data=2 x fsdp=2"; "single" for the trivial mesh.
  std::string to_string() const;

  bool operator==(const MeshShape& o) const {
    return names_ == o.names_ && sizes_ == o.sizes_ && tensor_adjacent_ == o.tensor_adjacent_;
  }
  bool operator!=(const MeshShape& o) const { return !(*this == o); }

 private:
  std::vector<std::string> names_;
  std::vector<int> sizes_;
  bool tensor_adjacent_ = true;
  std::vector<int> placement_;  // axis indices, outermost first
  std::vector<long> stride_;    // rank stride of each declared axis
};

}  // namespace shardflow
