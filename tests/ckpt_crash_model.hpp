#pragma once
// The synthetic state of ckpt_crash_child (shared with test_ckpt_crash).
#include <string>
#include <utility>
#include <vector>

#include "layout/layout.hpp"

namespace test_model {
inline std::vector<std::pair<std::string, shardflow::Shape>> tensors() {
  return {{"embed.weight", {256, 128}}, {"layers.0.mlp.down.weight", {128, 344}}, {"final_norm.weight", {128}}};
}
inline float value(size_t t, long long step, long long g) {
  return static_cast<float>((g * 31 + step * 17 + static_cast<long long>(t) * 1000) % 4093) * 0.25f;
}
inline std::vector<float> values(size_t t, long long step) {
  std::vector<float> v(static_cast<size_t>(shardflow::numel(tensors()[t].second)));
  for (size_t g = 0; g < v.size(); ++g) v[g] = value(t, step, static_cast<long long>(g));
  return v;
}
}  // namespace test_model
