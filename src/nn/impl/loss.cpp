// Cross-entropy as separable steps (vocab-parallel ready): local max, local sum of
// exponentials and target logit, then per-row loss and the gradient of the local slice.
#include "nn/impl/math.hpp"
#include "nn/kernels.hpp"
#include "core/error.hpp"

namespace shardflow::nn {

template <class Scalar, class Exec>
void CrossEntropy<Scalar, Exec>::local_max(typename V::CMat logits, typename V::Vec row_max) {
  SHARDFLOW_REQUIRE(row_max.extent(0) == logits.extent(0) && logits.extent(1) > 0, "CrossEntropy::local_max: logits is [",
                    logits.extent(0), ", ", logits.extent(1), "], row_max has ", row_max.extent(0), " elements");
  const int64_t n = static_cast<int64_t>(logits.extent(1));
  Kokkos::parallel_for(
      "nn::ce_max", Kokkos::RangePolicy<Exec>(0, logits.extent(0)), KOKKOS_LAMBDA(const int64_t t) {
        Scalar m = logits(t, 0);
        for (int64_t j = 1; j < n; ++j) m = logits(t, j) > m ? logits(t, j) : m;
        row_max(t) = m;
      });
}

template <class Scalar, class Exec>
void CrossEntropy<Scalar, Exec>::local_sumexp_target(typename V::CMat logits, typename V::CVec row_max,
                                                     typename V::CTokens targets, int64_t v0, typename V::Mat stats) {
  SHARDFLOW_REQUIRE(row_max.extent(0) == logits.extent(0) && targets.extent(0) == logits.extent(0) &&
                        stats.extent(0) == logits.extent(0) && stats.extent(1) == 2,
                    "CrossEntropy::local_sumexp_target: logits is [", logits.extent(0), ", ", logits.extent(1),
                    "], row_max has ", row_max.extent(0), ", targets ", targets.extent(0), " elements, stats is [",
                    stats.extent(0), ", ", stats.extent(1), "] (want [T, 2])");
  const int64_t n = static_cast<int64_t>(logits.extent(1));
  Kokkos::parallel_for(
      "nn::ce_sumexp", Kokkos::RangePolicy<Exec>(0, logits.extent(0)), KOKKOS_LAMBDA(const int64_t t) {
        const Scalar m = row_max(t);
        Scalar sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += math::exp(logits(t, j) - m);
        stats(t, 0) = sum;
        const int64_t local = static_cast<int64_t>(targets(t)) - v0;
        stats(t, 1) = (local >= 0 && local < n) ? logits(t, local) : Scalar(0);
      });
}

template <class Scalar, class Exec>
double CrossEntropy<Scalar, Exec>::loss(typename V::CVec row_max, typename V::CMat stats) {
  SHARDFLOW_REQUIRE(stats.extent(0) == row_max.extent(0) && stats.extent(1) == 2, "CrossEntropy::loss: row_max has ",
                    row_max.extent(0), " elements, stats is [", stats.extent(0), ", ", stats.extent(1), "]");
  double total = 0;
  Kokkos::parallel_reduce(
      "nn::ce_loss", Kokkos::RangePolicy<Exec>(0, row_max.extent(0)),
      KOKKOS_LAMBDA(const int64_t t, double& acc) {
        acc += math::log(static_cast<double>(stats(t, 0))) + static_cast<double>(row_max(t)) -
               static_cast<double>(stats(t, 1));
      },
      total);
  return total;
}

template <class Scalar, class Exec>
double CrossEntropy<Scalar, Exec>::loss_and_grad(typename V::CMat logits, typename V::CVec row_max,
                                                 typename V::CMat stats, typename V::CTokens targets, int64_t v0,
                                                 double grad_scale, typename V::Mat dlogits) {
  SHARDFLOW_REQUIRE(dlogits.extent(0) == logits.extent(0) && dlogits.extent(1) == logits.extent(1) &&
                        targets.extent(0) == logits.extent(0),
                    "CrossEntropy::loss_and_grad: logits is [", logits.extent(0), ", ", logits.extent(1),
                    "], dlogits is [", dlogits.extent(0), ", ", dlogits.extent(1), "], targets has ",
                    targets.extent(0), " elements");
  const double total = loss(row_max, stats);
  const int64_t n = static_cast<int64_t>(logits.extent(1));
  const Scalar gs = static_cast<Scalar>(grad_scale);
  Kokkos::parallel_for(
      "nn::ce_grad", Kokkos::RangePolicy<Exec>(0, logits.extent(0)), KOKKOS_LAMBDA(const int64_t t) {
        const Scalar m = row_max(t);
        const Scalar k = gs / stats(t, 0);
        for (int64_t j = 0; j < n; ++j) dlogits(t, j) = k * math::exp(logits(t, j) - m);
        const int64_t local = static_cast<int64_t>(targets(t)) - v0;
        if (local >= 0 && local < n) dlogits(t, local) -= gs;
      });
  return total;
}

template <class Scalar, class Exec>
double CrossEntropy<Scalar, Exec>::forward_backward(typename V::CMat logits, typename V::CTokens targets,
                                                    double grad_scale, typename V::Mat dlogits,
                                                    typename V::Vec row_max, typename V::Mat stats) {
  const int64_t n = static_cast<int64_t>(logits.extent(1));
  SHARDFLOW_REQUIRE(targets.extent(0) == logits.extent(0), "CrossEntropy::forward_backward: logits has ",
                    logits.extent(0), " rows but targets has ", targets.extent(0), " elements");
  int64_t bad = 0;
  Kokkos::parallel_reduce(
      "nn::ce_check", Kokkos::RangePolicy<Exec>(0, targets.extent(0)),
      KOKKOS_LAMBDA(const int64_t t, int64_t& acc) { acc += (targets(t) < 0 || targets(t) >= n) ? 1 : 0; }, bad);
  SHARDFLOW_REQUIRE(bad == 0, "CrossEntropy::forward_backward: ", bad, " targets lie outside the vocabulary [0, ", n,
                    ")");
  local_max(logits, row_max);
  local_sumexp_target(logits, row_max, targets, 0, stats);
  if (dlogits.extent(0) == 0 && logits.extent(0) != 0) return loss(row_max, stats);
  return loss_and_grad(logits, row_max, stats, targets, 0, grad_scale, dlogits);
}

template struct CrossEntropy<float>;
template struct CrossEntropy<double>;

}  // namespace shardflow::nn
