#pragma once
// Layout: a PartitionSpec applied to a global shape on a mesh. It answers "which box of
// the global tensor does rank r hold?" for every rank.
//
// The uneven rule (one rule for the whole project and its checkpoint format): a
// dimension of extent d split into n shards gives shard i the extent d / n + (i < d % n),
// starting at i * (d / n) + min(i, d % n). The first d % n shards get one extra element.
// Head-aware splits are expressed by splitting a "heads" dimension of a view shape (for
// example [3H, H] viewed as [3, A, D, H]), so the same rule gives the first A % n devices
// one extra head.
//
// A layout may be pinned to one index of some axes (e.g. pipeline = stage): ranks with
// other coordinates on a pinned axis hold nothing of the tensor.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "layout/partition_spec.hpp"
#include "mesh/mesh_shape.hpp"

namespace shardflow {

using Shape = std::vector<int64_t>;

/// Extent of shard i of n along a dimension of extent d (the uneven rule).
int64_t split_extent(int64_t d, int64_t n, int64_t i);
/// Offset of shard i of n along a dimension of extent d (the uneven rule).
int64_t split_offset(int64_t d, int64_t n, int64_t i);
int64_t numel(const Shape& s);
/// Product of the extents s[begin, end) (the [outer, rows, inner] view of one dimension).
int64_t numel(const Shape& s, size_t begin, size_t end);
std::string shape_to_string(const Shape& s);
/// Row-major strides (in elements) of a shape.
Shape row_major_strides(const Shape& s);

/// A rectangular region of a tensor: offset and extent per dimension.
struct Box {
  Shape offset;
  Shape extent;
  size_t ndim() const { return extent.size(); }
  int64_t numel() const;
  bool empty() const { return numel() == 0; }
  bool contains(const Box& inner) const;
  /// The intersection (empty extents where disjoint).
  static Box intersect(const Box& a, const Box& b);
  std::string to_string() const;
  bool operator==(const Box& o) const { return offset == o.offset && extent == o.extent; }
  bool operator!=(const Box& o) const { return !(*this == o); }
};

class Layout {
 public:
  Layout() = default;
  /// Throws InputError when the spec's rank differs from the shape's, when an axis is
  /// not in the mesh or is used twice, or when an extent is negative.
  Layout(Shape global_shape, PartitionSpec spec, MeshShape mesh, std::map<std::string, int> pinned = {});
  /// A fully replicated layout.
  static Layout replicated(Shape global_shape, MeshShape mesh);

  const Shape& global_shape() const { return shape_; }
  const PartitionSpec& spec() const { return spec_; }
  const MeshShape& mesh() const { return mesh_; }
  const std::map<std::string, int>& pinned() const { return pinned_; }
  size_t ndim() const { return shape_.size(); }
  int64_t global_numel() const { return numel(shape_); }

  /// Number of shards along dimension d (product of the sizes of its axes).
  int64_t shards_along(size_t d) const;
  /// Index of rank's shard along dimension d.
  int64_t shard_index(int rank, size_t d) const;
  /// True when `rank` holds a (possibly empty) piece of the tensor (pinning aside).
  bool holds(int rank) const;
  /// The box rank holds (all-zero extents when it holds nothing).
  Box box(int rank) const;
  Shape local_shape(int rank) const { return box(rank).extent; }
  int64_t local_numel(int rank) const { return box(rank).numel(); }

  /// Ranks holding the same box as `rank` (including it), ascending.
  std::vector<int> replicas(int rank) const;
  /// The lowest rank among replicas(rank).
  int replica_leader(int rank) const;
  bool is_replica_leader(int rank) const { return holds(rank) && replica_leader(rank) == rank; }
  /// Replica leaders, ascending: one rank per distinct shard.
  std::vector<int> shard_owners() const;
  /// Total number of distinct shards.
  int64_t num_shards() const;

  std::string to_string() const;
  bool operator==(const Layout& o) const {
    return shape_ == o.shape_ && spec_ == o.spec_ && mesh_ == o.mesh_ && pinned_ == o.pinned_;
  }
  bool operator!=(const Layout& o) const { return !(*this == o); }

 private:
  Shape shape_;
  PartitionSpec spec_;
  MeshShape mesh_;
  std::map<std::string, int> pinned_;
};

}  // namespace shardflow
