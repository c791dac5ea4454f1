// AdamW: host-side schedule and clipping scalars, and the elementwise update kernel.
#include "optim/adamw.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

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

template <class Scalar, class Exec>
double AdamW<Scalar, Exec>::sum_of_squares(typename V::CVec g) {
  double total = 0;
  Kokkos::parallel_reduce(
      "optim::sum_of_squares", Kokkos::RangePolicy<Exec>(0, g.extent(0)),
      KOKKOS_LAMBDA(const int64_t i, double& acc) { acc += static_cast<double>(g(i)) * static_cast<double>(g(i)); },
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
  const double decay = weight_decay ? 1.0 - s.lr * s.weight_decay : 1.0;
  const double gs = s.grad_scale, b1 = s.beta1, b2 = s.beta2, eps = s.eps, lr = s.lr;
  const double inv_bias1 = 1.0 / s.bias1, inv_bias2 = 1.0 / s.bias2;
  Kokkos::parallel_for(
      "optim::adamw_update", Kokkos::RangePolicy<Exec>(0, p.extent(0)), KOKKOS_LAMBDA(const int64_t i) {
        const double gi = gs * static_cast<double>(g(i));
        const double mi = b1 * static_cast<double>(m(i)) + (1.0 - b1) * gi;
        const double vi = b2 * static_cast<double>(v(i)) + (1.0 - b2) * gi * gi;
        m(i) = static_cast<Scalar>(mi);
        v(i) = static_cast<Scalar>(vi);
#if KOKKOS_VERSION >= 30700
        const double denom = Kokkos::sqrt(vi * inv_bias2) + eps;
#else
        const double denom = Kokkos::Experimental::sqrt(vi * inv_bias2) + eps;
#endif
        p(i) = static_cast<Scalar>(static_cast<double>(p(i)) * decay - lr * (mi * inv_bias1) / denom);
      });
}

template struct AdamW<float>;
template struct AdamW<double>;

}  // namespace shardflow::optim
