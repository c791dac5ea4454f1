#include "layout/layout.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace shardflow {

int64_t split_extent(int64_t d, int64_t n, int64_t i) { return d / n + (i < d % n ? 1 : 0); }

int64_t split_offset(int64_t d, int64_t n, int64_t i) { return i * (d / n) + std::min(i, d % n); }

int64_t numel(const Shape& s) { return numel(s, 0, s.size()); }

int64_t numel(const Shape& s, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t d = begin; d < end; ++d) p *= s[d];
  return p;
}

std::string shape_to_string(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

Shape row_major_strides(const Shape& s) {
  Shape st(s.size(), 1);
  for (size_t i = s.size(); i-- > 1;) st[i - 1] = st[i] * s[i];
  return st;
}

int64_t Box::numel() const { return shardflow::numel(extent); }

bool Box::contains(const Box& in) const {
  if (in.ndim() != ndim()) return false;
  for (size_t d = 0; d < ndim(); ++d)
    if (in.offset[d] < offset[d] || in.offset[d] + in.extent[d] > offset[d] + extent[d]) return false;
  return true;
}

Box Box::intersect(const Box& a, const Box& b) {
  SHARDFLOW_REQUIRE(a.ndim() == b.ndim(), "Box::intersect: boxes of rank ", a.ndim(), " and ", b.ndim());
  Box r{Shape(a.ndim()), Shape(a.ndim())};
  for (size_t d = 0; d < a.ndim(); ++d) {
    int64_t lo = std::max(a.offset[d], b.offset[d]);
    int64_t hi = std::min(a.offset[d] + a.extent[d], b.offset[d] + b.extent[d]);
    r.offset[d] = lo;
    r.extent[d] = std::max<int64_t>(0, hi - lo);
  }
  return r;
}

std::string Box::to_string() const { return "offset " + shape_to_string(offset) + " extent " + shape_to_string(extent); }

Layout::Layout(Shape global_shape, PartitionSpec spec, MeshShape mesh, std::map<std::string, int> pinned)
    : shape_(std::move(global_shape)), spec_(std::move(spec)), mesh_(std::move(mesh)), pinned_(std::move(pinned)) {
  SHARDFLOW_REQUIRE_INPUT(spec_.ndim() == shape_.size(), "partition spec ", spec_.to_string(), " has ", spec_.ndim(),
                          " dimensions but the tensor shape ", shape_to_string(shape_), " has ", shape_.size());
  for (auto e : shape_)
    SHARDFLOW_REQUIRE_INPUT(e >= 0, "tensor shape ", shape_to_string(shape_), " has a negative extent");
  spec_.validate(mesh_);
  for (const auto& kv : pinned_) {
    SHARDFLOW_REQUIRE_INPUT(mesh_.has_axis(kv.first), "layout pinned to axis '", kv.first, "' which mesh ",
                            mesh_.to_string(), " does not have");
    SHARDFLOW_REQUIRE_INPUT(!spec_.uses_axis(kv.first), "layout both splits over and is pinned to axis '", kv.first,
                            "'");
    SHARDFLOW_REQUIRE_INPUT(kv.second >= 0 && kv.second < mesh_.axis_size(kv.first), "layout pinned to index ",
                            kv.second, " of axis '", kv.first, "' of size ", mesh_.axis_size(kv.first));
  }
}

Layout Layout::replicated(Shape global_shape, MeshShape mesh) {
  auto n = global_shape.size();
  return Layout(std::move(global_shape), PartitionSpec::replicated(n), std::move(mesh));
}

int64_t Layout::shards_along(size_t d) const { return mesh_.group_size(spec_[d]); }

int64_t Layout::shard_index(int rank, size_t d) const { return mesh_.group_index(rank, spec_[d]); }

bool Layout::holds(int rank) const {
  for (const auto& kv : pinned_)
    if (mesh_.coord(rank, kv.first) != kv.second) return false;
  return true;
}

Box Layout::box(int rank) const {
  Box b{Shape(ndim(), 0), Shape(ndim(), 0)};
  if (!holds(rank)) return b;
  for (size_t d = 0; d < ndim(); ++d) {
    int64_t n = shards_along(d), i = shard_index(rank, d);
    b.offset[d] = split_offset(shape_[d], n, i);
    b.extent[d] = split_extent(shape_[d], n, i);
  }
  return b;
}

std::vector<int> Layout::replicas(int rank) const {
  std::vector<int> out;
  if (!holds(rank)) return out;
  std::vector<std::string> free_axes;
  for (const auto& a : mesh_.axis_names())
    if (!spec_.uses_axis(a) && !pinned_.count(a)) free_axes.push_back(a);
  out = mesh_.group_ranks(rank, free_axes);
  std::sort(out.begin(), out.end());
  return out;
}

int Layout::replica_leader(int rank) const {
  auto r = replicas(rank);
  SHARDFLOW_REQUIRE(!r.empty(), "rank ", rank, " holds no part of layout ", to_string());
  return r.front();
}

std::vector<int> Layout::shard_owners() const {
  std::vector<int> out;
  for (int r = 0; r < mesh_.size(); ++r)
    if (is_replica_leader(r)) out.push_back(r);
  return out;
}

int64_t Layout::num_shards() const {
  int64_t n = 1;
  for (size_t d = 0; d < ndim(); ++d) n *= shards_along(d);
  return n;
}

std::string Layout::to_string() const {
  std::string s = shape_to_string(shape_) + " " + spec_.to_string() + " on " + mesh_.to_string();
  for (const auto& kv : pinned_) s += " pinned " + kv.first + "=" + std::to_string(kv.second);
  return s;
}

}  // namespace shardflow
