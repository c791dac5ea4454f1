// Model-math kernels: every backward against central finite differences in f64, every
// forward against a plain-loop reference, the sharded variants (column slice, row slice
// + sum, head range, vocabulary slices) against the unsharded results, determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.hpp"
#include "nn/kernels.hpp"
#include "nn/nn_test_util.hpp"
#include "nn/philox.hpp"

namespace {
using namespace shardflow::test::nn;
using Lin = shardflow::nn::Linear<double>;
using Norm = shardflow::nn::RmsNorm<double>;
using Swi = shardflow::nn::SwiGlu<double>;
using Attn = shardflow::nn::Attention<double>;
using CE = shardflow::nn::CrossEntropy<double>;
using Emb = shardflow::nn::Embedding<double>;
using Pos = shardflow::nn::PositionEmbedding<double>;
using Res = shardflow::nn::Residual<double>;
using HTen3 = Kokkos::View<double***, Kokkos::LayoutRight, Kokkos::HostSpace>;

// ---- Linear ------------------------------------------------------------------------------
TEST(NnLinear, ForwardMatchesLoops) {
  std::mt19937_64 rng(1);
  HMat x = rand_mat(5, 7, rng), w = rand_mat(4, 7, rng), y("y", 5, 4);
  Lin::forward(x, w, y);
  for (int t = 0; t < 5; ++t)
    for (int o = 0; o < 4; ++o) {
      double s = 0;
      for (int i = 0; i < 7; ++i) s += x(t, i) * w(o, i);
      EXPECT_NEAR(y(t, o), s, 1e-13);
    }
  HMat y0("y0", 5, 4);
  Kokkos::deep_copy(y0, y);
  Lin::forward(x, w, y, /*accumulate=*/true);
  for (int t = 0; t < 5; ++t)
    for (int o = 0; o < 4; ++o) EXPECT_NEAR(y(t, o), 2 * y0(t, o), 1e-13);
}

TEST(NnLinear, BackwardMatchesFiniteDifferences) {
  std::mt19937_64 rng(2);
  HMat x = rand_mat(6, 5, rng), w = rand_mat(3, 5, rng), wy = rand_mat(6, 3, rng), y("y", 6, 3);
  HMat dx("dx", 6, 5), dw("dw", 3, 5);
  Lin::backward_input(wy, w, dx);
  Lin::backward_weight(wy, x, dw);
  auto f = [&] {
    Lin::forward(x, w, y);
    return dot(wy, y);
  };
  check_fd("linear dx", x, dx, f);
  check_fd("linear dw", w, dw, f);
  // accumulate adds
  HMat dw2("dw2", 3, 5);
  Kokkos::deep_copy(dw2, dw);
  Lin::backward_weight(wy, x, dw2, true);
  for (int o = 0; o < 3; ++o)
    for (int i = 0; i < 5; ++i) EXPECT_NEAR(dw2(o, i), 2 * dw(o, i), 1e-13);
}

TEST(NnLinear, ColumnAndRowParallelShardsEqualUnsharded) {
  std::mt19937_64 rng(3);
  const int T = 6, in = 9, out = 7;
  HMat x = rand_mat(T, in, rng), w = rand_mat(out, in, rng), dy = rand_mat(T, out, rng);
  HMat y("y", T, out), dx("dx", T, in), dw("dw", out, in);
  Lin::forward(x, w, y);
  Lin::backward_input(dy, w, dx);
  Lin::backward_weight(dy, x, dw);
  // column-parallel: weight rows [0,4), [4,7) (uneven) -> output features of each shard
  HMat dx_sum("dx_sum", T, in);
  for (auto [r0, r1] : std::vector<std::pair<int, int>>{{0, 4}, {4, 7}}) {
    HMat wl = rows(w, r0, r1), yl("yl", T, r1 - r0), dyl = cols(dy, r0, r1), dwl("dwl", r1 - r0, in);
    Lin::forward(x, wl, yl);
    EXPECT_LT(max_abs_diff(yl, cols(y, r0, r1)), 1e-13);
    Lin::backward_input(dyl, wl, dx_sum, /*accumulate=*/true);  // partial sums: the caller all-reduces
    Lin::backward_weight(dyl, x, dwl);
    EXPECT_LT(max_abs_diff(dwl, rows(dw, r0, r1)), 1e-13);
  }
  EXPECT_LT(max_abs_diff(dx_sum, dx), 1e-12);
  // row-parallel: weight columns [0,5), [5,9), x the matching feature slice; y partial sums
  HMat y_sum("y_sum", T, out);
  for (auto [c0, c1] : std::vector<std::pair<int, int>>{{0, 5}, {5, 9}}) {
    HMat wl = cols(w, c0, c1), xl = cols(x, c0, c1), dxl("dxl", T, c1 - c0), dwl("dwl", out, c1 - c0);
    Lin::forward(xl, wl, y_sum, /*accumulate=*/true);
    Lin::backward_input(dy, wl, dxl);
    Lin::backward_weight(dy, xl, dwl);
    EXPECT_LT(max_abs_diff(dxl, cols(dx, c0, c1)), 1e-13);
    EXPECT_LT(max_abs_diff(dwl, cols(dw, c0, c1)), 1e-13);
  }
  EXPECT_LT(max_abs_diff(y_sum, y), 1e-12);
}

TEST(NnLinear, ShapeMismatchThrowsNamingExtents) {
  HMat x("x", 3, 4), w("w", 2, 5), y("y", 3, 2);
  try {
    Lin::forward(x, w, y);
    FAIL() << "expected an Error";
  } catch (const shardflow::Error& e) {
    EXPECT_NE(std::string(e.what()).find("w is [2, 5]"), std::string::npos) << e.what();
  }
}

TEST(NnLinear, EmptyShardsAreFine) {
  std::mt19937_64 rng(4);
  HMat x = rand_mat(3, 4, rng), w("w", 0, 4), y("y", 3, 0), dx("dx", 3, 4), dw("dw", 0, 4);
  Lin::forward(x, w, y);
  Kokkos::deep_copy(dx, 5.0);
  Lin::backward_input(y, w, dx);  // K = 0: overwrite with zeros
  for (int t = 0; t < 3; ++t)
    for (int i = 0; i < 4; ++i) EXPECT_EQ(dx(t, i), 0.0);
  Lin::backward_weight(y, x, dw);
}

// ---- RmsNorm -----------------------------------------------------------------------------
TEST(NnRmsNorm, ForwardMatchesDefinition) {
  std::mt19937_64 rng(5);
  HMat x = rand_mat(4, 6, rng), y("y", 4, 6);
  HVec g = rand_vec(6, rng, 0.3, 1.0), rstd("rstd", 4);
  Norm::forward(x, g, y, rstd);
  for (int t = 0; t < 4; ++t) {
    double ms = 0;
    for (int j = 0; j < 6; ++j) ms += x(t, j) * x(t, j) / 6.0;
    for (int j = 0; j < 6; ++j) EXPECT_NEAR(y(t, j), x(t, j) / std::sqrt(ms + 1e-5) * g(j), 1e-13);
  }
}

TEST(NnRmsNorm, BackwardMatchesFiniteDifferences) {
  std::mt19937_64 rng(6);
  const int T = 5, H = 7;
  HMat x = rand_mat(T, H, rng), wy = rand_mat(T, H, rng), y("y", T, H), dx("dx", T, H);
  HVec g = rand_vec(H, rng, 0.3, 1.0), rstd("rstd", T), dg("dg", H);
  Norm::forward(x, g, y, rstd);
  Norm::backward(wy, x, g, rstd, dx, dg);
  auto f = [&] {
    Norm::forward(x, g, y, rstd);
    return dot(wy, y);
  };
  check_fd("rmsnorm dx", x, dx, f);
  check_fd("rmsnorm dg", g, dg, f);
  // accumulate flags add onto what is there
  Norm::forward(x, g, y, rstd);
  HMat dx2("dx2", T, H);
  HVec dg2("dg2", H);
  Kokkos::deep_copy(dx2, dx);
  Kokkos::deep_copy(dg2, dg);
  Norm::backward(wy, x, g, rstd, dx2, dg2, true, true);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < H; ++j) EXPECT_NEAR(dx2(t, j), 2 * dx(t, j), 1e-12);
  for (int j = 0; j < H; ++j) EXPECT_NEAR(dg2(j), 2 * dg(j), 1e-12);
}

// ---- SwiGlu ------------------------------------------------------------------------------
TEST(NnSwiGlu, ForwardBackwardAndShards) {
  std::mt19937_64 rng(7);
  const int T = 4, F = 5;
  HMat gu = rand_mat(T, 2 * F, rng, 2.0), h("h", T, F), wy = rand_mat(T, F, rng), dgu("dgu", T, 2 * F);
  Swi::forward(gu, h);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < F; ++j) {
      const double z = gu(t, j);
      EXPECT_NEAR(h(t, j), z / (1 + std::exp(-z)) * gu(t, F + j), 1e-13);
    }
  Swi::backward(wy, gu, dgu);
  check_fd("swiglu dgu", gu, dgu, [&] {
    Swi::forward(gu, h);
    return dot(wy, h);
  });
  // a shard of F: gu_local = [gate cols | up cols] of the same feature range
  const int f0 = 2, f1 = 5;
  HMat gul("gul", T, 2 * (f1 - f0)), hl("hl", T, f1 - f0), dgul("dgul", T, 2 * (f1 - f0));
  for (int t = 0; t < T; ++t)
    for (int j = f0; j < f1; ++j) {
      gul(t, j - f0) = gu(t, j);
      gul(t, (f1 - f0) + j - f0) = gu(t, F + j);
    }
  Swi::forward(gul, hl);
  Swi::backward(cols(wy, f0, f1), gul, dgul);
  Swi::forward(gu, h);
  for (int t = 0; t < T; ++t)
    for (int j = f0; j < f1; ++j) {
      EXPECT_EQ(hl(t, j - f0), h(t, j));
      EXPECT_EQ(dgul(t, j - f0), dgu(t, j));
      EXPECT_EQ(dgul(t, (f1 - f0) + j - f0), dgu(t, F + j));
    }
}

// ---- Attention ---------------------------------------------------------------------------
/// The documented mask, one Philox call per element: keep (i, j) of sequence g, head h iff
/// word (i·S + j) mod 4 of Philox4x32-10(((i·S + j) / 4, g·2³² + h), key) >= round(p·2³²).
bool keep_ref(double p, uint64_t key, int64_t g, int64_t h, int64_t S, int64_t i, int64_t j) {
  const uint64_t e = static_cast<uint64_t>(i * S + j), blk = e / 4;
  const uint32_t c[4] = {static_cast<uint32_t>(blk), static_cast<uint32_t>(blk >> 32), static_cast<uint32_t>(h),
                         static_cast<uint32_t>(g)};
  const uint32_t k[2] = {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
  uint32_t w[4];
  shardflow::nn::Philox4x32::generate(c, k, w);
  return static_cast<double>(w[e % 4]) >= std::round(p * 4294967296.0);
}

/// Plain-loop causal attention for heads [0, A) of a [T, 3·A·D] qkv; with `d`, dropout on the
/// probabilities (global sequence d->seq0 + b, global head d->head0 + a).
HMat attention_reference(const HMat& qkv, int S, int A, int D, const shardflow::nn::AttnDropout* d = nullptr) {
  const int T = static_cast<int>(qkv.extent(0)), HD = A * D;
  HMat out("ref", T, HD);
  for (int b = 0; b < T / S; ++b)
    for (int a = 0; a < A; ++a)
      for (int i = 0; i < S; ++i) {
        std::vector<double> s(static_cast<size_t>(i + 1));
        double m = -1e300;
        for (int j = 0; j <= i; ++j) {
          double dot = 0;
          for (int e = 0; e < D; ++e) dot += qkv(b * S + i, a * D + e) * qkv(b * S + j, HD + a * D + e);
          s[static_cast<size_t>(j)] = dot / std::sqrt(static_cast<double>(D));
          m = std::max(m, s[static_cast<size_t>(j)]);
        }
        double z = 0;
        for (auto& v : s) z += (v = std::exp(v - m));
        for (int j = 0; j <= i; ++j)
          if (d)
            s[static_cast<size_t>(j)] *=
                keep_ref(d->p, d->key, d->seq0 + b, d->head0 + a, S, i, j) ? 1 / (1 - d->p) : 0;
        for (int e = 0; e < D; ++e) {
          double o = 0;
          for (int j = 0; j <= i; ++j) o += s[static_cast<size_t>(j)] / z * qkv(b * S + j, 2 * HD + a * D + e);
          out(b * S + i, a * D + e) = o;
        }
      }
  return out;
}

TEST(NnAttention, ForwardMatchesReference) {
  std::mt19937_64 rng(8);
  const int B = 2, S = 6, A = 3, D = 4, T = B * S;
  HMat qkv = rand_mat(T, 3 * A * D, rng, 1.5), out("out", T, A * D);
  HTen3 probs("probs", B * A + 1, S, S);  // workspace may be larger than needed
  Attn::forward(qkv, A, probs, out);
  EXPECT_LT(max_abs_diff(out, attention_reference(qkv, S, A, D)), 1e-13);
  for (int i = 0; i < B * A; ++i)
    for (int r = 0; r < S; ++r) {
      double sum = 0;
      for (int c = 0; c < S; ++c) sum += probs(i, r, c);
      EXPECT_NEAR(sum, 1.0, 1e-14);
      for (int c = r + 1; c < S; ++c) EXPECT_EQ(probs(i, r, c), 0.0);
    }
}

TEST(NnAttention, StableForLargeScores) {
  const int S = 3, A = 1, D = 2;
  HMat qkv("qkv", S, 3 * A * D), out("out", S, A * D);
  for (int t = 0; t < S; ++t)
    for (int j = 0; j < 3 * D; ++j) qkv(t, j) = 400.0 * (t + 1) * (j % 2 ? -1 : 1);
  HTen3 probs("probs", A, S, S);
  Attn::forward(qkv, A, probs, out);
  for (int t = 0; t < S; ++t)
    for (int j = 0; j < D; ++j) EXPECT_TRUE(std::isfinite(out(t, j)));
  EXPECT_LT(max_abs_diff(out, attention_reference(qkv, S, A, D)), 1e-9);
}

TEST(NnAttention, BackwardMatchesFiniteDifferences) {
  std::mt19937_64 rng(9);
  const int B = 2, S = 5, A = 2, D = 3, T = B * S;
  HMat qkv = rand_mat(T, 3 * A * D, rng), out("out", T, A * D), wy = rand_mat(T, A * D, rng);
  HMat dqkv("dqkv", T, 3 * A * D), dprobs("dprobs", S, S);
  HTen3 probs("probs", B * A, S, S);
  Attn::forward(qkv, A, probs, out);
  Attn::backward(wy, qkv, probs, A, dprobs, dqkv);
  check_fd("attention dqkv", qkv, dqkv, [&] {
    Attn::forward(qkv, A, probs, out);
    return dot(wy, out);
  });
}

TEST(NnAttention, LongSequencesUseCausalBlocksCorrectly) {
  // S above the causal block size (64) with a ragged last block: forward against the
  // reference, backward against finite differences, accumulation doubles.
  std::mt19937_64 rng(16);
  const int B = 1, S = 131, A = 1, D = 2, T = B * S;
  HMat qkv = rand_mat(T, 3 * A * D, rng), out("out", T, A * D), wy = rand_mat(T, A * D, rng);
  HMat dqkv("dqkv", T, 3 * A * D), dprobs("dprobs", S, S);
  HTen3 probs("probs", B * A, S, S);
  Attn::forward(qkv, A, probs, out);
  EXPECT_LT(max_abs_diff(out, attention_reference(qkv, S, A, D)), 1e-13);
  for (int r = 0; r < S; ++r)
    for (int c = r + 1; c < S; ++c) ASSERT_EQ(probs(0, r, c), 0.0);
  Attn::backward(wy, qkv, probs, A, dprobs, dqkv);
  check_fd("attention dqkv (S = 131)", qkv, dqkv, [&] {
    Attn::forward(qkv, A, probs, out);
    return dot(wy, out);
  });
  Attn::forward(qkv, A, probs, out);
  HMat twice("twice", T, 3 * A * D);
  Kokkos::deep_copy(twice, dqkv);
  Attn::backward(wy, qkv, probs, A, dprobs, twice, /*accumulate=*/true);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < 3 * A * D; ++c) ASSERT_NEAR(twice(t, c), 2 * dqkv(t, c), 1e-12);
}

TEST(NnAttention, HeadRangeShardsEqualUnsharded) {
  std::mt19937_64 rng(10);
  const int B = 2, S = 4, A = 5, D = 3, T = B * S, HD = A * D;
  HMat qkv = rand_mat(T, 3 * HD, rng), out("out", T, HD), dout = rand_mat(T, HD, rng), dqkv("dqkv", T, 3 * HD);
  HTen3 probs("probs", B * A, S, S);
  HMat dprobs("dprobs", S, S);
  Attn::forward(qkv, A, probs, out);
  Attn::backward(dout, qkv, probs, A, dprobs, dqkv);
  // heads split 5 over 2 ranks by the uneven rule: [0,3), [3,5)
  for (auto [a0, a1] : std::vector<std::pair<int, int>>{{0, 3}, {3, 5}}) {
    const int al = a1 - a0;
    HMat ql("ql", T, 3 * al * D), ol("ol", T, al * D), dql("dql", T, 3 * al * D);
    for (int t = 0; t < T; ++t)
      for (int blk = 0; blk < 3; ++blk)
        for (int c = 0; c < al * D; ++c) ql(t, blk * al * D + c) = qkv(t, blk * HD + a0 * D + c);
    HTen3 pl("pl", B * al, S, S);
    Attn::forward(ql, al, pl, ol);
    EXPECT_LT(max_abs_diff(ol, cols(out, a0 * D, a1 * D)), 1e-14);
    Attn::backward(cols(dout, a0 * D, a1 * D), ql, pl, al, dprobs, dql);
    for (int t = 0; t < T; ++t)
      for (int blk = 0; blk < 3; ++blk)
        for (int c = 0; c < al * D; ++c) EXPECT_NEAR(dql(t, blk * al * D + c), dqkv(t, blk * HD + a0 * D + c), 1e-14);
  }
}

// ---- Attention dropout -------------------------------------------------------------------
TEST(NnAttention, DropoutForwardMatchesReference) {
  // S = 131: causal blocks of 64 with a ragged last one, rows that start inside a 4-element
  // Philox block; global sequence and head offsets as on a sharded rank
  std::mt19937_64 rng(31);
  const int B = 2, S = 131, A = 2, D = 3, T = B * S;
  const shardflow::nn::AttnDropout d{0.3, shardflow::nn::attention_dropout_key(7, 3, 2), 5, 3};
  HMat qkv = rand_mat(T, 3 * A * D, rng, 1.5), out("out", T, A * D), scratch("scratch", S, S);
  HTen3 probs("probs", B * A, S, S);
  Attn::forward(qkv, A, probs, out, shardflow::DType::F32, shardflow::nn::KvMap{}, d, scratch);
  EXPECT_LT(max_abs_diff(out, attention_reference(qkv, S, A, D, &d)), 1e-12);
  // probs keeps the probabilities before dropout (the backward's softmax needs them)
  HMat plain("plain", T, A * D);
  HTen3 pp("pp", B * A, S, S);
  Attn::forward(qkv, A, pp, plain);
  for (int i = 0; i < B * A; ++i)
    for (int r = 0; r < S; ++r)
      for (int c = 0; c < S; ++c) ASSERT_EQ(probs(i, r, c), pp(i, r, c));
  EXPECT_GT(max_abs_diff(out, plain), 1e-3);
  // the mask as the kernels make it, whole rows crossing Philox blocks, is the definition's
  const auto m = shardflow::nn::attention_dropout_mask(d, 1, 1, S);
  for (int i = 0; i < S; ++i)
    for (int j = 0; j < S; ++j)
      ASSERT_EQ(m[static_cast<size_t>(i * S + j)], keep_ref(d.p, d.key, d.seq0 + 1, d.head0 + 1, S, i, j) ? 1 : 0);
}

TEST(NnAttention, DropoutBackwardMatchesFiniteDifferences) {
  std::mt19937_64 rng(32);
  const int B = 2, S = 70, A = 2, D = 2, T = B * S;
  const shardflow::nn::AttnDropout d{0.25, shardflow::nn::attention_dropout_key(1, 1, 0), 0, 1};
  HMat qkv = rand_mat(T, 3 * A * D, rng), out("out", T, A * D), wy = rand_mat(T, A * D, rng);
  HMat dqkv("dqkv", T, 3 * A * D), dprobs("dprobs", S, S);
  HTen3 probs("probs", B * A, S, S);
  const shardflow::nn::KvMap mha{};
  Attn::forward(qkv, A, probs, out, shardflow::DType::F32, mha, d, dprobs);
  Attn::backward(wy, qkv, probs, A, dprobs, dqkv, false, shardflow::DType::F32, mha, d);
  check_fd("attention dqkv with dropout", qkv, dqkv, [&] {
    Attn::forward(qkv, A, probs, out, shardflow::DType::F32, mha, d, dprobs);
    return dot(wy, out);
  });
}

TEST(NnAttention, DropoutKeepsOneMinusPOfEachStream) {
  // every (sequence, head) stream and step keeps about 1 - p (5 sigma), and the streams differ
  const int S = 256;
  for (double p : {0.1, 0.5}) {
    std::vector<std::vector<uint8_t>> masks;
    for (int64_t step : {1, 2})
      for (int64_t g : {0, 1})
        for (int64_t h : {0, 1}) {
          const shardflow::nn::AttnDropout d{p, shardflow::nn::attention_dropout_key(11, step, 0), 0, 0};
          masks.push_back(shardflow::nn::attention_dropout_mask(d, g, h, S));
          double kept = 0;
          for (uint8_t k : masks.back()) kept += k;
          const double n = S * S, sigma = std::sqrt(n * p * (1 - p));
          EXPECT_NEAR(kept, n * (1 - p), 5 * sigma) << "p " << p << " step " << step << " seq " << g << " head " << h;
        }
    for (size_t a = 0; a < masks.size(); ++a)
      for (size_t b = a + 1; b < masks.size(); ++b) EXPECT_NE(masks[a], masks[b]) << "streams " << a << " and " << b;
  }
}

TEST(NnAttention, DropoutMasksAreMadeInBatchesOf64) {
  // rows 0-63 of a 128-row triangle need one batch of 16 Philox blocks, rows 64-127 two
  EXPECT_EQ(shardflow::nn::attention_dropout_generated(128), 64 * 64 + 64 * 128);
  EXPECT_EQ(shardflow::nn::attention_dropout_generated(1), 64);
  const double S = 2048, made = static_cast<double>(shardflow::nn::attention_dropout_generated(2048));
  EXPECT_GT(made, S * (S + 1) / 2);
  EXPECT_LT(made, 1.04 * S * (S + 1) / 2);
}

TEST(NnAttention, DropoutHeadRangeShardsEqualUnsharded) {
  std::mt19937_64 rng(33);
  const int B = 2, S = 9, A = 5, D = 3, T = B * S, HD = A * D;
  const auto key = shardflow::nn::attention_dropout_key(3, 4, 1);
  const shardflow::nn::KvMap mha{};
  HMat qkv = rand_mat(T, 3 * HD, rng), out("out", T, HD), dout = rand_mat(T, HD, rng), dqkv("dqkv", T, 3 * HD);
  HTen3 probs("probs", B * A, S, S);
  HMat dprobs("dprobs", S, S);
  Attn::forward(qkv, A, probs, out, shardflow::DType::F32, mha, {0.2, key, 0, 0}, dprobs);
  Attn::backward(dout, qkv, probs, A, dprobs, dqkv, false, shardflow::DType::F32, mha, {0.2, key, 0, 0});
  for (auto [a0, a1] : std::vector<std::pair<int, int>>{{0, 3}, {3, 5}}) {
    const int al = a1 - a0;
    const shardflow::nn::AttnDropout d{0.2, key, 0, a0};
    HMat ql("ql", T, 3 * al * D), ol("ol", T, al * D), dql("dql", T, 3 * al * D);
    for (int t = 0; t < T; ++t)
      for (int blk = 0; blk < 3; ++blk)
        for (int c = 0; c < al * D; ++c) ql(t, blk * al * D + c) = qkv(t, blk * HD + a0 * D + c);
    HTen3 pl("pl", B * al, S, S);
    Attn::forward(ql, al, pl, ol, shardflow::DType::F32, mha, d, dprobs);
    EXPECT_LT(max_abs_diff(ol, cols(out, a0 * D, a1 * D)), 1e-14);
    Attn::backward(cols(dout, a0 * D, a1 * D), ql, pl, al, dprobs, dql, false, shardflow::DType::F32, mha, d);
    for (int t = 0; t < T; ++t)
      for (int blk = 0; blk < 3; ++blk)
        for (int c = 0; c < al * D; ++c) EXPECT_NEAR(dql(t, blk * al * D + c), dqkv(t, blk * HD + a0 * D + c), 1e-14);
  }
}

TEST(NnAttention, DropoutRejectsBadProbabilityAndMissingScratch) {
  const int S = 4, A = 1, D = 2;
  HMat qkv("qkv", S, 3 * A * D), out("out", S, A * D), small("small", 2, 2);
  HTen3 probs("probs", A, S, S);
  const shardflow::nn::KvMap mha{};
  EXPECT_THROW(Attn::forward(qkv, A, probs, out, shardflow::DType::F32, mha, {1.0, 1, 0, 0}, small), shardflow::Error);
  try {
    Attn::forward(qkv, A, probs, out, shardflow::DType::F32, mha, {0.1, 1, 0, 0}, small);
    FAIL() << "no error";
  } catch (const shardflow::Error& e) {
    EXPECT_NE(std::string(e.what()).find("scratch"), std::string::npos) << e.what();
  }
}

// ---- Cross-entropy -----------------------------------------------------------------------
TEST(NnCrossEntropy, LossAndGradMatchReferenceAndFiniteDifferences) {
  std::mt19937_64 rng(11);
  const int T = 6, V = 9;
  HMat logits = rand_mat(T, V, rng, 3.0), dlogits("dl", T, V), stats("stats", T, 2);
  HVec row_max("rm", T);
  HTok tg = rand_tokens(T, V, rng);
  const double scale = 1.0 / T;
  const double loss = CE::forward_backward(logits, tg, scale, dlogits, row_max, stats);
  double ref = 0;
  for (int t = 0; t < T; ++t) {
    double z = 0;
    for (int v = 0; v < V; ++v) z += std::exp(logits(t, v));
    ref += std::log(z) - logits(t, tg(t));
  }
  EXPECT_NEAR(loss, ref, 1e-12);
  HMat dl_unused("u", 0, V);
  check_fd("cross-entropy dlogits", logits, dlogits,
           [&] { return scale * CE::forward_backward(logits, tg, scale, dl_unused, row_max, stats); });
  // in place: dlogits may be the logits buffer
  HMat inplace("inplace", T, V);
  Kokkos::deep_copy(inplace, logits);
  EXPECT_EQ(CE::forward_backward(inplace, tg, scale, inplace, row_max, stats), loss);
  EXPECT_EQ(max_abs_diff(inplace, dlogits), 0.0);
}

TEST(NnCrossEntropy, VocabParallelStepsEqualPlain) {
  std::mt19937_64 rng(12);
  const int T = 7, V = 11;
  HMat logits = rand_mat(T, V, rng, 4.0), dplain("dp", T, V), stats("stats", T, 2);
  HVec rm("rm", T);
  HTok tg = rand_tokens(T, V, rng);
  const double loss = CE::forward_backward(logits, tg, 0.5, dplain, rm, stats);
  const std::vector<std::pair<int, int>> slices{{0, 4}, {4, 8}, {8, 11}};  // 11 over 3 (uneven rule)
  // step 1 + all-reduce(MAX) by hand
  HVec gmax("gmax", T);
  Kokkos::deep_copy(gmax, -1e300);
  for (auto [v0, v1] : slices) {
    HVec lm("lm", T);
    CE::local_max(cols(logits, v0, v1), lm);
    for (int t = 0; t < T; ++t) gmax(t) = std::max(gmax(t), lm(t));
  }
  // step 2 + all-reduce(SUM) by hand
  HMat gstats("gstats", T, 2);
  for (auto [v0, v1] : slices) {
    HMat ls("ls", T, 2);
    CE::local_sumexp_target(cols(logits, v0, v1), gmax, tg, v0, ls);
    for (int t = 0; t < T; ++t) {
      gstats(t, 0) += ls(t, 0);
      gstats(t, 1) += ls(t, 1);
    }
  }
  // step 3 on every shard
  for (auto [v0, v1] : slices) {
    HMat ll = cols(logits, v0, v1), dl("dl", T, v1 - v0);
    const double shard_loss = CE::loss_and_grad(ll, gmax, gstats, tg, v0, 0.5, dl);
    EXPECT_NEAR(shard_loss, loss, 1e-12);
    EXPECT_LT(max_abs_diff(dl, cols(dplain, v0, v1)), 1e-15);
  }
}

TEST(NnCrossEntropy, RejectsTargetsOutsideVocabulary) {
  HMat logits("l", 2, 3), dl("dl", 2, 3), stats("s", 2, 2);
  HVec rm("rm", 2);
  HTok tg("tg", 2);
  tg(1) = 3;
  EXPECT_THROW(CE::forward_backward(logits, tg, 1.0, dl, rm, stats), shardflow::Error);
}

// ---- Embeddings --------------------------------------------------------------------------
TEST(NnEmbedding, GatherScatterFiniteDifferencesAndVocabShards) {
  std::mt19937_64 rng(13);
  const int S = 4, B = 3, T = B * S, V = 6, H = 5;
  HMat table = rand_mat(V, H, rng), pos = rand_mat(S, H, rng), x("x", T, H), wy = rand_mat(T, H, rng);
  HTok tok = rand_tokens(T, V, rng);
  tok(0) = tok(5) = tok(7) = 2;  // repeats
  Emb::forward(tok, table, 0, x);
  Pos::forward(pos, x);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < H; ++j) EXPECT_EQ(x(t, j), table(tok(t), j) + pos(t % S, j));
  HMat dtable("dtable", V, H), dpos("dpos", S, H);
  Emb::Scratch scratch(V, T);
  Emb::backward(tok, wy, 0, dtable, scratch);
  Pos::backward(wy, dpos);
  auto f = [&] {
    Emb::forward(tok, table, 0, x);
    Pos::forward(pos, x);
    return dot(wy, x);
  };
  check_fd("embedding dtable", table, dtable, f);
  check_fd("position dpos", pos, dpos, f);
  // vocabulary slices: forward partial sums add up, backward slices are rows of the full one
  HMat xsum("xsum", T, H);
  for (auto [v0, v1] : std::vector<std::pair<int, int>>{{0, 2}, {2, 4}, {4, 6}}) {
    HMat tl = rows(table, v0, v1), dtl("dtl", v1 - v0, H);
    Emb::forward(tok, tl, v0, xsum, /*accumulate=*/true);
    Emb::Scratch sl(v1 - v0, T);
    Emb::backward(tok, wy, v0, dtl, sl);
    EXPECT_EQ(max_abs_diff(dtl, rows(dtable, v0, v1)), 0.0);
  }
  Emb::forward(tok, table, 0, x);
  EXPECT_EQ(max_abs_diff(xsum, x), 0.0);
}

TEST(NnEmbedding, BackwardIsBitwiseDeterministicAndOrdered) {
  std::mt19937_64 rng(14);
  const int T = 200, V = 3, H = 4;
  Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace> dx("dx", T, H), d1("d1", V, H), d2("d2", V, H);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < H; ++j) dx(t, j) = nd(rng) * (t % 7 == 0 ? 1e4f : 1.f);  // rounding-order sensitive
  HTok tok = rand_tokens(T, V, rng);
  shardflow::nn::Embedding<float>::Scratch sc(V, T);
  shardflow::nn::Embedding<float>::backward(tok, dx, 0, d1, sc);
  shardflow::nn::Embedding<float>::backward(tok, dx, 0, d2, sc);
  EXPECT_EQ(0, std::memcmp(d1.data(), d2.data(), sizeof(float) * V * H));
  // the sum runs in increasing position: the same float result as a sequential loop
  for (int v = 0; v < V; ++v)
    for (int j = 0; j < H; ++j) {
      float s = 0;
      for (int t = 0; t < T; ++t)
        if (tok(t) == v) s += dx(t, j);
      EXPECT_EQ(d1(v, j), s);
    }
}

TEST(NnResidual, AddAndCopy) {
  std::mt19937_64 rng(15);
  HMat x = rand_mat(3, 4, rng), y = rand_mat(3, 4, rng), x0("x0", 3, 4), z("z", 3, 4);
  Res::copy(x, x0);
  Res::add(x, y);
  for (int t = 0; t < 3; ++t)
    for (int j = 0; j < 4; ++j) EXPECT_EQ(x(t, j), x0(t, j) + y(t, j));
  HMat bad("bad", 3, 5);
  EXPECT_THROW(Res::add(x, bad), shardflow::Error);
}

}  // namespace
