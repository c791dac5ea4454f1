#pragma once
// 16-bit floating-point storage types: bf16 (bfloat16: 1 sign, 8 exponent, 7 mantissa bits)
// and f16 (IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits).
//
// They are storage types only (no arithmetic): convert to float, compute, convert back.
// The conversions are KOKKOS_INLINE_FUNCTION, so kernels use them on host and device alike.
//
// Rounding (f32 -> 16 bit) is IEEE round-to-nearest, ties-to-even, for every input:
//  - bf16: finite values that round past the largest finite bf16 become +-Inf; +-Inf stay
//    +-Inf; a NaN stays a NaN with its sign and the top 7 bits of its payload, made quiet.
//  - f16: values of magnitude >= 65520 become +-Inf; values below 2^-14 round to the
//    subnormals (multiples of 2^-24) or to +-0; NaN as for bf16 (top 10 payload bits, quiet).
// Widening (16 bit -> f32) is exact; an f16 signalling NaN widens to a quiet NaN.
#include <Kokkos_Macros.hpp>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/dtype.hpp"

// x86 hosts with F16C (-march=native on any CPU since Ivy Bridge) convert f16 in hardware:
// the same IEEE rounding, overflow, subnormals and NaN rules as the portable code below,
// which test_half checks bit for bit over all 2^16 f16 values and f32 boundaries.
#if defined(__F16C__) && !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
#include <immintrin.h>
#define SHARDFLOW_HALF_F16C 1
#endif

namespace shardflow {

namespace half_detail {

KOKKOS_INLINE_FUNCTION std::uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#elif defined(__HIP_DEVICE_COMPILE__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

KOKKOS_INLINE_FUNCTION float f32_from_bits(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#elif defined(__HIP_DEVICE_COMPILE__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

/// f32 bit pattern -> bf16 bit pattern, round to nearest even.
KOKKOS_INLINE_FUNCTION std::uint16_t bf16_bits_from_f32_bits(std::uint32_t u) {
  // Adding 0x7fff plus the lowest kept bit rounds half to even; a carry out of the
  // mantissa bumps the exponent (up to Inf for the largest finite values), as it should.
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  // NaN: keep sign and top payload bits, set the quiet bit (a select, so loops vectorise)
  const std::uint32_t nan = (u >> 16) | 0x0040u;
  return static_cast<std::uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

/// f32 bit pattern -> f16 bit pattern, round to nearest even.
KOKKOS_INLINE_FUNCTION std::uint16_t f16_bits_from_f32_bits(std::uint32_t u) {
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) {  // Inf or NaN
    if (a == 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  }
  // 65520 = 65504 + half an ulp: the tie rounds to the even neighbour 2^16, i.e. Inf.
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (a < 0x38800000u) {  // below 2^-14: an f16 subnormal (multiple of 2^-24) or zero
    const std::uint32_t exp = a >> 23;
    if (exp < 102u) return static_cast<std::uint16_t>(sign);  // < 2^-25: rounds to zero
    const std::uint32_t mant = (a & 0x7fffffu) | 0x800000u;    // value = mant * 2^(exp-150)
    const std::uint32_t shift = 126u - exp;                    // in [14, 24]
    std::uint32_t r = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;  // may become 0x400: the smallest normal
    return static_cast<std::uint16_t>(sign | r);
  }
  // Normal: re-bias the exponent (127 -> 15) and drop 13 mantissa bits, rounding to even.
  std::uint32_t h = (a - 0x38000000u) >> 13;
  const std::uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

/// f16 bit pattern -> f32 bit pattern (exact).
KOKKOS_INLINE_FUNCTION std::uint32_t f32_bits_from_f16_bits(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  std::uint32_t m = h & 0x3ffu;
  if (e == 0x1fu) {  // Inf, or NaN (made quiet, payload kept)
    if (m == 0) return sign | 0x7f800000u;
    return sign | 0x7fc00000u | (m << 13);
  }
  if (e != 0) return sign | ((e + 112u) << 23) | (m << 13);
  if (m == 0) return sign;
  // Subnormal m * 2^-24: normalise so that the leading one lands on bit 10.
  std::uint32_t e32 = 113u;
  while ((m & 0x400u) == 0) {
    m <<= 1;
    --e32;
  }
  return sign | (e32 << 23) | ((m & 0x3ffu) << 13);
}

}  // namespace half_detail

/// bfloat16 storage: the upper half of an f32.
struct bf16 {
  std::uint16_t bits;

  bf16() = default;
  KOKKOS_INLINE_FUNCTION explicit bf16(float f) : bits(half_detail::bf16_bits_from_f32_bits(half_detail::f32_bits(f))) {}
  KOKKOS_INLINE_FUNCTION explicit operator float() const { return half_detail::f32_from_bits(std::uint32_t(bits) << 16); }
  KOKKOS_INLINE_FUNCTION static bf16 from_bits(std::uint16_t b) {
    bf16 r;
    r.bits = b;
    return r;
  }
  KOKKOS_INLINE_FUNCTION friend bool operator==(bf16 a, bf16 b) { return a.bits == b.bits; }
  KOKKOS_INLINE_FUNCTION friend bool operator!=(bf16 a, bf16 b) { return a.bits != b.bits; }
};

/// IEEE binary16 storage.
struct f16 {
  std::uint16_t bits;

  f16() = default;
#ifdef SHARDFLOW_HALF_F16C
  explicit f16(float f) : bits(static_cast<std::uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT))) {}
  explicit operator float() const { return _cvtsh_ss(bits); }
#else
  KOKKOS_INLINE_FUNCTION explicit f16(float f) : bits(half_detail::f16_bits_from_f32_bits(half_detail::f32_bits(f))) {}
  KOKKOS_INLINE_FUNCTION explicit operator float() const {
    return half_detail::f32_from_bits(half_detail::f32_bits_from_f16_bits(bits));
  }
#endif
  KOKKOS_INLINE_FUNCTION static f16 from_bits(std::uint16_t b) {
    f16 r;
    r.bits = b;
    return r;
  }
  KOKKOS_INLINE_FUNCTION friend bool operator==(f16 a, f16 b) { return a.bits == b.bits; }
  KOKKOS_INLINE_FUNCTION friend bool operator!=(f16 a, f16 b) { return a.bits != b.bits; }
};

static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable<bf16>::value && std::is_trivial<bf16>::value,
              "bf16 must be a trivial 16-bit type");
static_assert(sizeof(f16) == 2 && std::is_trivially_copyable<f16>::value && std::is_trivial<f16>::value,
              "f16 must be a trivial 16-bit type");

/// f32 -> bf16, round to nearest even (see the header comment).
KOKKOS_INLINE_FUNCTION bf16 to_bf16(float f) { return bf16(f); }
/// f32 -> f16, round to nearest even (see the header comment).
KOKKOS_INLINE_FUNCTION f16 to_f16(float f) { return f16(f); }
/// bf16 -> f32, exact.
KOKKOS_INLINE_FUNCTION float to_f32(bf16 h) { return static_cast<float>(h); }
/// f16 -> f32, exact.
KOKKOS_INLINE_FUNCTION float to_f32(f16 h) { return static_cast<float>(h); }

/// x rounded to the nearest value of the 16-bit type `to` (round to nearest even, as the
/// conversions above), kept in f32: what a mixed-precision step stores and multiplies. Any
/// `to` other than BF16 and F16 returns x unchanged.
KOKKOS_INLINE_FUNCTION float round_to(float x, DType to) {
  if (to == DType::BF16) return static_cast<float>(bf16(x));
  if (to == DType::F16) return static_cast<float>(f16(x));
  return x;
}

/// Element conversion used by the kernels: Convert<From, To>::apply(x). Same-type is the
/// identity; 16-bit types go through float; other arithmetic types use static_cast.
template <class From, class To>
struct Convert {
  KOKKOS_INLINE_FUNCTION static To apply(From x) { return static_cast<To>(x); }
};
template <class T>
struct Convert<T, T> {
  KOKKOS_INLINE_FUNCTION static T apply(T x) { return x; }
};
template <class To>
struct Convert<bf16, To> {
  KOKKOS_INLINE_FUNCTION static To apply(bf16 x) { return static_cast<To>(static_cast<float>(x)); }
};
template <class To>
struct Convert<f16, To> {
  KOKKOS_INLINE_FUNCTION static To apply(f16 x) { return static_cast<To>(static_cast<float>(x)); }
};
template <class From>
struct Convert<From, bf16> {
  KOKKOS_INLINE_FUNCTION static bf16 apply(From x) { return bf16(static_cast<float>(x)); }
};
template <class From>
struct Convert<From, f16> {
  KOKKOS_INLINE_FUNCTION static f16 apply(From x) { return f16(static_cast<float>(x)); }
};
template <>
struct Convert<bf16, bf16> {
  KOKKOS_INLINE_FUNCTION static bf16 apply(bf16 x) { return x; }
};
template <>
struct Convert<f16, f16> {
  KOKKOS_INLINE_FUNCTION static f16 apply(f16 x) { return x; }
};
template <>
struct Convert<bf16, f16> {
  KOKKOS_INLINE_FUNCTION static f16 apply(bf16 x) { return f16(static_cast<float>(x)); }
};
template <>
struct Convert<f16, bf16> {
  KOKKOS_INLINE_FUNCTION static bf16 apply(f16 x) { return bf16(static_cast<float>(x)); }
};

/// The DType of a C++ element type (compile-time); unsupported types do not compile.
template <class T>
struct DTypeOf;
template <>
struct DTypeOf<float> : std::integral_constant<DType, DType::F32> {};
template <>
struct DTypeOf<double> : std::integral_constant<DType, DType::F64> {};
template <>
struct DTypeOf<bf16> : std::integral_constant<DType, DType::BF16> {};
template <>
struct DTypeOf<f16> : std::integral_constant<DType, DType::F16> {};
template <>
struct DTypeOf<std::int32_t> : std::integral_constant<DType, DType::I32> {};
template <>
struct DTypeOf<std::int64_t> : std::integral_constant<DType, DType::I64> {};

template <class T>
constexpr DType dtype_of() {
  return DTypeOf<std::remove_cv_t<T>>::value;
}

}  // namespace shardflow
