// The Llama family (docs/model.md) in the serial reference: the forward against a plain-loop
// transcription of docs/model.md (RoPE by its direct formula, grouped-query attention),
// every parameter's gradient against central finite differences (f64), RoPE's backward as
// the transpose of its forward, grouped-query attention equal to multi-head attention with
// duplicated key/value heads, and head-range shards of GQA attention equal to the unsharded.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.hpp"
#include "nn/gpt.hpp"
#include "nn/init.hpp"
#include "nn/kernels.hpp"
#include "nn/gpt_test_util.hpp"
#include "nn/nn_test_util.hpp"

namespace {
using namespace shardflow::test::nn;
using shardflow::nn::Attention;
using shardflow::nn::GptConfig;
using shardflow::nn::GptModel;
using shardflow::nn::KvMap;
using shardflow::nn::Rope;

GptConfig tiny_llama(int64_t heads = 4, int64_t kv = 2) {
  GptConfig c;
  c.llama = true;
  c.vocab = 7;
  c.seq = 5;
  c.hidden = 16;  // D = 4
  c.heads = heads;
  c.kv_heads = kv;
  c.ffn = 6;
  c.layers = 2;
  c.rope_theta = 50.0;  // large angles at these short positions
  return c;
}

// RoPE by its definition on one head vector v[0..D) at position p (rotate-half pairs)
void rope_direct(double* v, int64_t D, int64_t p, double theta) {
  for (int64_t i = 0; i < D / 2; ++i) {
    const double phi = double(p) / std::pow(theta, 2.0 * double(i) / double(D));
    const double a = v[i], b = v[i + D / 2];
    v[i] = a * std::cos(phi) - b * std::sin(phi);
    v[i + D / 2] = b * std::cos(phi) + a * std::sin(phi);
  }
}

/// docs/model.md's Llama forward, transcribed with plain loops.
double reference_loss(const GptModel<double>& m, const std::vector<int32_t>& in, const std::vector<int32_t>& tg) {
  const GptConfig& c = m.config();
  const int64_t T = static_cast<int64_t>(in.size()), S = c.seq, H = c.hidden, A = c.heads, D = H / A, F = c.ffn;
  const int64_t K = c.kv_count(), G = A / K;
  auto P = [&](const std::string& n) { return m.param(n).data(); };
  Vd x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < H; ++j) x[t * H + j] = P("embed.weight")[in[t] * H + j];
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    Vd n = rmsnorm(x, P(p + "attn_norm.weight"), T, H);
    Vd q = matmul_t(n, P(p + "attn.q.weight"), T, H, H);
    Vd kv = matmul_t(n, P(p + "attn.kv.weight"), T, H, 2 * K * D);  // [k heads | v heads]
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t a = 0; a < A; ++a) rope_direct(&q[t * H + a * D], D, t % S, c.rope_theta);
      for (int64_t g = 0; g < K; ++g) rope_direct(&kv[t * 2 * K * D + g * D], D, t % S, c.rope_theta);
    }
    Vd o(static_cast<size_t>(T * H));
    for (int64_t b = 0; b < T / S; ++b)
      for (int64_t a = 0; a < A; ++a) {
        const int64_t g = a / G;
        for (int64_t i = 0; i < S; ++i) {
          Vd sc(static_cast<size_t>(i + 1));
          double mx = -1e300, z = 0;
          for (int64_t j = 0; j <= i; ++j) {
            double d = 0;
            for (int64_t e = 0; e < D; ++e) d += q[(b * S + i) * H + a * D + e] * kv[(b * S + j) * 2 * K * D + g * D + e];
            sc[j] = d / std::sqrt(double(D));
            mx = std::max(mx, sc[j]);
          }
          for (auto& v : sc) z += (v = std::exp(v - mx));
          for (int64_t e = 0; e < D; ++e) {
            double s = 0;
            for (int64_t j = 0; j <= i; ++j) s += sc[j] / z * kv[(b * S + j) * 2 * K * D + K * D + g * D + e];
            o[(b * S + i) * H + a * D + e] = s;
          }
        }
      }
    block_tail(x, o, P, p, T, H, F);
  }
  return head_loss(x, P("final_norm.weight"), P("lm_head.weight"), T, H, c.vocab, tg);
}

TEST(NnLlama, ParametersFollowDocsModelMd) {
  const auto ps = shardflow::nn::gpt_parameters(tiny_llama(4, 2));
  std::vector<std::string> names;
  for (const auto& p : ps) names.push_back(p.name);
  EXPECT_EQ(names.front(), "embed.weight");
  EXPECT_EQ(names[1], "layers.0.attn_norm.weight");
  EXPECT_EQ(names[2], "layers.0.attn.q.weight");
  EXPECT_EQ(names[3], "layers.0.attn.kv.weight");
  EXPECT_EQ(names[4], "layers.0.attn.out.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
  EXPECT_EQ(ps[3].shape, (shardflow::Shape{2 * 2 * 4, 16}));  // [2·K·D, H]
  for (const auto& p : ps) EXPECT_EQ(p.name.find("pos_embed"), std::string::npos);
  // L·(2H² + 2·K·D·H + 3FH) + V·H
  EXPECT_EQ(shardflow::nn::gpt_matmul_params(tiny_llama(4, 2)), 2 * (2 * 256 + 2 * 8 * 16 + 3 * 6 * 16) + 7 * 16);
}

TEST(NnLlama, ForwardMatchesPlainLoopTranscriptionOfDocsModelMd) {
  for (int64_t kv : {1, 2, 4}) {
    GptModel<double> m(tiny_llama(4, kv), 3);
    randomise(m, 5);
    Tokens tk = make_tokens(3 * 5, 7, 6);
    const double loss = m.forward(tk.in, tk.tg);
    EXPECT_NEAR(loss, reference_loss(m, tk.vin, tk.vtg), 1e-12) << "kv_heads " << kv;
    EXPECT_EQ(m.forward_backward(tk.in, tk.tg), loss);
  }
}

TEST(NnLlama, EveryGradientMatchesFiniteDifferences) {
  for (int64_t kv : {1, 2, -2}) {  // -2: kv_heads 2 with the head tied to the embedding
    GptConfig c = tiny_llama(4, kv < 0 ? -kv : kv);
    c.tie_embeddings = kv < 0;
    if (c.tie_embeddings) {
      bool has_head = false;
      for (const auto& p : shardflow::nn::gpt_parameters(c)) has_head = has_head || p.name == "lm_head.weight";
      EXPECT_FALSE(has_head);
    }
    GptModel<double> m(c, 2);
    randomise(m, 7);
    Tokens tk = make_tokens(2 * 5, 7, 8);
    m.forward_backward(tk.in, tk.tg);
    HVec g("g", m.grads_flat().extent(0));
    Kokkos::deep_copy(g, m.grads_flat());
    for (const auto& p : m.parameters()) {
      HVec gp(g.data() + p.offset, static_cast<size_t>(p.numel));
      check_fd((p.name + " kv_heads " + std::to_string(kv)).c_str(), m.param(p.name), gp,
               [&] { return m.forward(tk.in, tk.tg); }, 1e-6);
    }
  }
}

TEST(NnLlama, RopeMatchesItsFormulaAndItsBackwardIsTheTranspose) {
  // three rotated heads of five; context rank 1 of 2: local positions 3..5 and 6..8 of 12
  const int64_t S = 6, D = 8, heads = 3, T = 2 * S, cols = 5 * D;
  const double theta = 10000.0;
  HMat table("table", 2 * S, D);
  Rope<double>::table(theta, table);
  std::mt19937_64 rng(3);
  HMat x = rand_mat(T, cols, rng), y = rand_mat(T, cols, rng);
  HMat rx("rx", T, cols), ry("ry", T, cols);
  Kokkos::deep_copy(rx, x);
  Kokkos::deep_copy(ry, y);
  Rope<double>::forward(rx, heads, S, table, 2, 1);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < cols; c += D) {
      std::vector<double> v(&x(t, c), &x(t, c) + D);
      const int64_t u = t % S, pos = u < 3 ? 3 + u : 6 + (u - 3);
      if (c / D < heads) rope_direct(v.data(), D, pos, theta);
      for (int64_t e = 0; e < D; ++e) ASSERT_NEAR(rx(t, c + e), v[e], 1e-14) << "row " << t << " column " << c + e;
    }
  // <R x, y> = <x, Rᵀ y>
  Rope<double>::backward(ry, heads, S, table, 2, 1);
  EXPECT_NEAR(dot(rx, y), dot(x, ry), 1e-12 * std::abs(dot(x, ry)) + 1e-12);
  // and Rᵀ R = I
  Rope<double>::backward(rx, heads, S, table, 2, 1);
  EXPECT_LT(max_abs_diff(rx, x), 1e-14);
}

// GQA equals MHA whose every query head has its own copy of its group's key/value head:
// the forward bit for bit, the kv gradients as the sums of the copies' gradients.
TEST(NnLlama, GroupedQueryAttentionIsMhaWithSharedKvHeads) {
  const int64_t S = 7, D = 4, A = 4, K = 2, G = A / K, b = 2, T = b * S;
  std::mt19937_64 rng(11);
  HMat gqa = rand_mat(T, (A + 2 * K) * D, rng);
  HMat mha("mha", T, 3 * A * D);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < A * D; ++c) mha(t, c) = gqa(t, c);
    for (int64_t a = 0; a < A; ++a)
      for (int64_t e = 0; e < D; ++e) {
        mha(t, A * D + a * D + e) = gqa(t, A * D + (a / G) * D + e);
        mha(t, 2 * A * D + a * D + e) = gqa(t, (A + K) * D + (a / G) * D + e);
      }
  }
  using Ten3 = Kokkos::View<double***, Kokkos::LayoutRight, Kokkos::HostSpace>;
  Ten3 pg("pg", b * A, S, S), pm("pm", b * A, S, S);
  HMat og("og", T, A * D), om("om", T, A * D);
  const KvMap map{K, G, 0, 0};
  Attention<double>::forward(gqa, A, pg, og, shardflow::DType::F32, map);
  Attention<double>::forward(mha, A, pm, om);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < A * D; ++c) ASSERT_EQ(og(t, c), om(t, c)) << "row " << t << " column " << c;
  HMat dout = rand_mat(T, A * D, rng), dp("dp", S, S);
  HMat dg("dg", T, (A + 2 * K) * D), dm("dm", T, 3 * A * D);
  Attention<double>::backward(dout, gqa, pg, A, dp, dg, false, shardflow::DType::F32, map);
  Attention<double>::backward(dout, mha, pm, A, dp, dm);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < A * D; ++c) ASSERT_EQ(dg(t, c), dm(t, c)) << "dq row " << t << " column " << c;
    for (int64_t g = 0; g < K; ++g)
      for (int64_t e = 0; e < D; ++e)
        for (int64_t blk : {int64_t(1), int64_t(2)}) {  // dK, dV
          double want = 0;
          for (int64_t a = g * G; a < (g + 1) * G; ++a) want += dm(t, blk * A * D + a * D + e);
          EXPECT_NEAR(dg(t, (blk == 1 ? A : A + K) * D + g * D + e), want, 1e-13);
        }
  }
}

// kv_heads = heads: the grouped-query machinery (a KvMap naming every kv head) is plain
// multi-head attention, forward and backward, bit for bit.
TEST(NnLlama, KvHeadsEqualToHeadsIsMhaBitForBit) {
  const int64_t S = 9, D = 4, A = 3, b = 2, T = b * S;
  std::mt19937_64 rng(19);
  HMat qkv = rand_mat(T, 3 * A * D, rng), dout = rand_mat(T, A * D, rng);
  using Ten3 = Kokkos::View<double***, Kokkos::LayoutRight, Kokkos::HostSpace>;
  Ten3 p1("p1", b * A, S, S), p2("p2", b * A, S, S);
  HMat o1("o1", T, A * D), o2("o2", T, A * D), d1("d1", T, 3 * A * D), d2("d2", T, 3 * A * D), dp("dp", S, S);
  Attention<double>::forward(qkv, A, p1, o1);
  Attention<double>::forward(qkv, A, p2, o2, shardflow::DType::F32, KvMap{A, 1, 0, 0});
  Attention<double>::backward(dout, qkv, p1, A, dp, d1);
  Attention<double>::backward(dout, qkv, p2, A, dp, d2, false, shardflow::DType::F32, KvMap{A, 1, 0, 0});
  EXPECT_EQ(max_abs_diff(o1, o2), 0.0);
  EXPECT_EQ(max_abs_diff(d1, d2), 0.0);
  // and a Llama with kv_heads = heads runs the gpt's attention: the same loss as kv_heads unset
  GptModel<double> m1(tiny_llama(4, 4), 2), m2(tiny_llama(4, 0), 2);
  randomise(m1, 23);
  Kokkos::deep_copy(m2.params_flat(), m1.params_flat());
  Tokens tk = make_tokens(10, 7, 24);
  EXPECT_EQ(m1.forward_backward(tk.in, tk.tg), m2.forward_backward(tk.in, tk.tg));
}

// Tensor parallelism's pieces: a contiguous range of query heads with the kv heads it uses
// (aligned: its own kv range; replicated: all K) gives the unsharded output's columns, and
// its dK/dV summed over the ranges gives the unsharded kv gradients.
TEST(NnLlama, HeadRangeShardsOfGqaEqualUnsharded) {
  const int64_t S = 5, D = 2, A = 6, K = 3, G = A / K, b = 1, T = b * S;
  std::mt19937_64 rng(13);
  HMat qkv = rand_mat(T, (A + 2 * K) * D, rng), dout = rand_mat(T, A * D, rng);
  using Ten3 = Kokkos::View<double***, Kokkos::LayoutRight, Kokkos::HostSpace>;
  Ten3 p("p", b * A, S, S);
  HMat out("out", T, A * D), dqkv("dqkv", T, (A + 2 * K) * D), dp("dp", S, S);
  const KvMap full{K, G, 0, 0};
  Attention<double>::forward(qkv, A, p, out, shardflow::DType::F32, full);
  Attention<double>::backward(dout, qkv, p, A, dp, dqkv, false, shardflow::DType::F32, full);
  // two ranks: heads [0, 3) and [3, 6) use kv heads {0, 1} and {1, 2}: not aligned, so each
  // holds all K kv heads
  HMat dkv_sum("dkv_sum", T, 2 * K * D);
  for (int r = 0; r < 2; ++r) {
    const int64_t a0 = 3 * r, Al = 3;
    HMat local("local", T, (Al + 2 * K) * D);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < Al * D; ++c) local(t, c) = qkv(t, a0 * D + c);
      for (int64_t c = 0; c < 2 * K * D; ++c) local(t, Al * D + c) = qkv(t, A * D + c);
    }
    Ten3 pl("pl", b * Al, S, S);
    HMat ol("ol", T, Al * D), dl("dl", T, (Al + 2 * K) * D), doutl("doutl", T, Al * D);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < Al * D; ++c) doutl(t, c) = dout(t, a0 * D + c);
    const KvMap m{K, G, a0, 0};
    Attention<double>::forward(local, Al, pl, ol, shardflow::DType::F32, m);
    Attention<double>::backward(doutl, local, pl, Al, dp, dl, false, shardflow::DType::F32, m);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < Al * D; ++c) {
        EXPECT_NEAR(ol(t, c), out(t, a0 * D + c), 1e-14);
        EXPECT_NEAR(dl(t, c), dqkv(t, a0 * D + c), 1e-14);
      }
      for (int64_t c = 0; c < 2 * K * D; ++c) dkv_sum(t, c) += dl(t, Al * D + c);
    }
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < 2 * K * D; ++c) EXPECT_NEAR(dkv_sum(t, c), dqkv(t, A * D + c), 1e-13);
  // a query range whose kv heads lie outside the local ones is refused, naming the heads
  HMat bad("bad", T, (3 + 2) * D);
  Ten3 pb("pb", 3, S, S);
  HMat ob("ob", T, 3 * D);
  EXPECT_THROW(Attention<double>::forward(bad, 3, pb, ob, shardflow::DType::F32, KvMap{1, G, 3, 0}),
               shardflow::Error);
}

TEST(NnLlama, FloatAgreesWithDouble) {
  GptConfig c = tiny_llama(4, 2);
  c.seq = 8;
  GptModel<double> md(c, 2);
  GptModel<float> mf(c, 2);
  md.init(11);
  mf.init(11);
  Tokens tk = make_tokens(16, 7, 12);
  const double ld = md.forward_backward(tk.in, tk.tg);
  const double lf = mf.forward_backward(tk.in, tk.tg);
  EXPECT_NEAR(lf, ld, 1e-5 * ld);
  double gmax = 0;
  for (size_t i = 0; i < md.grads_flat().extent(0); ++i) gmax = std::max(gmax, std::abs(md.grads_flat()(i)));
  for (size_t i = 0; i < md.grads_flat().extent(0); ++i)
    ASSERT_NEAR(mf.grads_flat()(i), md.grads_flat()(i), 1e-4 * gmax) << "gradient element " << i;
}

}  // namespace

namespace {
// Ring attention: cp context ranks simulated in one process. Each holds the rows of its two
// chunks (context_position); its queries meet every rank's key/value block, in ring order;
// the outputs, dQ and the dK/dV summed over the query ranks equal unsharded attention's.
void check_ring(int cp, int64_t A, int64_t K, shardflow::DType round16, double tol) {
  using shardflow::nn::RingAttention;
  using shardflow::nn::context_position;
  using Ten3 = Kokkos::View<double***, Kokkos::LayoutRight, Kokkos::HostSpace>;
  const int64_t D = 4, b = 2, S = 4 * cp, Sl = S / cp, T = b * S, Tl = b * Sl, W = (A + 2 * K) * D;
  std::mt19937_64 rng(static_cast<uint64_t>(17 + cp + A + K));
  HMat qkv = rand_mat(T, W, rng), dout = rand_mat(T, A * D, rng);
  const KvMap full{K, A / K, 0, 0};
  Ten3 probs("probs", b * A, S, S);
  HMat out("out", T, A * D), dqkv("dqkv", T, W), dps("dps", S, S);
  Attention<double>::forward(qkv, A, probs, out, round16, full);
  Attention<double>::backward(dout, qkv, probs, A, dps, dqkv, false, round16, full);
  auto row_of = [&](int c, int64_t t) { return (t / Sl) * S + context_position(t % Sl, Sl, cp, c); };
  std::vector<HMat> lq, lkv, lout, ldq, ldkv, ldout;
  std::vector<HVec> lse;
  for (int c = 0; c < cp; ++c) {
    HMat q("q", Tl, W), kv("kv", Tl, 2 * K * D), o("o", Tl, A * D), dq("dq", Tl, W), dkv("dkv", Tl, 2 * K * D),
        dO("dO", Tl, A * D);
    for (int64_t t = 0; t < Tl; ++t) {
      for (int64_t j = 0; j < W; ++j) q(t, j) = qkv(row_of(c, t), j);
      for (int64_t j = 0; j < 2 * K * D; ++j) kv(t, j) = qkv(row_of(c, t), A * D + j);
      for (int64_t j = 0; j < A * D; ++j) dO(t, j) = dout(row_of(c, t), j);
    }
    lq.push_back(q), lkv.push_back(kv), lout.push_back(o), ldq.push_back(dq), ldkv.push_back(dkv), ldout.push_back(dO);
    lse.push_back(HVec("lse", b * A * Sl));
  }
  HVec m("m", b * A * Sl), l("l", b * A * Sl), dvec("dvec", b * A * Sl), scratch("scratch", 2 * (Sl / 2) * (Sl / 2));
  for (int c = 0; c < cp; ++c) {
    RingAttention<double>::init(m, l, lout[c]);
    for (int r = 0; r < cp; ++r) {
      const int k = ((c - r) % cp + cp) % cp;
      RingAttention<double>::forward_block(lq[c], A, lkv[k], full, Sl, cp, c, k, m, l, lout[c], scratch, round16);
    }
    RingAttention<double>::finish(m, l, A, Sl, lout[c], lse[c]);
    for (int64_t t = 0; t < Tl; ++t)
      for (int64_t j = 0; j < A * D; ++j)
        ASSERT_NEAR(lout[c](t, j), out(row_of(c, t), j), tol) << "cp " << cp << " rank " << c << " row " << t;
  }
  for (int c = 0; c < cp; ++c) {
    RingAttention<double>::backward_prep(ldout[c], lout[c], A, Sl, dvec);
    for (int r = 0; r < cp; ++r) {
      const int k = ((c - r) % cp + cp) % cp;
      RingAttention<double>::backward_block(ldout[c], lq[c], A, lkv[k], full, Sl, cp, c, k, lse[c], dvec, ldq[c],
                                            ldkv[k], scratch, round16);
    }
  }
  for (int c = 0; c < cp; ++c)
    for (int64_t t = 0; t < Tl; ++t) {
      for (int64_t j = 0; j < A * D; ++j)
        ASSERT_NEAR(ldq[c](t, j), dqkv(row_of(c, t), j), tol) << "dq cp " << cp << " rank " << c << " row " << t;
      for (int64_t j = 0; j < 2 * K * D; ++j)
        ASSERT_NEAR(ldkv[c](t, j), dqkv(row_of(c, t), A * D + j), tol)
            << "dkv cp " << cp << " rank " << c << " row " << t << " column " << j;
    }
}
}  // namespace

TEST(NnRingAttention, ContextRanksTogetherEqualUnshardedAttention) {
  check_ring(2, 4, 4, shardflow::DType::F32, 1e-12);  // MHA
  check_ring(2, 4, 2, shardflow::DType::F32, 1e-12);  // GQA
  check_ring(3, 2, 1, shardflow::DType::F32, 1e-12);
  check_ring(4, 4, 2, shardflow::DType::F32, 1e-12);
}
