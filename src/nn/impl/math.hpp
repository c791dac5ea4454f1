#pragma once
// Private: device-callable math functions under one name across Kokkos versions
// (Kokkos 3.4 has them in Kokkos::Experimental, 3.7+ in Kokkos), and a branch-free f32
// exponential that compilers vectorise (the hot loops of SwiGLU, softmax, cross-entropy).
#include <Kokkos_Core.hpp>
#include <cstdint>
#include <cstring>

namespace shardflow::nn::math {
#if KOKKOS_VERSION >= 30700
namespace km = ::Kokkos;
#else
namespace km = ::Kokkos::Experimental;
#endif
template <class T>
KOKKOS_INLINE_FUNCTION T log(T x) { return km::log(x); }
template <class T>
KOKKOS_INLINE_FUNCTION T sqrt(T x) { return km::sqrt(x); }

/// exp(x) for float without branches, calls or floating-point comparisons (so that GCC
/// vectorises it under the default -ftrapping-math): x is clamped to [-87.3, 88] with
/// integer operations on its bits, x = n·ln2 + r with |r| <= ln2/2 (n by the 1.5·2²³
/// rounding trick), a degree-6 polynomial for e^r (Cephes' expf coefficients; relative
/// error below 2e-7), times 2^n built from exponent bits. e^x for x < -87.3 gives ~1e-38
/// rather than 0, which none of the callers can tell apart after the sums they feed.
KOKKOS_INLINE_FUNCTION float exp_f32(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const int32_t mag = bits & 0x7fffffff;
  const int32_t too_low = -static_cast<int32_t>((bits < 0) & (mag > 0x42ae999a));    // x < -87.3
  const int32_t too_high = -static_cast<int32_t>((bits >= 0) & (mag > 0x42b00000));  // x > 88
  bits = (bits & ~too_low) | (static_cast<int32_t>(0xc2ae999au) & too_low);
  bits = (bits & ~too_high) | (0x42b00000 & too_high);
  std::memcpy(&x, &bits, sizeof(bits));
  const float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const int32_t n = static_cast<int32_t>(fn);
  float r = x - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t sbits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &sbits, sizeof(scale));
  return p * scale;
}

/// e^x: the vectorisable f32 kernel above for float, the library's exp for double.
KOKKOS_INLINE_FUNCTION float exp(float x) { return exp_f32(x); }
KOKKOS_INLINE_FUNCTION double exp(double x) { return km::exp(x); }

/// 1 / (1 + e^(-z)); branch-free (e^(-z) = inf for very negative z gives 0, not NaN).
template <class T>
KOKKOS_INLINE_FUNCTION T sigmoid(T z) {
  return T(1) / (T(1) + math::exp(-z));
}
/// Σ_j a[j]·b[j]·c[j] over a row, in double, as eight interleaved partial sums (j mod 8)
/// joined in a fixed tree, as kernels::sum_squares_f64: one order on every backend and
/// vector width, and eight independent add chains instead of one.
template <class T>
KOKKOS_INLINE_FUNCTION double row_dot3(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ c,
                                       int64_t n) {
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k)
      s[k] += static_cast<double>(a[j + k]) * static_cast<double>(b[j + k]) * static_cast<double>(c[j + k]);
  for (int k = 0; j < n; ++j, ++k)
    s[k] += static_cast<double>(a[j]) * static_cast<double>(b[j]) * static_cast<double>(c[j]);
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

}  // namespace shardflow::nn::math
