#pragma once
// Private: device-callable math functions under one name across Kokkos versions
// (Kokkos 3.4 has them in Kokkos::Experimental, 3.7+ in Kokkos).
#include <Kokkos_Core.hpp>

namespace shardflow::nn::math {
#if KOKKOS_VERSION >= 30700
namespace km = ::Kokkos;
#else
namespace km = ::Kokkos::Experimental;
#endif
template <class T>
KOKKOS_INLINE_FUNCTION T exp(T x) { return km::exp(x); }
template <class T>
KOKKOS_INLINE_FUNCTION T log(T x) { return km::log(x); }
template <class T>
KOKKOS_INLINE_FUNCTION T sqrt(T x) { return km::sqrt(x); }
template <class T>
KOKKOS_INLINE_FUNCTION T cos(T x) { return km::cos(x); }
/// 1 / (1 + exp(-z)), stable for large |z|.
template <class T>
KOKKOS_INLINE_FUNCTION T sigmoid(T z) {
  if (z >= T(0)) return T(1) / (T(1) + km::exp(-z));
  const T e = km::exp(z);
  return e / (T(1) + e);
}
}  // namespace shardflow::nn::math
