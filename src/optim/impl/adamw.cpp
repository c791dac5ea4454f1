// AdamW: host-side schedule and clipping scalars, and the elementwise update kernel.
#include "optim/adamw.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "kernels/elementwise.hpp"

namespace shardflow::optim {

void AdamWConfig::validate() const {
  SHARDFLOW_REQUIRE_INPUT(lr > 0 && std::isfinite(lr), "AdamW: lr must be a positive number, got ", lr);
  SHARDFLOW_REQUIRE_INPUT(warmup >= 0, "AdamW: warmup must be >= 0, got ", warmup);
  SHARDFLOW_REQUIRE_INPUT(beta1 >= 0 && beta1 < 1, "AdamW: beta1 must be in [0, 1), got ", beta1);
  SHARDFLOW_REQUIRE_INPUT(beta2 >= 0 && beta2 < 1, "AdamW: beta2 must be in [0, 1), got ", beta2);
  SHARDFLOW_REQUIRE_INPUT(eps > 0, "AdamW: eps must be > 0, got ", eps);
  SHARDFLOW_REQUIRE_INPUT(weight_decay >= 0, "AdamW: weight_decay must be >= 0, got ", weight_decay);
  SHARDFLOW_REQUIRE_INPUT(clip_norm > 0, "AdamW: clip_norm must be > 0, got ", clip_norm);
}

double learning_rate(const AdamWConfig& cfg, int64_t step) {
  SHARDFLOW_REQUIRE(step >= 1, "AdamW: optimizer steps count from 1, got step ", step);
  if (cfg.warmup <= 0) return cfg.lr;
  return cfg.lr * std::min(1.0, static_cast<double>(step) / static_cast<double>(cfg.warmup));
}

bool uses_weight_decay(const std::string& name, size_t ndim) {
  return ndim == 2 && name != "embed.weight" && name != "pos_embed.weight";
}

double clip_scale(double global_sq_norm, double max_norm) {
  SHARDFLOW_REQUIRE(global_sq_norm >= 0 && !std::isnan(global_sq_norm),
                    "AdamW: the global squared gradient norm must be >= 0, got ", global_sq_norm);
  return std::min(1.0, max_norm / (std::sqrt(global_sq_norm) + 1e-6));
}

AdamWStep make_step(const AdamWConfig& cfg, int64_t step, double global_sq_norm) {
  AdamWStep s;
  s.step = step;
  s.lr = learning_rate(cfg, step);
  s.grad_scale = clip_scale(global_sq_norm, cfg.clip_norm);
  s.beta1 = cfg.beta1;
  s.beta2 = cfg.beta2;
  s.eps = cfg.eps;
  s.weight_decay = cfg.weight_decay;
  s.bias1 = 1.0 - std::pow(cfg.beta1, static_cast<double>(step));
  s.bias2 = 1.0 - std::pow(cfg.beta2, static_cast<double>(step));
  return s;
}

namespace {

/// Elements per work item: host spaces take a block each, so that the inner loop over plain
/// pointers vectorises; a device space takes one element per thread (coalesced).
template <class Exec>
constexpr int64_t block_size() {
  return Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename Exec::memory_space>::accessible ? 4096 : 1;
}

#if KOKKOS_VERSION >= 30700
template <class T>
KOKKOS_INLINE_FUNCTION T sqrt_of(T x) { return Kokkos::sqrt(x); }
#else
template <class T>
KOKKOS_INLINE_FUNCTION T sqrt_of(T x) { return Kokkos::Experimental::sqrt(x); }
#endif

/// The scalars of one update in the working precision of the tensor.
template <class Scalar>
struct UpdateScalars {
  Scalar gs, b1, one_minus_b1, b2, one_minus_b2, eps, lr_over_bias1, inv_bias2, decay;
};

/// The update of elements [lo, hi): each element on its own, in Scalar arithmetic (IEEE,
/// no contraction), so a shard updates bitwise as the same elements of the whole tensor.
template <class Scalar>
KOKKOS_INLINE_FUNCTION void block_update(Scalar* __restrict__ p, const Scalar* __restrict__ g,
                                         Scalar* __restrict__ m, Scalar* __restrict__ v, int64_t lo, int64_t hi,
                                         const UpdateScalars<Scalar>& c) {
  for (int64_t i = lo; i < hi; ++i) {
    const Scalar gi = c.gs * g[i];
    const Scalar mi = c.b1 * m[i] + c.one_minus_b1 * gi;
    const Scalar vi = c.b2 * v[i] + c.one_minus_b2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const Scalar denom = sqrt_of(vi * c.inv_bias2) + c.eps;
    p[i] = p[i] * c.decay - (c.lr_over_bias1 * mi) / denom;
  }
}

}  // namespace

template <class Scalar, class Exec>
double AdamW<Scalar, Exec>::sum_of_squares(typename V::CVec g) {
  constexpr int64_t bs = block_size<Exec>();
  const int64_t n = static_cast<int64_t>(g.extent(0));
  const Scalar* gp = g.data();
  double total = 0;
  Kokkos::parallel_reduce(
      "optim::sum_of_squares", Kokkos::RangePolicy<Exec>(0, (n + bs - 1) / bs),
      KOKKOS_LAMBDA(const int64_t b, double& acc) {
        const int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        acc += kernels::sum_squares_f64(gp + lo, hi - lo);
      },
      total);
  return total;
}

template <class Scalar, class Exec>
void AdamW<Scalar, Exec>::update(typename V::Vec p, typename V::CVec g, typename V::Vec m, typename V::Vec v,
                                 const AdamWStep& s, bool weight_decay) {
  SHARDFLOW_REQUIRE(g.extent(0) == p.extent(0) && m.extent(0) == p.extent(0) && v.extent(0) == p.extent(0),
                    "AdamW::update: param has ", p.extent(0), " elements, grad ", g.extent(0), ", m ", m.extent(0),
                    ", v ", v.extent(0));
  SHARDFLOW_REQUIRE(s.step >= 1, "AdamW::update: step must be >= 1, got ", s.step);
  // The per-step scalars are formed in double on the host and rounded once to Scalar.
  UpdateScalars<Scalar> c;
  c.gs = static_cast<Scalar>(s.grad_scale);
  c.b1 = static_cast<Scalar>(s.beta1);
  c.one_minus_b1 = static_cast<Scalar>(1.0 - s.beta1);
  c.b2 = static_cast<Scalar>(s.beta2);
  c.one_minus_b2 = static_cast<Scalar>(1.0 - s.beta2);
  c.eps = static_cast<Scalar>(s.eps);
  c.lr_over_bias1 = static_cast<Scalar>(s.lr / s.bias1);
  c.inv_bias2 = static_cast<Scalar>(1.0 / s.bias2);
  c.decay = static_cast<Scalar>(weight_decay ? 1.0 - s.lr * s.weight_decay : 1.0);
  constexpr int64_t bs = block_size<Exec>();
  const int64_t n = static_cast<int64_t>(p.extent(0));
  Scalar* pp = p.data();
  const Scalar* gp = g.data();
  Scalar* mp = m.data();
  Scalar* vp = v.data();
  Kokkos::parallel_for(
      "optim::adamw_update", Kokkos::RangePolicy<Exec>(0, (n + bs - 1) / bs), KOKKOS_LAMBDA(const int64_t b) {
        const int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        block_update(pp, gp, mp, vp, lo, hi, c);
      });
}

template struct AdamW<float>;
template struct AdamW<double>;

}  // namespace shardflow::optim
