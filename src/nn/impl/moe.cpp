#include "nn/moe.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace shardflow::nn {

int64_t MoeConfig::capacity() const {
  return static_cast<int64_t>(
      std::ceil(capacity_factor * static_cast<double>(seq * top_k) / static_cast<double>(experts)));
}

MoeRouting moe_route(const float* logits, int64_t tokens, const MoeConfig& c) {
  const int64_t E = c.experts, k = c.top_k, S = c.seq;
  SHARDFLOW_REQUIRE(E >= 1 && k >= 1 && k <= E && S >= 1 && tokens % S == 0, "moe_route: E = ", E, ", top_k = ", k,
                    ", S = ", S, ", tokens = ", tokens, " (tokens must be a multiple of S, 1 <= top_k <= E)");
  MoeRouting r;
  r.tokens = tokens;
  r.probs.resize(static_cast<size_t>(tokens * E));
  r.expert.resize(static_cast<size_t>(tokens * k));
  r.gate.resize(static_cast<size_t>(tokens * k));
  r.kept.assign(static_cast<size_t>(tokens * k), 0);
  r.load.assign(static_cast<size_t>(tokens / S * E), 0.0f);
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* z = logits + t * E;
    float* p = r.probs.data() + t * E;
    double mx = z[0];
    for (int64_t e = 1; e < E; ++e) mx = std::max(mx, static_cast<double>(z[e]));
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(z[e]) - mx);
    for (int64_t e = 0; e < E; ++e) p[e] = static_cast<float>(std::exp(static_cast<double>(z[e]) - mx) / sum);
    for (int64_t e = 0; e < E; ++e) order[static_cast<size_t>(e)] = static_cast<int32_t>(e);
    std::stable_sort(order.begin(), order.end(), [p](int32_t a, int32_t b) { return p[a] > p[b]; });
    double gsum = 0;
    for (int64_t j = 0; j < k; ++j) gsum += std::exp(static_cast<double>(z[order[static_cast<size_t>(j)]]) - mx);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = order[static_cast<size_t>(j)];
      r.expert[static_cast<size_t>(t * k + j)] = e;
      r.gate[static_cast<size_t>(t * k + j)] = static_cast<float>(std::exp(static_cast<double>(z[e]) - mx) / gsum);
    }
  }
  // capacity and the load-balancing loss, per sequence
  const int64_t cap = c.capacity();
  std::vector<int64_t> used(static_cast<size_t>(E));
  for (int64_t q = 0; q < tokens / S; ++q) {
    std::fill(used.begin(), used.end(), 0);
    float* f = r.load.data() + q * E;
    for (int64_t j = 0; j < k; ++j)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t a = (q * S + s) * k + j;
        const int32_t e = r.expert[static_cast<size_t>(a)];
        f[e] += 1.0f;
        if (used[static_cast<size_t>(e)] < cap) {
          ++used[static_cast<size_t>(e)];
          r.kept[static_cast<size_t>(a)] = 1;
        } else {
          ++r.dropped;
        }
      }
    double aux = 0;
    for (int64_t e = 0; e < E; ++e) {
      f[e] /= static_cast<float>(S * k);
      double P = 0;
      for (int64_t s = 0; s < S; ++s) P += r.probs[static_cast<size_t>((q * S + s) * E + e)];
      aux += static_cast<double>(f[e]) * P / static_cast<double>(S);
    }
    r.aux += c.aux_coef * static_cast<double>(E) * aux;
  }
  return r;
}

void moe_route_backward(const MoeRouting& r, const float* dgate, double aux_scale, const MoeConfig& c, float* dlogits) {
  const int64_t E = c.experts, k = c.top_k, S = c.seq, T = r.tokens;
  std::vector<double> dp(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    float* dz = dlogits + t * E;
    const float* p = r.probs.data() + t * E;
    // the aux loss through P_e: d/dp_e = aux_scale · aux_coef · E · f_e / S
    const float* f = r.load.data() + (t / S) * E;
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) {
      dp[static_cast<size_t>(e)] = aux_scale * c.aux_coef * static_cast<double>(E) * f[e] / static_cast<double>(S);
      dot += dp[static_cast<size_t>(e)] * p[e];
    }
    for (int64_t e = 0; e < E; ++e) dz[e] = static_cast<float>(p[e] * (dp[static_cast<size_t>(e)] - dot));
    // the gates: softmax over the chosen logits
    double gdot = 0;
    for (int64_t j = 0; j < k; ++j)
      gdot += static_cast<double>(r.gate[static_cast<size_t>(t * k + j)]) * dgate[t * k + j];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t a = t * k + j;
      const double g = r.gate[static_cast<size_t>(a)];
      dz[r.expert[static_cast<size_t>(a)]] += static_cast<float>(g * (dgate[a] - gdot));
    }
  }
}

template <class Scalar, class Exec>
void MoeRows<Scalar, Exec>::dispatch(typename V::CMat x, Index slot, int64_t k, typename V::Mat dst) {
  const int64_t n = static_cast<int64_t>(slot.extent(0)), H = static_cast<int64_t>(x.extent(1));
  SHARDFLOW_REQUIRE(static_cast<int64_t>(x.extent(0)) * k == n && static_cast<int64_t>(dst.extent(1)) == H,
                    "MoeRows::dispatch: x ", x.extent(0), "x", H, ", ", n, " choices of top_k ", k, ", dst ",
                    dst.extent(0), "x", dst.extent(1));
  Kokkos::parallel_for(
      "shardflow::nn::moe_dispatch", Kokkos::RangePolicy<Exec>(0, n * H), KOKKOS_LAMBDA(int64_t i) {
        const int64_t a = i / H, h = i - a * H;
        const int64_t s = slot(a);
        if (s >= 0) dst(s, h) = x(a / k, h);
      });
}

template <class Scalar, class Exec>
void MoeRows<Scalar, Exec>::combine(typename V::CMat y, Index slot, typename V::CVec gate, int64_t k,
                                    typename V::Mat out, bool accumulate) {
  const int64_t T = static_cast<int64_t>(out.extent(0)), H = static_cast<int64_t>(out.extent(1));
  SHARDFLOW_REQUIRE(static_cast<int64_t>(slot.extent(0)) == T * k && static_cast<int64_t>(gate.extent(0)) == T * k,
                    "MoeRows::combine: out ", T, "x", H, ", slot ", slot.extent(0), ", gate ", gate.extent(0));
  Kokkos::parallel_for(
      "shardflow::nn::moe_combine", Kokkos::RangePolicy<Exec>(0, T * H), KOKKOS_LAMBDA(int64_t i) {
        const int64_t t = i / H, h = i - t * H;
        Scalar acc = accumulate ? out(t, h) : Scalar(0);
        for (int64_t j = 0; j < k; ++j) {
          const int64_t s = slot(t * k + j);
          if (s >= 0) acc += gate(t * k + j) * y(s, h);
        }
        out(t, h) = acc;
      });
}

template <class Scalar, class Exec>
void MoeRows<Scalar, Exec>::combine_backward(typename V::CMat dout, Index slot, typename V::CVec gate, int64_t k,
                                             typename V::Mat dy) {
  const int64_t n = static_cast<int64_t>(slot.extent(0)), H = static_cast<int64_t>(dout.extent(1));
  Kokkos::parallel_for(
      "shardflow::nn::moe_combine_backward", Kokkos::RangePolicy<Exec>(0, n * H), KOKKOS_LAMBDA(int64_t i) {
        const int64_t a = i / H, h = i - a * H;
        const int64_t s = slot(a);
        if (s >= 0) dy(s, h) = gate(a) * dout(a / k, h);
      });
}

template <class Scalar, class Exec>
void MoeRows<Scalar, Exec>::gate_grad(typename V::CMat dout, typename V::CMat y, Index slot, int64_t k,
                                      typename V::Vec dgate) {
  const int64_t n = static_cast<int64_t>(slot.extent(0)), H = static_cast<int64_t>(dout.extent(1));
  Kokkos::parallel_for(
      "shardflow::nn::moe_gate_grad", Kokkos::RangePolicy<Exec>(0, n), KOKKOS_LAMBDA(int64_t a) {
        const int64_t s = slot(a);
        Scalar acc = 0;
        if (s >= 0)
          for (int64_t h = 0; h < H; ++h) acc += dout(a / k, h) * y(s, h);
        dgate(a) = acc;
      });
}

template <class Scalar, class Exec>
void MoeRows<Scalar, Exec>::dispatch_backward(typename V::CMat dxr, Index slot, int64_t k, typename V::Mat dx,
                                              bool accumulate) {
  const int64_t T = static_cast<int64_t>(dx.extent(0)), H = static_cast<int64_t>(dx.extent(1));
  Kokkos::parallel_for(
      "shardflow::nn::moe_dispatch_backward", Kokkos::RangePolicy<Exec>(0, T * H), KOKKOS_LAMBDA(int64_t i) {
        const int64_t t = i / H, h = i - t * H;
        Scalar acc = accumulate ? dx(t, h) : Scalar(0);
        for (int64_t j = 0; j < k; ++j) {
          const int64_t s = slot(t * k + j);
          if (s >= 0) acc += dxr(s, h);
        }
        dx(t, h) = acc;
      });
}

template struct MoeRows<float>;
template struct MoeRows<double>;

}  // namespace shardflow::nn
