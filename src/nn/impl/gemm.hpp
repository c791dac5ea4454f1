#pragma once
// Private: the one place the model math multiplies matrices. Row-major (LayoutRight)
// operands only. Host f32 goes to core/gemm.hpp's host_sgemm (oneDNN or OpenBLAS by
// transposition); host f64 and a CUDA build go through KokkosBlas::gemm (the BLAS TPL's
// dgemm, cuBLAS); empty extents are handled here (no library is asked about them).
#include <KokkosBlas3_gemm.hpp>
#include <Kokkos_Core.hpp>
#include <type_traits>

#include "core/error.hpp"
#include "core/gemm.hpp"

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
  if constexpr (std::is_same<Scalar, float>::value &&
                std::is_same<typename CV::memory_space, Kokkos::HostSpace>::value) {
    // row strides: LayoutRight views of the model are contiguous rows (checked)
    SHARDFLOW_REQUIRE(a.stride(1) == 1 && b.stride(1) == 1 && c.stride(1) == 1,
                      "gemm: host f32 operands must have unit column stride");
    host_sgemm(ta[0], tb[0], static_cast<std::int64_t>(m), static_cast<std::int64_t>(n),
               static_cast<std::int64_t>(ak), static_cast<float>(alpha), a.data(),
               static_cast<std::int64_t>(a.stride(0)), b.data(), static_cast<std::int64_t>(b.stride(0)),
               static_cast<float>(beta), c.data(), static_cast<std::int64_t>(c.stride(0)));
  } else {
    KokkosBlas::gemm(ta, tb, static_cast<Scalar>(alpha), a, b, static_cast<Scalar>(beta), c);
  }
}

}  // namespace shardflow::nn::detail
