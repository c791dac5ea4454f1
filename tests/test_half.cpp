// bf16 / f16 conversions: crafted bit patterns (ties both ways, just above and below ties,
// subnormals, largest finite, overflow, NaN with sign, signed zeros and infinities), the
// exhaustive 16-bit round trips, and a comparison with an independent reference (nearest
// representable value found with double arithmetic) on many f32 inputs near every tie.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/half.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SHARDFLOW_TEST_F16C 1
#endif

namespace {
using shardflow::bf16;
using shardflow::f16;

float f_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
std::uint32_t u_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
std::uint16_t b16(std::uint32_t u) { return bf16(f_of(u)).bits; }
std::uint16_t h16(std::uint32_t u) { return f16(f_of(u)).bits; }  // F16C in hardware where built with it
std::uint16_t h16_portable(std::uint32_t u) { return shardflow::half_detail::f16_bits_from_f32_bits(u); }

// ---- independent references ------------------------------------------------------------
// Value of a finite f16 bit pattern by the definition of binary16.
double f16_value(std::uint16_t h) {
  int e = (h >> 10) & 0x1f;
  int m = h & 0x3ff;
  double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}
// Value of a finite bf16 bit pattern by the definition (sign, 8-bit exponent, 7-bit mantissa).
double bf16_value(std::uint16_t b) {
  int e = (b >> 7) & 0xff;
  int m = b & 0x7f;
  double v = e == 0 ? std::ldexp(m, -133) : std::ldexp(128 + m, e - 134);
  return (b & 0x8000) ? -v : v;
}
// Round |x| to the nearest of the non-negative finite patterns [0, max_pattern] of a format
// whose values `value` increases with the pattern, ties to the even pattern; `overflow` is
// the value the format would have just above max_pattern (2^16 for f16, 2^128 for bf16).
// Returns max_pattern + 1 (the Inf pattern) when rounding goes past the largest finite.
template <class ValueFn>
std::uint16_t reference_round(double ax, std::uint16_t max_pattern, double overflow, ValueFn value) {
  // largest pattern with value <= ax
  std::uint32_t lo = 0, hi = max_pattern;
  if (value(static_cast<std::uint16_t>(hi)) <= ax) {
    lo = hi;
  } else {
    while (hi - lo > 1) {
      std::uint32_t mid = (lo + hi) / 2;
      if (value(static_cast<std::uint16_t>(mid)) <= ax) lo = mid;
      else hi = mid;
    }
  }
  double vlo = value(static_cast<std::uint16_t>(lo));
  if (vlo == ax) return static_cast<std::uint16_t>(lo);
  double vhi = lo == max_pattern ? overflow : value(static_cast<std::uint16_t>(lo + 1));
  double dlo = ax - vlo, dhi = vhi - ax;  // exact: all values involved fit in a double
  std::uint32_t r;
  if (dlo < dhi) r = lo;
  else if (dhi < dlo) r = lo + 1;
  else r = (lo & 1) ? lo + 1 : lo;
  return static_cast<std::uint16_t>(r);
}
std::uint16_t ref_f16(float x) {
  std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (std::isinf(x)) return sign | 0x7c00;
  return sign | reference_round(std::fabs(double(x)), 0x7bff, 65536.0,
                                [](std::uint16_t p) { return f16_value(p); });
}
std::uint16_t ref_bf16(float x) {
  std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (std::isinf(x)) return sign | 0x7f80;
  return sign | reference_round(std::fabs(double(x)), 0x7f7f, std::ldexp(1.0, 128),
                                [](std::uint16_t p) { return bf16_value(p); });
}

// ---- bf16 ------------------------------------------------------------------------------
TEST(Bf16, CraftedPatterns) {
  EXPECT_EQ(b16(0x3f800000u), 0x3f80);  // 1.0
  EXPECT_EQ(b16(0x3f808000u), 0x3f80);  // tie, kept lsb even: down
  EXPECT_EQ(b16(0x3f818000u), 0x3f82);  // tie, kept lsb odd: up
  EXPECT_EQ(b16(0x3f807fffu), 0x3f80);  // just below a tie
  EXPECT_EQ(b16(0x3f808001u), 0x3f81);  // just above a tie
  EXPECT_EQ(b16(0x3f81ffffu), 0x3f82);  // carries within the mantissa
  EXPECT_EQ(b16(0x3fffffffu), 0x4000);  // carry into the exponent
  EXPECT_EQ(b16(0xbf808000u), 0xbf80);  // negative tie down
  EXPECT_EQ(b16(0xbf818000u), 0xbf82);  // negative tie up
  // subnormals
  EXPECT_EQ(b16(0x00008000u), 0x0000);
  EXPECT_EQ(b16(0x00018000u), 0x0002);
  EXPECT_EQ(b16(0x00008001u), 0x0001);
  EXPECT_EQ(b16(0x00007fffu), 0x0000);
  EXPECT_EQ(b16(0x007fffffu), 0x0080);  // largest subnormal rounds up to the smallest normal
  EXPECT_EQ(b16(0x80000001u), 0x8000);  // tiny negative -> -0
  // largest finite and overflow
  EXPECT_EQ(b16(0x7f7f0000u), 0x7f7f);
  EXPECT_EQ(b16(0x7f7f7fffu), 0x7f7f);
  EXPECT_EQ(b16(0x7f7f8000u), 0x7f80);  // tie with odd lsb: up to Inf
  EXPECT_EQ(b16(0x7f7fffffu), 0x7f80);  // FLT_MAX -> Inf
  EXPECT_EQ(b16(0xff7fffffu), 0xff80);  // -FLT_MAX -> -Inf
  EXPECT_EQ(b16(0x7f7e8000u), 0x7f7e);  // tie with even lsb stays finite
  // zeros, infinities
  EXPECT_EQ(b16(0x00000000u), 0x0000);
  EXPECT_EQ(b16(0x80000000u), 0x8000);
  EXPECT_EQ(b16(0x7f800000u), 0x7f80);
  EXPECT_EQ(b16(0xff800000u), 0xff80);
  // NaN: stays NaN, sign kept, quiet
  EXPECT_EQ(b16(0x7fc00000u), 0x7fc0);
  EXPECT_EQ(b16(0xffc00000u), 0xffc0);
  EXPECT_EQ(b16(0x7f800001u), 0x7fc0);  // signalling NaN with payload only in dropped bits
  EXPECT_EQ(b16(0xff800001u), 0xffc0);
  EXPECT_EQ(b16(0x7fffffffu), 0x7fff);  // rounding must not carry a NaN into the sign
  EXPECT_EQ(b16(0x7fa00000u), 0x7fe0);  // payload top bits kept
  EXPECT_TRUE(std::isnan(shardflow::to_f32(bf16(f_of(0x7f800001u)))));
}

TEST(Bf16, ExhaustiveRoundTrip) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    bf16 h = bf16::from_bits(static_cast<std::uint16_t>(b));
    float f = shardflow::to_f32(h);
    ASSERT_EQ(u_of(f), b << 16) << "widening of bf16 0x" << std::hex << b;
    std::uint16_t back = bf16(f).bits;
    bool is_nan = ((b & 0x7f80) == 0x7f80) && (b & 0x7f);
    if (is_nan) {
      ASSERT_EQ(back, b | 0x40) << "NaN 0x" << std::hex << b;
    } else if ((b & 0x7fff) == 0x7f80) {
      ASSERT_TRUE(std::isinf(f));
      ASSERT_EQ(back, b);
    } else {
      ASSERT_EQ(back, b) << "round trip of bf16 0x" << std::hex << b;
      ASSERT_EQ(double(f), bf16_value(static_cast<std::uint16_t>(b)));
    }
  }
}

// ---- f16 -------------------------------------------------------------------------------
TEST(F16, CraftedPatterns) {
  EXPECT_EQ(h16(u_of(1.0f)), 0x3c00);
  EXPECT_EQ(h16(u_of(-2.0f)), 0xc000);
  // 1 + 2^-11 is the tie between 1 and 1 + 2^-10: to even (1)
  EXPECT_EQ(h16(u_of(1.0f + std::ldexp(1.0f, -11))), 0x3c00);
  // 1 + 3*2^-11 ties between 1+2^-10 (odd) and 1+2^-9 (even): up
  EXPECT_EQ(h16(u_of(1.0f + 3 * std::ldexp(1.0f, -11))), 0x3c02);
  EXPECT_EQ(h16(u_of(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f))), 0x3c01);  // above tie
  EXPECT_EQ(h16(u_of(std::nextafter(1.0f + 3 * std::ldexp(1.0f, -11), 0.0f))), 0x3c01);  // below
  // largest finite 65504, overflow threshold 65520
  EXPECT_EQ(h16(u_of(65504.0f)), 0x7bff);
  EXPECT_EQ(h16(u_of(65519.996f)), 0x7bff);
  EXPECT_EQ(h16(u_of(65520.0f)), 0x7c00);
  EXPECT_EQ(h16(u_of(-65520.0f)), 0xfc00);
  EXPECT_EQ(h16(u_of(1e10f)), 0x7c00);
  EXPECT_EQ(h16(0x7f7fffffu), 0x7c00);
  // subnormals: multiples of 2^-24
  EXPECT_EQ(h16(u_of(std::ldexp(1.0f, -24))), 0x0001);
  EXPECT_EQ(h16(u_of(std::ldexp(1.0f, -25))), 0x0000);  // tie to even: 0
  EXPECT_EQ(h16(u_of(std::nextafter(std::ldexp(1.0f, -25), 1.0f))), 0x0001);
  EXPECT_EQ(h16(u_of(3 * std::ldexp(1.0f, -25))), 0x0002);  // 1.5 ulp: tie to even 2
  EXPECT_EQ(h16(u_of(5 * std::ldexp(1.0f, -25))), 0x0002);  // 2.5 ulp: tie to even 2
  EXPECT_EQ(h16(u_of(-std::ldexp(1.0f, -26))), 0x8000);
  EXPECT_EQ(h16(u_of(1023 * std::ldexp(1.0f, -24))), 0x03ff);  // largest subnormal
  EXPECT_EQ(h16(u_of(1023.5f * std::ldexp(1.0f, -24))), 0x0400);  // tie (odd) -> smallest normal
  EXPECT_EQ(h16(u_of(std::ldexp(1.0f, -14))), 0x0400);
  EXPECT_EQ(h16(0x00000001u), 0x0000);  // f32 subnormal
  // zeros, infinities, NaN
  EXPECT_EQ(h16(0x00000000u), 0x0000);
  EXPECT_EQ(h16(0x80000000u), 0x8000);
  EXPECT_EQ(h16(0x7f800000u), 0x7c00);
  EXPECT_EQ(h16(0xff800000u), 0xfc00);
  EXPECT_EQ(h16(0x7fc00000u), 0x7e00);
  EXPECT_EQ(h16(0xffc00000u), 0xfe00);
  EXPECT_EQ(h16(0x7f800001u), 0x7e00);  // signalling NaN, payload in dropped bits: still NaN
  EXPECT_EQ(h16(0xff802000u), 0xfe01);  // payload top bits kept
  // widening of specials
  EXPECT_EQ(u_of(shardflow::to_f32(f16::from_bits(0x7c00))), 0x7f800000u);
  EXPECT_EQ(u_of(shardflow::to_f32(f16::from_bits(0xfc00))), 0xff800000u);
  EXPECT_EQ(u_of(shardflow::to_f32(f16::from_bits(0x8000))), 0x80000000u);
  EXPECT_EQ(u_of(shardflow::to_f32(f16::from_bits(0xfd00))), 0xffe00000u);  // sNaN -> quiet, sign kept
}

TEST(F16, ExhaustiveRoundTrip) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    auto h = static_cast<std::uint16_t>(b);
    float f = shardflow::to_f32(f16::from_bits(h));
    bool is_nan = ((b & 0x7c00) == 0x7c00) && (b & 0x3ff);
    std::uint16_t back = f16(f).bits;
    if (is_nan) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << b;
      ASSERT_EQ(std::signbit(f), (b & 0x8000) != 0);
      ASSERT_EQ(back, b | 0x200) << "NaN 0x" << std::hex << b;  // quiet, payload kept
    } else if ((b & 0x7fff) == 0x7c00) {
      ASSERT_TRUE(std::isinf(f));
      ASSERT_EQ(back, b);
    } else {
      ASSERT_EQ(double(f), f16_value(h)) << "widening of f16 0x" << std::hex << b;
      ASSERT_EQ(back, b) << "round trip of f16 0x" << std::hex << b;
    }
  }
}

// Inputs that stress rounding: for every f32 exponent and sign, the patterns around each
// tie point of both targets (low 13 and 16 bits near half), plus random mantissas.
std::vector<std::uint32_t> stress_inputs() {
  std::vector<std::uint32_t> v;
  std::mt19937 rng(12345);
  const std::uint32_t lows13[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff};
  const std::uint32_t lows16[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff};
  for (std::uint32_t s = 0; s < 2; ++s)
    for (std::uint32_t e = 0; e < 255; ++e)
      for (int k = 0; k < 64; ++k) {
        std::uint32_t hi = rng() & 0x7fffffu;
        std::uint32_t base = (s << 31) | (e << 23);
        for (auto l : lows13) v.push_back(base | ((hi & ~0x1fffu) | l));
        for (auto l : lows16) v.push_back(base | ((hi & ~0xffffu) | l));
        v.push_back(base | hi);
      }
  // the f16 subnormal range: ties sit at different bit positions per exponent
  for (std::uint32_t e = 100; e <= 113; ++e)
    for (std::uint32_t m = 0; m < (1u << 16); ++m) {
      std::uint32_t mant = (m * 131u) & 0x7fffffu;
      v.push_back((e << 23) | mant);
      // exact ties of the subnormal grid: mantissa bits below the cut equal to one half
      std::uint32_t shift = e <= 126 ? 126 - e : 0;
      if (shift >= 1 && shift <= 23) {
        std::uint32_t tie = ((mant >> shift) << shift) | (1u << (shift - 1));
        v.push_back((e << 23) | (tie & 0x7fffffu));
      }
    }
  for (int i = 0; i < (1 << 20); ++i) v.push_back(rng());
  return v;
}

TEST(F16, AgainstReference) {
  for (std::uint32_t u : stress_inputs()) {
    float x = f_of(u);
    if (std::isnan(x)) continue;
    ASSERT_EQ(h16(u), ref_f16(x)) << "f32 0x" << std::hex << u;
    ASSERT_EQ(h16_portable(u), ref_f16(x)) << "portable, f32 0x" << std::hex << u;
  }
}

TEST(Bf16, AgainstReference) {
  for (std::uint32_t u : stress_inputs()) {
    float x = f_of(u);
    if (std::isnan(x)) continue;
    ASSERT_EQ(b16(u), ref_bf16(x)) << "f32 0x" << std::hex << u;
  }
}

#ifdef SHARDFLOW_TEST_F16C
__attribute__((target("f16c"))) std::uint16_t hw_f16(float x) {
  return static_cast<std::uint16_t>(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("f16c"))) float hw_f32(std::uint16_t h) { return _cvtsh_ss(h); }
TEST(F16, AgainstF16CHardware) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "CPU has no F16C";
  for (std::uint32_t u : stress_inputs()) {
    ASSERT_EQ(h16(u), hw_f16(f_of(u))) << "f32 0x" << std::hex << u;
    ASSERT_EQ(h16_portable(u), hw_f16(f_of(u))) << "portable, f32 0x" << std::hex << u;
  }
  // widening, every f16 value, NaNs included (the portable code is what a GPU build runs)
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    ASSERT_EQ(shardflow::half_detail::f32_bits_from_f16_bits(h), u_of(hw_f32(h))) << "f16 0x" << std::hex << b;
    ASSERT_EQ(u_of(static_cast<float>(f16::from_bits(h))), u_of(hw_f32(h))) << "f16 0x" << std::hex << b;
  }
}
#endif

TEST(DType, DTypeOf) {
  static_assert(shardflow::dtype_of<float>() == shardflow::DType::F32);
  static_assert(shardflow::dtype_of<const double>() == shardflow::DType::F64);
  static_assert(shardflow::dtype_of<bf16>() == shardflow::DType::BF16);
  static_assert(shardflow::dtype_of<f16>() == shardflow::DType::F16);
  static_assert(shardflow::dtype_of<std::int32_t>() == shardflow::DType::I32);
  static_assert(shardflow::dtype_of<std::int64_t>() == shardflow::DType::I64);
  EXPECT_EQ(shardflow::dtype_size(shardflow::dtype_of<bf16>()), sizeof(bf16));
  EXPECT_EQ(shardflow::dtype_size(shardflow::dtype_of<f16>()), sizeof(f16));
}

TEST(Convert, MixedTypes) {
  using shardflow::Convert;
  EXPECT_EQ((Convert<float, bf16>::apply(1.5f).bits), 0x3fc0);
  EXPECT_EQ((Convert<double, f16>::apply(1.5).bits), 0x3e00);
  EXPECT_EQ((Convert<bf16, double>::apply(bf16::from_bits(0x3fc0))), 1.5);
  EXPECT_EQ((Convert<f16, bf16>::apply(f16::from_bits(0x3e00)).bits), 0x3fc0);
  EXPECT_EQ((Convert<bf16, bf16>::apply(bf16::from_bits(0x1234)).bits), 0x1234);
}

}  // namespace
