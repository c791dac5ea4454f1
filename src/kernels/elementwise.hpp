#pragma once
// Element-wise kernels on 1-D contiguous views: scale (x *= alpha, e.g. a sum into a mean),
// accumulate (dst += src, e.g. reducing received gradient pieces), cast (dst = src
// converted). 16-bit element types compute in f32 and round once (to nearest even) when
// stored. Like the pack kernels they are enqueued on `exec` (fence before host access on a
// device space).
#include <Kokkos_Core.hpp>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/error.hpp"
#include "core/half.hpp"

namespace shardflow::kernels {

namespace detail {
/// The type arithmetic on T happens in: float for the 16-bit types, T otherwise.
template <class T>
struct ComputeType {
  using type = T;
};
template <>
struct ComputeType<bf16> {
  using type = float;
};
template <>
struct ComputeType<f16> {
  using type = float;
};
template <class T>
using compute_t = typename ComputeType<std::remove_const_t<T>>::type;
}  // namespace detail

/// x[i] *= alpha for every i (computed in compute_t<T>).
template <class ExecSpace, class View>
void scale(const ExecSpace& exec, const View& x, double alpha) {
  using T = typename View::value_type;
  using C = detail::compute_t<T>;
  static_assert(View::rank == 1 && !std::is_const<T>::value, "kernels::scale: needs a 1-D non-const view");
  static_assert(Kokkos::SpaceAccessibility<ExecSpace, typename View::memory_space>::accessible,
                "kernels::scale: view not accessible from the execution space");
  SHARDFLOW_REQUIRE(x.span_is_contiguous(), "kernels::scale: view '", x.label(), "' is not contiguous");
  T* p = x.data();
  const C a = static_cast<C>(alpha);
  Kokkos::parallel_for(
      "shardflow::kernels::scale",
      Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<std::int64_t>>(exec, 0, static_cast<std::int64_t>(x.extent(0))),
      KOKKOS_LAMBDA(std::int64_t i) { p[i] = Convert<C, T>::apply(Convert<T, C>::apply(p[i]) * a); });
}

/// dst[i] += src[i] for every i; dst and src have the same length and may differ in
/// element type (e.g. f32 += bf16); the sum is computed in compute_t of dst's type.
template <class ExecSpace, class DstView, class SrcView>
void accumulate(const ExecSpace& exec, const DstView& dst, const SrcView& src) {
  using D = typename DstView::value_type;
  using S = std::remove_const_t<typename SrcView::value_type>;
  using C = detail::compute_t<D>;
  static_assert(DstView::rank == 1 && SrcView::rank == 1 && !std::is_const<D>::value,
                "kernels::accumulate: needs 1-D views and a non-const destination");
  static_assert(Kokkos::SpaceAccessibility<ExecSpace, typename DstView::memory_space>::accessible &&
                    Kokkos::SpaceAccessibility<ExecSpace, typename SrcView::memory_space>::accessible,
                "kernels::accumulate: views not accessible from the execution space");
  SHARDFLOW_REQUIRE(dst.extent(0) == src.extent(0), "kernels::accumulate: destination '", dst.label(), "' has ",
                    dst.extent(0), " elements but source '", src.label(), "' has ", src.extent(0));
  SHARDFLOW_REQUIRE(dst.span_is_contiguous() && src.span_is_contiguous(), "kernels::accumulate: views '",
                    dst.label(), "' and '", src.label(), "' must be contiguous");
  D* d = dst.data();
  const S* s = src.data();
  Kokkos::parallel_for(
      "shardflow::kernels::accumulate",
      Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<std::int64_t>>(exec, 0, static_cast<std::int64_t>(dst.extent(0))),
      KOKKOS_LAMBDA(std::int64_t i) {
        d[i] = Convert<C, D>::apply(Convert<D, C>::apply(d[i]) + Convert<S, C>::apply(s[i]));
      });
}

/// dst[i] = src[i] converted (e.g. f32 -> bf16 rounding to nearest even, bf16 -> f32 exact).
template <class ExecSpace, class DstView, class SrcView>
void cast(const ExecSpace& exec, const DstView& dst, const SrcView& src) {
  using D = typename DstView::value_type;
  using S = std::remove_const_t<typename SrcView::value_type>;
  static_assert(DstView::rank == 1 && SrcView::rank == 1 && !std::is_const<D>::value,
                "kernels::cast: needs 1-D views and a non-const destination");
  static_assert(Kokkos::SpaceAccessibility<ExecSpace, typename DstView::memory_space>::accessible &&
                    Kokkos::SpaceAccessibility<ExecSpace, typename SrcView::memory_space>::accessible,
                "kernels::cast: views not accessible from the execution space");
  SHARDFLOW_REQUIRE(dst.extent(0) == src.extent(0), "kernels::cast: destination '", dst.label(), "' has ",
                    dst.extent(0), " elements but source '", src.label(), "' has ", src.extent(0));
  SHARDFLOW_REQUIRE(dst.span_is_contiguous() && src.span_is_contiguous(), "kernels::cast: views '", dst.label(),
                    "' and '", src.label(), "' must be contiguous");
  D* d = dst.data();
  const S* s = src.data();
  Kokkos::parallel_for(
      "shardflow::kernels::cast",
      Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<std::int64_t>>(exec, 0, static_cast<std::int64_t>(dst.extent(0))),
      KOKKOS_LAMBDA(std::int64_t i) { d[i] = Convert<S, D>::apply(s[i]); });
}

/// Σ x[i]² over [0, n) in double: eight accumulators (i mod 8; the tail into the first)
/// joined pairwise. One fixed order, so the result depends only on the data, never on the
/// schedule or the vector width, and eight independent add chains instead of one. Used by
/// the gradient norm (optim) and RMSNorm (nn).
template <class T>
KOKKOS_INLINE_FUNCTION double sum_squares_f64(const T* __restrict__ x, int64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const double x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
    const double x4 = x[i + 4], x5 = x[i + 5], x6 = x[i + 6], x7 = x[i + 7];
    a0 += x0 * x0; a1 += x1 * x1; a2 += x2 * x2; a3 += x3 * x3;
    a4 += x4 * x4; a5 += x5 * x5; a6 += x6 * x6; a7 += x7 * x7;
  }
  for (; i < n; ++i) {
    const double v = x[i];
    a0 += v * v;
  }
  return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

}  // namespace shardflow::kernels
