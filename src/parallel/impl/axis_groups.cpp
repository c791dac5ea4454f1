#include "parallel/axis_groups.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "mesh/axes.hpp"

namespace shardflow::parallel {

namespace {
bool contains(const Axes& a, const std::string& x) { return std::find(a.begin(), a.end(), x) != a.end(); }
Axes without(const Axes& a, const Axes& drop) {
  Axes out;
  for (const auto& x : a)
    if (!contains(drop, x)) out.push_back(x);
  return out;
}
Axes sized(const MeshShape& m, std::initializer_list<const char*> names) {
  Axes out;
  for (const char* n : names)
    if (m.axis_size_or_1(n) > 1) out.push_back(n);
  return out;
}
}  // namespace

Axes AxisGroups::canonical(const MeshShape& mesh, const Axes& axes) {
  for (const auto& a : axes) mesh.axis_index(a);  // InputError naming an unknown axis
  Axes out;
  for (const auto& n : mesh.axis_names())
    if (contains(axes, n)) out.push_back(n);
  return out;
}

AxisGroups AxisGroups::make(const MeshShape& mesh, int zero_stage) {
  SHARDFLOW_REQUIRE_INPUT(zero_stage >= 0 && zero_stage <= 3, "strategy.zero_stage = ", zero_stage,
                          " must be 0, 1, 2 or 3");
  AxisGroups g;
  for (const char* a : {axis::data, axis::fsdp, axis::expert})
    if (mesh.has_axis(a)) g.samples.push_back(a);
  g.batch = g.samples;
  if (mesh.axis_size_or_1(axis::context) > 1) g.batch.push_back(axis::context);
  g.batch_dense = without(g.batch, {axis::expert});
  if (zero_stage >= 1) {
    if (mesh.axis_size_or_1(axis::fsdp) > 1)
      g.zero = {axis::fsdp};
    else if (mesh.axis_size_or_1(axis::data) > 1)
      g.zero = {axis::data};
  }
  g.replica = without(g.batch, g.zero);
  g.replica_dense = without(g.replica, {axis::expert});
  g.tensor = sized(mesh, {axis::tensor});
  g.pipeline = sized(mesh, {axis::pipeline});
  g.expert = sized(mesh, {axis::expert});
  g.context = sized(mesh, {axis::context});
  g.norm = g.zero;
  for (const auto& a : sized(mesh, {axis::pipeline, axis::expert, axis::tensor})) g.norm.push_back(a);
  g.loss = sized(mesh, {axis::data, axis::fsdp, axis::pipeline, axis::expert, axis::context});
  for (Axes* a : {&g.samples, &g.batch, &g.batch_dense, &g.zero, &g.replica, &g.replica_dense, &g.norm, &g.loss})
    *a = canonical(mesh, *a);
  return g;
}

std::string group_key(const Axes& axes) {
  if (axes.size() == 1) return axes.front();  // (the compiler asks for one per collective)
  std::string k;
  size_t n = 0;
  for (const auto& a : axes) n += a.size() + 1;
  k.reserve(n);
  for (size_t i = 0; i < axes.size(); ++i) {
    if (i) k += '+';
    k += axes[i];
  }
  return k;
}

}  // namespace shardflow::parallel
