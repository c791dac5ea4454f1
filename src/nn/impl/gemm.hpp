#pragma once
// Private: the one place the model math calls KokkosBlas::gemm. Row-major (LayoutRight)
// operands only, so that host f32/f64 goes to the BLAS TPL (sgemm/dgemm) and a CUDA build
// to cuBLAS; empty extents are handled here (BLAS is not asked about them).
#include <KokkosBlas3_gemm.hpp>
#include <Kokkos_Core.hpp>
#include <type_traits>

#include "core/error.hpp"

namespace shardflow::nn::detail {

/// C = alpha · op(A) · op(B) + beta · C with op = identity ('N') or transpose ('T').
template <class AV, class BV, class CV>
void gemm(const char* ta, const char* tb, double alpha, const AV& a, const BV& b, double beta, const CV& c) {
  static_assert(std::is_same<typename AV::array_layout, Kokkos::LayoutRight>::value &&
                    std::is_same<typename BV::array_layout, Kokkos::LayoutRight>::value &&
                    std::is_same<typename CV::array_layout, Kokkos::LayoutRight>::value,
                "nn::detail::gemm wants LayoutRight operands (BLAS TPL path)");
  using Scalar = typename CV::non_const_value_type;
  const bool at = ta[0] == 'T', bt = tb[0] == 'T';
  const size_t m = c.extent(0), n = c.extent(1);
  const size_t am = at ? a.extent(1) : a.extent(0), ak = at ? a.extent(0) : a.extent(1);
  const size_t bk = bt ? b.extent(1) : b.extent(0), bn = bt ? b.extent(0) : b.extent(1);
  SHARDFLOW_REQUIRE(am == m && bn == n && ak == bk, "gemm: shapes do not match: op(A) is [", am, ", ", ak,
                    "], op(B) is [", bk, ", ", bn, "], C is [", m, ", ", n, "]");
  if (m == 0 || n == 0) return;
  if (ak == 0) {
    if (beta == 0.0) {
      Kokkos::deep_copy(c, Scalar(0));
    } else if (beta != 1.0) {
      using Exec = typename CV::execution_space;
      const Scalar bs = static_cast<Scalar>(beta);
      Kokkos::parallel_for(
          "nn::gemm_scale", Kokkos::MDRangePolicy<Exec, Kokkos::Rank<2>>({0, 0}, {m, n}),
          KOKKOS_LAMBDA(const size_t i, const size_t j) { c(i, j) *= bs; });
    }
    return;
  }
  KokkosBlas::gemm(ta, tb, static_cast<Scalar>(alpha), a, b, static_cast<Scalar>(beta), c);
}

}  // namespace shardflow::nn::detail
