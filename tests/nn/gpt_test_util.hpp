#pragma once
// Shared by the reference-model tests (test_nn_gpt, test_nn_llama): parameters with more
// spread than the init, plain-loop matmul and RMSNorm for the transcriptions of the model
// definitions, and random token batches.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "nn/gpt.hpp"
#include "nn/init.hpp"
#include "nn/nn_test_util.hpp"

namespace shardflow::test::nn {

using Vd = std::vector<double>;

/// Parameters with more spread than the 0.02 init so every path matters numerically.
template <class Scalar>
void randomise(shardflow::nn::GptModel<Scalar>& m, uint64_t seed) {
  for (const auto& p : m.parameters()) {
    shardflow::nn::Init<Scalar>::fill(m.param(p.name), seed, p.name + "#test", p.shape, 0.4);
    if (shardflow::nn::is_norm_gain(p.name)) {
      auto v = m.param(p.name);
      for (size_t i = 0; i < v.extent(0); ++i)
        v(i) = static_cast<Scalar>(1.0 + 0.5 * shardflow::nn::init_value(seed, p.name + "#gain", int64_t(i), 1.0));
    }
  }
}

// y[t, o] = Σ_i x[t, i] w[o, i]
inline Vd matmul_t(const Vd& x, const double* w, int64_t rows, int64_t in, int64_t out) {
  Vd y(static_cast<size_t>(rows * out));
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * w[o * in + i];
      y[t * out + o] = s;
    }
  return y;
}
inline Vd rmsnorm(const Vd& x, const double* g, int64_t rows, int64_t h) {
  Vd y(x.size());
  for (int64_t t = 0; t < rows; ++t) {
    double ms = 0;
    for (int64_t j = 0; j < h; ++j) ms += x[t * h + j] * x[t * h + j];
    const double r = 1.0 / std::sqrt(ms / h + 1e-5);
    for (int64_t j = 0; j < h; ++j) y[t * h + j] = x[t * h + j] * r * g[j];
  }
  return y;
}

struct Tokens {
  HTok in, tg;
  std::vector<int32_t> vin, vtg;
};
inline Tokens make_tokens(int64_t n, int32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Tokens t{rand_tokens(n, vocab, rng), rand_tokens(n, vocab, rng), {}, {}};
  for (int64_t i = 0; i < n; ++i) {
    t.vin.push_back(t.in(i));
    t.vtg.push_back(t.tg(i));
  }
  return t;
}

/// MODEL.md's layer after the attention heads o: x += o · outᵀ, then the SwiGLU MLP on the
/// normalised x, added (P gives a parameter's values by name, p is the layer's prefix).
template <class Params>
void block_tail(Vd& x, const Vd& o, const Params& P, const std::string& p, int64_t T, int64_t H, int64_t F) {
  Vd ao = matmul_t(o, P(p + "attn.out.weight"), T, H, H);
  for (size_t i = 0; i < x.size(); ++i) x[i] += ao[i];
  Vd n = rmsnorm(x, P(p + "mlp_norm.weight"), T, H);
  Vd gu = matmul_t(n, P(p + "mlp.gate_up.weight"), T, H, 2 * F);
  Vd hh(static_cast<size_t>(T * F));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < F; ++j) {
      const double g = gu[t * 2 * F + j];
      hh[t * F + j] = g / (1 + std::exp(-g)) * gu[t * 2 * F + F + j];
    }
  Vd dn = matmul_t(hh, P(p + "mlp.down.weight"), T, F, H);
  for (size_t i = 0; i < x.size(); ++i) x[i] += dn[i];
}

/// The final norm, the head and the mean cross-entropy against the targets.
inline double head_loss(const Vd& x, const double* gain, const double* head, int64_t T, int64_t H, int64_t V,
                        const std::vector<int32_t>& tg) {
  Vd n = rmsnorm(x, gain, T, H);
  Vd lg = matmul_t(n, head, T, H, V);
  double loss = 0;
  for (int64_t t = 0; t < T; ++t) {
    double mx = -1e300, z = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, lg[t * V + v]);
    for (int64_t v = 0; v < V; ++v) z += std::exp(lg[t * V + v] - mx);
    loss += std::log(z) + mx - lg[t * V + tg[t]];
  }
  return loss / double(T);
}

}  // namespace shardflow::test::nn
