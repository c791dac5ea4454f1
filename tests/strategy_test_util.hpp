#pragma once
// Helpers for the strategy tests: random real data, and a checker that the shards of a
// Layout reassemble the original tensor exactly (each element written by exactly one
// replica leader, every replica holding identical data).
#include <gtest/gtest.h>

#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "layout/layout.hpp"
#include "strategy/host_tensor.hpp"

namespace shardflow::test {

/// The message of the InputError that f throws, or "<no InputError>".
inline std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "<no InputError>";
}

/// A tensor whose element i holds a distinct value (i + 0.5) * scale, so any misplaced
/// element is detected.
inline HostTensor<float> iota_tensor(const Shape& shape, float scale = 1.0f) {
  HostTensor<float> t(shape);
  for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = (static_cast<float>(i) + 0.5f) * scale;
  return t;
}

inline HostTensor<double> random_tensor(const Shape& shape, std::mt19937& rng) {
  std::normal_distribution<double> n(0.0, 1.0);
  HostTensor<double> t(shape);
  for (auto& x : t.data) x = n(rng);
  return t;
}

inline Shape random_shape(std::mt19937& rng, int max_rank = 4, int64_t max_extent = 9) {
  std::uniform_int_distribution<int> r(1, max_rank);
  std::uniform_int_distribution<int64_t> e(1, max_extent);
  Shape s(static_cast<size_t>(r(rng)));
  for (auto& x : s) x = e(rng);
  return s;
}

/// Reassembles `full` from per-rank shards under `layout` and checks: the shards of replica
/// leaders tile the tensor exactly once, replicas hold identical data, ranks that do not hold
/// the tensor have empty shards.
template <typename T>
void expect_reassembles(const Layout& layout, const HostTensor<T>& full, const std::vector<HostTensor<T>>& shards,
                        const std::string& what) {
  ASSERT_EQ(static_cast<int>(shards.size()), layout.mesh().size()) << what;
  HostTensor<T> rebuilt(full.shape);
  HostTensor<int> cover(full.shape);
  for (int r = 0; r < layout.mesh().size(); ++r) {
    const Box b = layout.box(r);
    ASSERT_EQ(shards[static_cast<size_t>(r)].shape, b.extent) << what << " rank " << r;
    if (!layout.holds(r)) {
      EXPECT_EQ(b.numel(), 0) << what << " rank " << r;
      continue;
    }
    EXPECT_EQ(shards[static_cast<size_t>(r)], extract_box(full, b)) << what << " rank " << r;
    if (!layout.is_replica_leader(r)) {
      EXPECT_EQ(shards[static_cast<size_t>(r)], shards[static_cast<size_t>(layout.replica_leader(r))]) << what;
      continue;
    }
    insert_box(rebuilt, b, shards[static_cast<size_t>(r)]);
    HostTensor<int> cur = extract_box(cover, b);
    for (auto& x : cur.data) ++x;
    insert_box(cover, b, cur);
  }
  for (size_t i = 0; i < cover.data.size(); ++i)
    ASSERT_EQ(cover.data[i], 1) << what << ": element " << i << " covered " << cover.data[i] << " times";
  EXPECT_EQ(rebuilt, full) << what;
}

}  // namespace shardflow::test
