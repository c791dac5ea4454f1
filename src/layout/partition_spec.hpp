#pragma once
// PartitionSpec: for each tensor dimension, the mesh axes that split it (none, one, or
// several, e.g. ("data", "fsdp")). Several axes split a dimension in mixed radix: the
// first listed axis is the most significant.
#include <initializer_list>
#include <string>
#include <vector>

#include "mesh/mesh_shape.hpp"

namespace shardflow {

class PartitionSpec {
 public:
  using DimAxes = std::vector<std::string>;

  PartitionSpec() = default;
  explicit PartitionSpec(std::vector<DimAxes> dims) : dims_(std::move(dims)) {}
  PartitionSpec(std::initializer_list<DimAxes> dims) : dims_(dims) {}
  /// A spec that splits no dimension of an ndim-dimensional tensor.
  static PartitionSpec replicated(size_t ndim) { return PartitionSpec(std::vector<DimAxes>(ndim)); }

  size_t ndim() const { return dims_.size(); }
  const DimAxes& operator[](size_t d) const { return dims_.at(d); }
  DimAxes& operator[](size_t d) { return dims_.at(d); }
  const std::vector<DimAxes>& dims() const { return dims_; }
  /// Every axis the spec uses, in dimension order.
  std::vector<std::string> axes_used() const;
  bool uses_axis(const std::string& axis) const;
  /// The dimension split by `axis`, or -1.
  int dim_of_axis(const std::string& axis) const;
  bool is_replicated() const { return axes_used().empty(); }

  /// Throws InputError when an axis is not in the mesh or is used twice.
  void validate(const MeshShape& mesh) const;

  /// JAX style: ('data', None, ('data', 'fsdp')); PartitionSpec() for the 0-d spec.
  std::string to_string() const;
  /// Inverse of to_string(); throws InputError on malformed text.
  static PartitionSpec parse(const std::string& text);

  bool operator==(const PartitionSpec& o) const { return dims_ == o.dims_; }
  bool operator!=(const PartitionSpec& o) const { return !(*this == o); }

 private:
  std::vector<DimAxes> dims_;
};

}  // namespace shardflow
