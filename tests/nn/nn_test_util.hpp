#pragma once
// Helpers for the model-math tests: host matrices with seeded random contents, central
// finite differences in f64, and comparisons.
#include <gtest/gtest.h>

#include <Kokkos_Core.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>

namespace shardflow::test::nn {

using HMat = Kokkos::View<double**, Kokkos::LayoutRight, Kokkos::HostSpace>;
using HVec = Kokkos::View<double*, Kokkos::HostSpace>;
using HTok = Kokkos::View<int32_t*, Kokkos::HostSpace>;
using FMat = Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace>;

inline HMat rand_mat(int64_t rows, int64_t cols, std::mt19937_64& rng, double scale = 1.0, double shift = 0.0) {
  HMat m("m", rows, cols);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) m(i, j) = shift + scale * nd(rng);
  return m;
}
inline HVec rand_vec(int64_t n, std::mt19937_64& rng, double scale = 1.0, double shift = 0.0) {
  HVec v("v", n);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (int64_t i = 0; i < n; ++i) v(i) = shift + scale * nd(rng);
  return v;
}
inline HTok rand_tokens(int64_t n, int32_t vocab, std::mt19937_64& rng) {
  HTok t("t", n);
  std::uniform_int_distribution<int32_t> ud(0, vocab - 1);
  for (int64_t i = 0; i < n; ++i) t(i) = ud(rng);
  return t;
}
/// Σ a ⊙ b over all elements (any rank-2 host views of equal shape).
template <class A, class B>
double dot(const A& a, const B& b) {
  double s = 0;
  for (size_t i = 0; i < a.extent(0); ++i)
    for (size_t j = 0; j < a.extent(1); ++j) s += static_cast<double>(a(i, j)) * static_cast<double>(b(i, j));
  return s;
}
/// Compares analytic gradient `g` (same element count as `x`) against central
/// differences of f with respect to every element of x (x.data() is perturbed in place).
/// Fails with the element index on mismatch beyond tol · (1 + |fd|).
template <class X, class G>
void check_fd(const char* what, const X& x, const G& g, const std::function<double()>& f, double tol = 1e-7,
              double h = 1e-5) {
  const size_t n = x.span();
  ASSERT_EQ(n, g.span()) << what;
  int failures = 0;
  for (size_t i = 0; i < n; ++i) {
    double* p = x.data() + i;
    const double orig = *p;
    *p = orig + h;
    const double fp = f();
    *p = orig - h;
    const double fm = f();
    *p = orig;
    const double fd = (fp - fm) / (2 * h);
    const double an = static_cast<double>(g.data()[i]);
    if (std::abs(fd - an) > tol * (1 + std::abs(fd))) {
      if (++failures <= 5) ADD_FAILURE() << what << ": element " << i << " finite difference " << fd << " analytic " << an;
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << n << " elements differ";
}
/// max |a − b| over all elements of two views of equal span.
template <class A, class B>
double max_abs_diff(const A& a, const B& b) {
  double m = 0;
  for (size_t i = 0; i < a.span(); ++i)
    m = std::max(m, std::abs(static_cast<double>(a.data()[i]) - static_cast<double>(b.data()[i])));
  return m;
}
/// Columns [c0, c1) of m as a new contiguous matrix.
inline HMat cols(const HMat& m, int64_t c0, int64_t c1) {
  HMat o("cols", m.extent(0), c1 - c0);
  for (size_t i = 0; i < m.extent(0); ++i)
    for (int64_t j = c0; j < c1; ++j) o(i, j - c0) = m(i, j);
  return o;
}
/// Rows [r0, r1) of m as a new contiguous matrix.
inline HMat rows(const HMat& m, int64_t r0, int64_t r1) {
  HMat o("rows", r1 - r0, m.extent(1));
  for (int64_t i = r0; i < r1; ++i)
    for (size_t j = 0; j < m.extent(1); ++j) o(i - r0, j) = m(i, j);
  return o;
}

}  // namespace shardflow::test::nn
