// The MoE router of the training step (nn/moe.hpp): decisions follow the documented rules
// (top-k by probability, gates renormalised, capacity per sequence in (choice, position)
// order, sequence-wise load-balancing loss), and moe_route_backward is the gradient of
// Σ gate·dgate + aux_scale·aux (central finite differences on the logits). The row
// kernels match element loops.
#include <gtest/gtest.h>

#include <Kokkos_Core.hpp>
#include <cmath>
#include <random>

#include "nn/moe.hpp"

using namespace shardflow;

namespace {

nn::MoeConfig config() {
  nn::MoeConfig c;
  c.experts = 4;
  c.top_k = 2;
  c.seq = 6;
  c.capacity_factor = 1.0;  // C = ceil(6·2/4) = 3 choices per expert and sequence
  c.aux_coef = 0.05;
  return c;
}

std::vector<float> random_logits(int64_t n, uint32_t seed, double scale) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(d(gen));
  return v;
}

}  // namespace

TEST(TrainMoe, RoutingFollowsTheRules) {
  const auto c = config();
  const int64_t T = 12, E = c.experts, k = c.top_k;
  auto z = random_logits(T * E, 3, 1.0);
  // make every token of the first sequence prefer expert 2 first: capacity must drop some
  for (int64_t t = 0; t < 6; ++t) z[static_cast<size_t>(t * E + 2)] = 5.0f;
  const auto r = nn::moe_route(z.data(), T, c);
  EXPECT_EQ(c.capacity(), 3);
  for (int64_t t = 0; t < T; ++t) {
    const int32_t a = r.expert[static_cast<size_t>(t * k)], b = r.expert[static_cast<size_t>(t * k + 1)];
    EXPECT_NE(a, b);
    for (int64_t e = 0; e < E; ++e) {
      if (e == a) continue;
      EXPECT_GE(r.probs[static_cast<size_t>(t * E + a)], r.probs[static_cast<size_t>(t * E + e)]);
    }
    const double pa = r.probs[static_cast<size_t>(t * E + a)], pb = r.probs[static_cast<size_t>(t * E + b)];
    EXPECT_NEAR(r.gate[static_cast<size_t>(t * k)], pa / (pa + pb), 1e-6);
    EXPECT_NEAR(r.gate[static_cast<size_t>(t * k)] + r.gate[static_cast<size_t>(t * k + 1)], 1.0, 1e-6);
  }
  // sequence 0: positions 0..2 keep their first choice (expert 2), 3..5 lose it
  for (int64_t t = 0; t < 6; ++t) EXPECT_EQ(r.kept[static_cast<size_t>(t * k)], t < 3 ? 1 : 0) << "position " << t;
  int64_t dropped = 0;
  for (auto kk : r.kept) dropped += kk == 0;
  EXPECT_EQ(dropped, r.dropped);
  EXPECT_GE(r.dropped, 3);
  // aux: recomputed from its definition
  double aux = 0;
  for (int64_t q = 0; q < T / c.seq; ++q) {
    double s = 0;
    for (int64_t e = 0; e < E; ++e) {
      double f = 0, P = 0;
      for (int64_t t = q * c.seq; t < (q + 1) * c.seq; ++t) {
        for (int64_t j = 0; j < k; ++j) f += r.expert[static_cast<size_t>(t * k + j)] == e;
        P += r.probs[static_cast<size_t>(t * E + e)];
      }
      s += f / double(c.seq * k) * P / double(c.seq);
    }
    aux += c.aux_coef * double(E) * s;
  }
  EXPECT_NEAR(r.aux, aux, 1e-9);
}

TEST(TrainMoe, RouterBackwardMatchesFiniteDifferences) {
  const auto c = config();
  const int64_t T = 12, E = c.experts, k = c.top_k;
  const auto z = random_logits(T * E, 7, 1.0);
  const auto r = nn::moe_route(z.data(), T, c);
  std::vector<float> dgate = random_logits(T * k, 11, 1.0);
  for (size_t a = 0; a < dgate.size(); ++a)
    if (!r.kept[a]) dgate[a] = 0.0f;
  const double aux_scale = 0.7;
  std::vector<float> dz(static_cast<size_t>(T * E));
  nn::moe_route_backward(r, dgate.data(), aux_scale, c, dz.data());
  // L(z) = Σ_a dgate[a] · gate_a(z) + aux_scale · aux(z), with the decisions of z held fixed
  auto L = [&](const std::vector<float>& zz) {
    const auto q = nn::moe_route(zz.data(), T, c);
    for (size_t a = 0; a < q.expert.size(); ++a) EXPECT_EQ(q.expert[a], r.expert[a]) << "selection changed";
    double v = aux_scale * q.aux;
    for (size_t a = 0; a < q.gate.size(); ++a) v += static_cast<double>(dgate[a]) * q.gate[a];
    return v;
  };
  const float eps = 1e-2f;
  double worst = 0;
  for (size_t i = 0; i < z.size(); ++i) {
    auto zp = z, zm = z;
    zp[i] += eps;
    zm[i] -= eps;
    const double fd = (L(zp) - L(zm)) / (2.0 * eps);
    worst = std::max(worst, std::abs(fd - dz[i]));
    EXPECT_NEAR(dz[i], fd, 2e-3 + 2e-2 * std::abs(fd)) << "logit " << i;
  }
  EXPECT_LT(worst, 5e-3);
}

TEST(TrainMoe, RowKernelsMatchLoops) {
  using Rows = nn::MoeRows<double>;
  const int64_t T = 5, H = 3, k = 2;
  std::vector<int64_t> slot = {0, 3, -1, 1, 4, -1, 2, 5, 6, -1};  // choice a -> row
  const int64_t N = 7;
  Kokkos::View<int64_t*, Kokkos::HostSpace> sv(slot.data(), slot.size());
  auto ds = Kokkos::create_mirror_view_and_copy(Kokkos::DefaultExecutionSpace::memory_space(), sv);
  auto x = random_logits(T * H, 1, 1.0), y = random_logits(N * H, 2, 1.0), g = random_logits(T * k, 3, 1.0);
  using V = nn::ViewTypes<double>;
  V::OwnedMat dx("x", T, H), dy("y", N, H), dout("out", T, H), dd("dst", N, H);
  V::OwnedVec dg("g", T * k), dgg("dg", T * k);
  auto hx = Kokkos::create_mirror_view(dx), hy = Kokkos::create_mirror_view(dy);
  auto hg = Kokkos::create_mirror_view(dg);
  for (int64_t i = 0; i < T * H; ++i) hx(i / H, i % H) = x[static_cast<size_t>(i)];
  for (int64_t i = 0; i < N * H; ++i) hy(i / H, i % H) = y[static_cast<size_t>(i)];
  for (int64_t i = 0; i < T * k; ++i) hg(i) = g[static_cast<size_t>(i)];
  Kokkos::deep_copy(dx, hx);
  Kokkos::deep_copy(dy, hy);
  Kokkos::deep_copy(dg, hg);
  Rows::Index idx(ds.data(), ds.extent(0));
  Kokkos::deep_copy(dd, 0.0);
  Rows::dispatch(dx, idx, k, dd);
  Rows::combine(dy, idx, dg, k, dout, false);
  Rows::gate_grad(dx, dy, idx, k, dgg);
  auto hd = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dd);
  auto ho = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dout);
  auto hgg = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dgg);
  for (int64_t a = 0; a < T * k; ++a) {
    const int64_t s = slot[static_cast<size_t>(a)];
    double dot = 0;
    for (int64_t h = 0; h < H; ++h) {
      if (s < 0) continue;
      EXPECT_EQ(hd(s, h), hx(a / k, h));
      dot += hx(a / k, h) * hy(s, h);
    }
    EXPECT_NEAR(hgg(a), dot, 1e-12);
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      double want = 0;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t s = slot[static_cast<size_t>(t * k + j)];
        if (s >= 0) want += hg(t * k + j) * hy(s, h);
      }
      EXPECT_NEAR(ho(t, h), want, 1e-12);
    }
  // backward of dispatch: dx[t] = Σ_j dxr[slot]
  V::OwnedMat back("back", T, H);
  Rows::dispatch_backward(dy, idx, k, back, false);
  auto hb = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), back);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      double want = 0;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t s = slot[static_cast<size_t>(t * k + j)];
        if (s >= 0) want += hy(s, h);
      }
      EXPECT_NEAR(hb(t, h), want, 1e-12);
    }
}
