// Token embedding gather and its deterministic scatter-add: positions are grouped by
// vocabulary row with a counting sort (integer atomics only), each group is sorted by
// position, and every (row, column) sums its group in increasing position. The result
// does not depend on the order in which threads ran.
#include "nn/kernels.hpp"
#include "core/error.hpp"

namespace shardflow::nn {

namespace {
/// In-place heap sort of a[0, n) ascending (device-callable, O(n log n), no recursion).
template <class A>
KOKKOS_INLINE_FUNCTION void heap_sort(const A& a, int64_t lo, int64_t n) {
  auto sift = [&](int64_t root, int64_t end) {
    while (2 * root + 1 < end) {
      int64_t child = 2 * root + 1;
      if (child + 1 < end && a(lo + child) < a(lo + child + 1)) ++child;
      if (!(a(lo + root) < a(lo + child))) return;
      const auto tmp = a(lo + root);
      a(lo + root) = a(lo + child);
      a(lo + child) = tmp;
      root = child;
    }
  };
  for (int64_t start = n / 2 - 1; start >= 0; --start) sift(start, n);
  for (int64_t end = n - 1; end > 0; --end) {
    const auto tmp = a(lo);
    a(lo) = a(lo + end);
    a(lo + end) = tmp;
    sift(0, end);
  }
}
}  // namespace

template <class Scalar, class Exec>
Embedding<Scalar, Exec>::Scratch::Scratch(int64_t vocab_rows, int64_t max_rows)
    : offsets("nn::embed_offsets", static_cast<size_t>(vocab_rows + 1)),
      cursor("nn::embed_cursor", static_cast<size_t>(vocab_rows)),
      order("nn::embed_order", static_cast<size_t>(max_rows)) {}

template <class Scalar, class Exec>
void Embedding<Scalar, Exec>::forward(typename V::CTokens tokens, typename V::CMat table, int64_t v0,
                                      typename V::Mat x, bool accumulate) {
  SHARDFLOW_REQUIRE(tokens.extent(0) == x.extent(0) && table.extent(1) == x.extent(1),
                    "Embedding::forward: tokens has ", tokens.extent(0), " elements, table is [", table.extent(0),
                    ", ", table.extent(1), "], x is [", x.extent(0), ", ", x.extent(1), "]");
  const int64_t vl = static_cast<int64_t>(table.extent(0)), h = static_cast<int64_t>(table.extent(1));
  Kokkos::parallel_for(
      "nn::embed_fwd", Kokkos::RangePolicy<Exec>(0, x.extent(0)), KOKKOS_LAMBDA(const int64_t t) {
        const int64_t v = static_cast<int64_t>(tokens(t)) - v0;
        const bool own = v >= 0 && v < vl;
        if (accumulate) {
          if (own)
            for (int64_t j = 0; j < h; ++j) x(t, j) += table(v, j);
        } else {
          for (int64_t j = 0; j < h; ++j) x(t, j) = own ? table(v, j) : Scalar(0);
        }
      });
}

template <class Scalar, class Exec>
void Embedding<Scalar, Exec>::backward(typename V::CTokens tokens, typename V::CMat dx, int64_t v0,
                                       typename V::Mat dtable, Scratch& scratch, bool accumulate) {
  SHARDFLOW_REQUIRE(tokens.extent(0) == dx.extent(0) && dtable.extent(1) == dx.extent(1),
                    "Embedding::backward: tokens has ", tokens.extent(0), " elements, dx is [", dx.extent(0), ", ",
                    dx.extent(1), "], dtable is [", dtable.extent(0), ", ", dtable.extent(1), "]");
  const int64_t vl = static_cast<int64_t>(dtable.extent(0)), h = static_cast<int64_t>(dtable.extent(1));
  const int64_t rows = static_cast<int64_t>(dx.extent(0));
  SHARDFLOW_REQUIRE(static_cast<int64_t>(scratch.offsets.extent(0)) == vl + 1 &&
                        static_cast<int64_t>(scratch.order.extent(0)) >= rows,
                    "Embedding::backward: scratch was made for ", scratch.offsets.extent(0) - 1, " rows and ",
                    scratch.order.extent(0), " positions, but dtable has ", vl, " rows and dx ", rows);
  auto offsets = scratch.offsets;
  auto cursor = scratch.cursor;
  auto order = scratch.order;
  Kokkos::deep_copy(offsets, 0);
  Kokkos::deep_copy(cursor, 0);
  Kokkos::parallel_for(
      "nn::embed_bwd_count", Kokkos::RangePolicy<Exec>(0, rows), KOKKOS_LAMBDA(const int64_t t) {
        const int64_t v = static_cast<int64_t>(tokens(t)) - v0;
        if (v >= 0 && v < vl) Kokkos::atomic_increment(&offsets(v + 1));
      });
  Kokkos::parallel_scan(
      "nn::embed_bwd_scan", Kokkos::RangePolicy<Exec>(0, vl + 1),
      KOKKOS_LAMBDA(const int64_t i, int64_t& update, const bool final) {
        update += offsets(i);
        if (final) offsets(i) = update;
      });
  Kokkos::parallel_for(
      "nn::embed_bwd_fill", Kokkos::RangePolicy<Exec>(0, rows), KOKKOS_LAMBDA(const int64_t t) {
        const int64_t v = static_cast<int64_t>(tokens(t)) - v0;
        if (v >= 0 && v < vl) order(offsets(v) + Kokkos::atomic_fetch_add(&cursor(v), int64_t(1))) = t;
      });
  Kokkos::parallel_for(
      "nn::embed_bwd_sort", Kokkos::RangePolicy<Exec>(0, vl),
      KOKKOS_LAMBDA(const int64_t v) { heap_sort(order, offsets(v), offsets(v + 1) - offsets(v)); });
  Kokkos::parallel_for(
      "nn::embed_bwd_sum", Kokkos::MDRangePolicy<Exec, Kokkos::Rank<2>>({0, 0}, {vl, h}),
      KOKKOS_LAMBDA(const int64_t v, const int64_t j) {
        Scalar acc = accumulate ? dtable(v, j) : Scalar(0);
        for (int64_t k = offsets(v); k < offsets(v + 1); ++k) acc += dx(order(k), j);
        dtable(v, j) = acc;
      });
}

template struct Embedding<float>;
template struct Embedding<double>;

}  // namespace shardflow::nn
