#include "mesh/mesh_shape.hpp"

#include "mesh/axes.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace shardflow {

const std::vector<std::string>& known_axis_names() {
  static const std::vector<std::string> names{axis::data,     axis::fsdp,   axis::tensor,
                                                       axis::pipeline, axis::expert, axis::context};
  return names;
}

namespace {
std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}
}  // namespace

MeshShape::MeshShape(std::vector<std::string> axis_names, std::vector<int> sizes, bool tensor_adjacent)
    : names_(std::move(axis_names)), sizes_(std::move(sizes)), tensor_adjacent_(tensor_adjacent) {
  SHARDFLOW_REQUIRE_INPUT(names_.size() == sizes_.size(), "mesh: ", names_.size(), " axis names [", join(names_),
                          "] but ", sizes_.size(), " sizes");
  const auto& known = known_axis_names();
  for (size_t i = 0; i < names_.size(); ++i) {
    SHARDFLOW_REQUIRE_INPUT(std::find(known.begin(), known.end(), names_[i]) != known.end(), "mesh: unknown axis '",
                            names_[i], "' (known axes: ", join(known), ")");
    SHARDFLOW_REQUIRE_INPUT(std::count(names_.begin(), names_.end(), names_[i]) == 1, "mesh: axis '", names_[i],
                            "' is named more than once");
    SHARDFLOW_REQUIRE_INPUT(sizes_[i] >= 1, "mesh: axis '", names_[i], "' has size ", sizes_[i],
                            " (sizes must be >= 1)");
  }
  for (int i = 0; i < ndim(); ++i)
    if (!(tensor_adjacent_ && names_[static_cast<size_t>(i)] == "tensor")) placement_.push_back(i);
  for (int i = 0; i < ndim(); ++i)
    if (tensor_adjacent_ && names_[static_cast<size_t>(i)] == "tensor") placement_.push_back(i);
  stride_.assign(names_.size(), 1);
  long s = 1;
  for (auto it = placement_.rbegin(); it != placement_.rend(); ++it) {
    stride_[static_cast<size_t>(*it)] = s;
    s *= sizes_[static_cast<size_t>(*it)];
  }
}

int MeshShape::size() const {
  int p = 1;
  for (int s : sizes_) p *= s;
  return p;
}

bool MeshShape::has_axis(const std::string& axis) const {
  return std::find(names_.begin(), names_.end(), axis) != names_.end();
}

int MeshShape::axis_index(const std::string& axis) const {
  auto it = std::find(names_.begin(), names_.end(), axis);
  SHARDFLOW_REQUIRE_INPUT(it != names_.end(), "mesh ", to_string(), " has no axis '", axis, "'");
  return static_cast<int>(it - names_.begin());
}

int MeshShape::axis_size(const std::string& axis) const { return sizes_[static_cast<size_t>(axis_index(axis))]; }

int MeshShape::axis_size_or_1(const std::string& axis) const { return has_axis(axis) ? axis_size(axis) : 1; }

int MeshShape::group_size(const std::vector<std::string>& axes) const {
  int p = 1;
  for (const auto& a : axes) p *= axis_size(a);
  return p;
}

std::vector<int> MeshShape::coords(int rank) const {
  SHARDFLOW_REQUIRE(rank >= 0 && rank < size(), "mesh ", to_string(), ": rank ", rank, " out of range [0, ", size(),
                    ")");
  std::vector<int> c(names_.size());
  for (size_t i = 0; i < names_.size(); ++i) c[i] = static_cast<int>((rank / stride_[i]) % sizes_[i]);
  return c;
}

int MeshShape::rank_of(const std::vector<int>& c) const {
  SHARDFLOW_REQUIRE(c.size() == names_.size(), "mesh ", to_string(), ": ", c.size(), " coordinates for ", ndim(),
                    " axes");
  long r = 0;
  for (size_t i = 0; i < names_.size(); ++i) {
    SHARDFLOW_REQUIRE(c[i] >= 0 && c[i] < sizes_[i], "mesh ", to_string(), ": coordinate ", c[i], " out of range on axis '",
                      names_[i], "'");
    r += c[i] * stride_[i];
  }
  return static_cast<int>(r);
}

int MeshShape::coord(int rank, const std::string& axis) const {
  return coords(rank)[static_cast<size_t>(axis_index(axis))];
}

int MeshShape::group_index(int rank, const std::vector<std::string>& axes) const {
  auto c = coords(rank);
  int idx = 0;
  for (const auto& a : axes) {
    int i = axis_index(a);
    idx = idx * sizes_[static_cast<size_t>(i)] + c[static_cast<size_t>(i)];
  }
  return idx;
}

std::vector<int> MeshShape::group_ranks(int rank, const std::vector<std::string>& axes) const {
  const int n = group_size(axes);
  std::vector<int> out(static_cast<size_t>(n));
  auto base = coords(rank);
  for (int g = 0; g < n; ++g) {
    auto c = base;
    int rem = g;
    for (auto it = axes.rbegin(); it != axes.rend(); ++it) {
      int i = axis_index(*it);
      c[static_cast<size_t>(i)] = rem % sizes_[static_cast<size_t>(i)];
      rem /= sizes_[static_cast<size_t>(i)];
    }
    out[static_cast<size_t>(g)] = rank_of(c);
  }
  return out;
}

std::string MeshShape::to_string() const {
  if (names_.empty()) return "single";
  std::string s;
  for (size_t i = 0; i < names_.size(); ++i) s += (i ? " x " : "") + names_[i] + "=" + std::to_string(sizes_[i]);
  return s;
}

}  // namespace shardflow
