#pragma once
// Parameter initialisation (MODEL.md): RMSNorm gains are 1, every other tensor is
// normal(0, 0.02). The value of element i (row-major flat index in the *global* tensor)
// of tensor `name` depends only on (seed, name, i):
//   key  = tensor_key(seed, name)               (FNV-1a of the name, mixed with the seed)
//   (o0, o1, o2, o3) = Philox4x32-10(counter = (i mod 2³², i div 2³², 0, 0x1417), key)
//   u1 = ((o1·2³² + o0) >> 11 + 1) · 2⁻⁵³ ∈ (0, 1],  u2 = ((o3·2³² + o2) >> 11) · 2⁻⁵³
//   value = stddev · sqrt(−2 ln u1) · cos(2π u2)         (Box–Muller, computed in double)
// so any rank can initialise exactly the box it holds, whatever the mesh.
#include <cstdint>
#include <string>

#include "layout/layout.hpp"
#include "nn/philox.hpp"
#include "nn/types.hpp"

namespace shardflow::nn {

constexpr double kInitStddev = 0.02;

/// The Philox key of tensor `name` under `seed`.
uint64_t tensor_key(uint64_t seed, const std::string& name);
/// True for RMSNorm gains ("...norm.weight"), which start at 1.
bool is_norm_gain(const std::string& name);

/// A standard normal sample for element `index` of the stream `key` (device-callable).
KOKKOS_INLINE_FUNCTION double normal_sample(uint64_t key, uint64_t index) {
  const uint32_t c[4] = {static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0u, 0x1417u};
  const uint32_t k[2] = {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
  uint32_t o[4];
  Philox4x32::generate(c, k, o);
  const uint64_t a = static_cast<uint64_t>(o[0]) | (static_cast<uint64_t>(o[1]) << 32);
  const uint64_t b = static_cast<uint64_t>(o[2]) | (static_cast<uint64_t>(o[3]) << 32);
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
#if KOKKOS_VERSION >= 30700
  return Kokkos::sqrt(-2.0 * Kokkos::log(u1)) * Kokkos::cos(6.283185307179586476925 * u2);
#else
  return Kokkos::Experimental::sqrt(-2.0 * Kokkos::Experimental::log(u1)) *
         Kokkos::Experimental::cos(6.283185307179586476925 * u2);
#endif
}

/// The initial value of element `index` of tensor `name` (host reference).
double init_value(uint64_t seed, const std::string& name, int64_t index, double stddev = kInitStddev);

template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct Init {
  using V = ViewTypes<Scalar, Exec>;
  /// Fills `out` (row-major over `box`) with the initial values of the elements of tensor
  /// `name` of shape `global_shape` that lie in `box`. Throws Error when out's size is not
  /// box.numel(), the box leaves the shape, or the rank exceeds 8.
  static void fill_box(typename V::Vec out, uint64_t seed, const std::string& name, const Shape& global_shape,
                       const Box& box, double stddev = kInitStddev);
  /// The whole tensor (box = everything).
  static void fill(typename V::Vec out, uint64_t seed, const std::string& name, const Shape& global_shape,
                   double stddev = kInitStddev);
};

extern template struct Init<float>;
extern template struct Init<double>;

}  // namespace shardflow::nn
