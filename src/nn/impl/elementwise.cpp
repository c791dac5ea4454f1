// RMSNorm, SwiGLU, residual adds and position embeddings: the row-wise and elementwise
// kernels of the model. Reductions along a row run inside one work item in a fixed order
// (kernels::sum_squares_f64, math::row_dot3: eight partial sums joined in a fixed tree), and
// reductions over rows (the gain and position gradients) run in row order per column, so
// results are bitwise reproducible on any backend.
#include "kernels/elementwise.hpp"
#include "nn/impl/math.hpp"
#include "nn/kernels.hpp"
#include "core/error.hpp"

namespace shardflow::nn {

namespace {
template <class A, class B>
void require_same_shape(const char* op, const char* an, const A& a, const char* bn, const B& b) {
  SHARDFLOW_REQUIRE(a.extent(0) == b.extent(0) && a.extent(1) == b.extent(1), op, ": ", an, " is [", a.extent(0),
                    ", ", a.extent(1), "] but ", bn, " is [", b.extent(0), ", ", b.extent(1), "]");
}
}  // namespace

// ---- RmsNorm ----------------------------------------------------------------------------
template <class Scalar, class Exec>
void RmsNorm<Scalar, Exec>::forward(typename V::CMat x, typename V::CVec g, typename V::Mat y, typename V::Vec rstd,
                                    double eps) {
  require_same_shape("RmsNorm::forward", "x", x, "y", y);
  SHARDFLOW_REQUIRE(g.extent(0) == x.extent(1) && rstd.extent(0) == x.extent(0), "RmsNorm::forward: x is [",
                    x.extent(0), ", ", x.extent(1), "], gain has ", g.extent(0), " elements, rstd has ",
                    rstd.extent(0));
  const int64_t h = static_cast<int64_t>(x.extent(1));
  const double inv_h = 1.0 / static_cast<double>(h);
  Kokkos::parallel_for(
      "nn::rmsnorm_fwd", Kokkos::RangePolicy<Exec>(0, x.extent(0)), KOKKOS_LAMBDA(const int64_t t) {
        const double ss = kernels::sum_squares_f64(&x(t, 0), h);
        const Scalar r = static_cast<Scalar>(1.0 / math::sqrt(ss * inv_h + eps));
        rstd(t) = r;
        for (int64_t j = 0; j < h; ++j) y(t, j) = x(t, j) * r * g(j);
      });
}

template <class Scalar, class Exec>
void RmsNorm<Scalar, Exec>::backward(typename V::CMat dy, typename V::CMat x, typename V::CVec g,
                                     typename V::CVec rstd, typename V::Mat dx, typename V::Vec dg,
                                     bool accumulate_dx, bool accumulate_dg) {
  require_same_shape("RmsNorm::backward", "dy", dy, "x", x);
  require_same_shape("RmsNorm::backward", "dx", dx, "x", x);
  SHARDFLOW_REQUIRE(g.extent(0) == x.extent(1) && dg.extent(0) == x.extent(1) && rstd.extent(0) == x.extent(0),
                    "RmsNorm::backward: x is [", x.extent(0), ", ", x.extent(1), "], gain has ", g.extent(0),
                    ", dgain ", dg.extent(0), ", rstd ", rstd.extent(0), " elements");
  const int64_t h = static_cast<int64_t>(x.extent(1));
  const double inv_h = 1.0 / static_cast<double>(h);
  Kokkos::parallel_for(
      "nn::rmsnorm_bwd_x", Kokkos::RangePolicy<Exec>(0, x.extent(0)), KOKKOS_LAMBDA(const int64_t t) {
        const double c = math::row_dot3(&g(0), &dy(t, 0), &x(t, 0), h);
        const double r = rstd(t);
        const Scalar k = static_cast<Scalar>(r * r * r * c * inv_h);
        const Scalar rs = static_cast<Scalar>(r);
        if (accumulate_dx)
          for (int64_t j = 0; j < h; ++j) dx(t, j) += rs * g(j) * dy(t, j) - k * x(t, j);
        else
          for (int64_t j = 0; j < h; ++j) dx(t, j) = rs * g(j) * dy(t, j) - k * x(t, j);
      });
  // dg[j] = Σ_t dy[t, j] · x[t, j] · rstd[t], in row order for every j; columns go in chunks
  // so that the inner loop runs along contiguous memory (and vectorises).
  constexpr int64_t chunk = 16;
  const int64_t rows = static_cast<int64_t>(x.extent(0)), nchunks = (h + chunk - 1) / chunk;
  Kokkos::parallel_for(
      "nn::rmsnorm_bwd_g", Kokkos::RangePolicy<Exec>(0, nchunks), KOKKOS_LAMBDA(const int64_t c) {
        const int64_t j0 = c * chunk, w = (h - j0) < chunk ? (h - j0) : chunk;
        Scalar acc[chunk];
        for (int64_t k = 0; k < chunk; ++k) acc[k] = (k < w && accumulate_dg) ? dg(j0 + k) : Scalar(0);
        if (w == chunk) {
          for (int64_t t = 0; t < rows; ++t) {
            const Scalar r = rstd(t);
            for (int64_t k = 0; k < chunk; ++k) acc[k] += dy(t, j0 + k) * x(t, j0 + k) * r;
          }
        } else {
          for (int64_t t = 0; t < rows; ++t) {
            const Scalar r = rstd(t);
            for (int64_t k = 0; k < w; ++k) acc[k] += dy(t, j0 + k) * x(t, j0 + k) * r;
          }
        }
        for (int64_t k = 0; k < w; ++k) dg(j0 + k) = acc[k];
      });
}

// ---- SwiGlu -----------------------------------------------------------------------------
template <class Scalar, class Exec>
void SwiGlu<Scalar, Exec>::forward(typename V::CMat gu, typename V::Mat h) {
  SHARDFLOW_REQUIRE(gu.extent(0) == h.extent(0) && gu.extent(1) == 2 * h.extent(1), "SwiGlu::forward: gu is [",
                    gu.extent(0), ", ", gu.extent(1), "] but h is [", h.extent(0), ", ", h.extent(1),
                    "]; want gu [T, 2F], h [T, F]");
  const int64_t f = static_cast<int64_t>(h.extent(1));
  Kokkos::parallel_for(
      "nn::swiglu_fwd", Kokkos::RangePolicy<Exec>(0, h.extent(0)), KOKKOS_LAMBDA(const int64_t t) {
        // plain row pointers: the loop vectorises (through View accessors GCC gave up on it)
        const Scalar* __restrict__ g = &gu(t, 0);
        const Scalar* __restrict__ u = g + f;
        Scalar* __restrict__ o = &h(t, 0);
        for (int64_t j = 0; j < f; ++j) {
          const Scalar z = g[j];
          o[j] = z * math::sigmoid(z) * u[j];
        }
      });
}

template <class Scalar, class Exec>
void SwiGlu<Scalar, Exec>::backward(typename V::CMat dh, typename V::CMat gu, typename V::Mat dgu) {
  require_same_shape("SwiGlu::backward", "dgu", dgu, "gu", gu);
  SHARDFLOW_REQUIRE(gu.extent(0) == dh.extent(0) && gu.extent(1) == 2 * dh.extent(1), "SwiGlu::backward: gu is [",
                    gu.extent(0), ", ", gu.extent(1), "] but dh is [", dh.extent(0), ", ", dh.extent(1), "]");
  const int64_t f = static_cast<int64_t>(dh.extent(1));
  Kokkos::parallel_for(
      "nn::swiglu_bwd", Kokkos::RangePolicy<Exec>(0, dh.extent(0)), KOKKOS_LAMBDA(const int64_t t) {
        // plain row pointers, as in the forward: through View accessors the loop stayed scalar
        const Scalar* __restrict__ g = &gu(t, 0);
        const Scalar* __restrict__ u = g + f;
        const Scalar* __restrict__ d = &dh(t, 0);
        Scalar* __restrict__ dg = &dgu(t, 0);
        Scalar* __restrict__ du = dg + f;
        for (int64_t j = 0; j < f; ++j) {
          const Scalar z = g[j], s = math::sigmoid(z);
          dg[j] = d[j] * u[j] * s * (Scalar(1) + z * (Scalar(1) - s));
          du[j] = d[j] * z * s;
        }
      });
}

// ---- Residual ---------------------------------------------------------------------------
template <class Scalar, class Exec>
void Residual<Scalar, Exec>::add(typename V::Mat x, typename V::CMat y) {
  require_same_shape("Residual::add", "x", x, "y", y);
  const int64_t n = static_cast<int64_t>(x.extent(1));
  Kokkos::parallel_for(
      "nn::residual_add", Kokkos::RangePolicy<Exec>(0, x.extent(0)), KOKKOS_LAMBDA(const int64_t t) {
        for (int64_t j = 0; j < n; ++j) x(t, j) += y(t, j);
      });
}

template <class Scalar, class Exec>
void Residual<Scalar, Exec>::copy(typename V::CMat x, typename V::Mat y) {
  require_same_shape("Residual::copy", "x", x, "y", y);
  Kokkos::deep_copy(Exec(), y, x);
}

// ---- PositionEmbedding ------------------------------------------------------------------
template <class Scalar, class Exec>
void PositionEmbedding<Scalar, Exec>::forward(typename V::CMat pos, typename V::Mat x, int cp, int cc) {
  const int64_t S = static_cast<int64_t>(pos.extent(0)), h = static_cast<int64_t>(pos.extent(1));
  SHARDFLOW_REQUIRE(cp >= 1 && cc >= 0 && cc < cp && S % (cp > 1 ? 2 * cp : 1) == 0, "PositionEmbedding::forward: ",
                    S, " positions cannot be split for context rank ", cc, " of ", cp);
  const int64_t s = S / cp;
  SHARDFLOW_REQUIRE(s > 0 && x.extent(1) == pos.extent(1) && static_cast<int64_t>(x.extent(0)) % s == 0,
                    "PositionEmbedding::forward: pos is [", pos.extent(0), ", ", pos.extent(1), "] but x is [",
                    x.extent(0), ", ", x.extent(1), "]; want x [b·S/cp, H]");
  Kokkos::parallel_for(
      "nn::pos_embed_fwd", Kokkos::RangePolicy<Exec>(0, x.extent(0)), KOKKOS_LAMBDA(const int64_t t) {
        const int64_t p = context_position(t % s, s, cp, cc);
        for (int64_t j = 0; j < h; ++j) x(t, j) += pos(p, j);
      });
}

template <class Scalar, class Exec>
void PositionEmbedding<Scalar, Exec>::backward(typename V::CMat dx, typename V::Mat dpos, bool accumulate, int cp,
                                               int cc) {
  const int64_t S = static_cast<int64_t>(dpos.extent(0)), h = static_cast<int64_t>(dpos.extent(1));
  SHARDFLOW_REQUIRE(cp >= 1 && cc >= 0 && cc < cp && S % (cp > 1 ? 2 * cp : 1) == 0, "PositionEmbedding::backward: ",
                    S, " positions cannot be split for context rank ", cc, " of ", cp);
  const int64_t s = S / cp;
  SHARDFLOW_REQUIRE(s > 0 && dx.extent(1) == dpos.extent(1) && static_cast<int64_t>(dx.extent(0)) % s == 0,
                    "PositionEmbedding::backward: dpos is [", dpos.extent(0), ", ", dpos.extent(1), "] but dx is [",
                    dx.extent(0), ", ", dx.extent(1), "]; want dx [b·S/cp, H]");
  const int64_t b = static_cast<int64_t>(dx.extent(0)) / s;
  // the positions this context rank does not hold get nothing (zero unless accumulating)
  if (cp > 1 && !accumulate) Kokkos::deep_copy(dpos, Scalar(0));
  Kokkos::parallel_for(
      "nn::pos_embed_bwd", Kokkos::RangePolicy<Exec>(0, s), KOKKOS_LAMBDA(const int64_t u) {
        const int64_t p = context_position(u, s, cp, cc);
        for (int64_t j = 0; j < h; ++j) {
          Scalar acc = accumulate ? dpos(p, j) : Scalar(0);
          for (int64_t q = 0; q < b; ++q) acc += dx(q * s + u, j);
          dpos(p, j) = acc;
        }
      });
}

template struct RmsNorm<float>;
template struct RmsNorm<double>;
template struct SwiGlu<float>;
template struct SwiGlu<double>;
template struct Residual<float>;
template struct Residual<double>;
template struct PositionEmbedding<float>;
template struct PositionEmbedding<double>;

}  // namespace shardflow::nn
