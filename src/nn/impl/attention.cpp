// Causal multi-head attention: per (sequence, head) gemms on windows of the row-major
// activations (LayoutRight subviews keep a leading dimension, which the BLAS TPL passes as
// lda/ldb/ldc), and a numerically stable softmax (row max subtracted) in between.
#include <algorithm>
#if defined(__AVX512F__) && !defined(__CUDA_ARCH__)
#include <immintrin.h>
#endif
#include <cmath>

#include "core/half.hpp"
#include "nn/impl/gemm.hpp"
#include "nn/impl/math.hpp"
#include "nn/kernels.hpp"
#include "nn/philox.hpp"

namespace shardflow::nn {

namespace {
struct AttnDims {
  int64_t t, s, b, a, d;
  int64_t kvh;       // local kv heads
  int64_t ko, vo;    // first column of the K and V blocks
};
template <class QKV, class P>
AttnDims attn_dims(const char* op, const QKV& qkv, int64_t heads, const P& probs, const KvMap& kv) {
  AttnDims g{};
  g.t = static_cast<int64_t>(qkv.extent(0));
  g.s = static_cast<int64_t>(probs.extent(1));
  g.a = heads;
  g.kvh = kv.kv_heads > 0 ? kv.kv_heads : heads;
  const int64_t blocks = heads + 2 * g.kvh;
  SHARDFLOW_REQUIRE(heads > 0 && static_cast<int64_t>(qkv.extent(1)) % blocks == 0, op, ": qkv has ", qkv.extent(1),
                    " columns, not a multiple of heads + 2 · kv_heads = ", blocks);
  g.d = static_cast<int64_t>(qkv.extent(1)) / blocks;
  SHARDFLOW_REQUIRE(kv.kv_of(0) >= 0 && kv.kv_of(heads - 1) < g.kvh, op, ": query heads [", kv.a0, ", ",
                    kv.a0 + heads, ") in groups of ", kv.group, " need kv heads outside the local [", kv.k0, ", ",
                    kv.k0 + g.kvh, ")");
  g.ko = heads * g.d;
  g.vo = g.ko + g.kvh * g.d;
  SHARDFLOW_REQUIRE(g.s > 0 && probs.extent(2) == probs.extent(1) && g.t % g.s == 0, op, ": qkv has ", g.t,
                    " rows, probs is [", probs.extent(0), ", ", probs.extent(1), ", ", probs.extent(2),
                    "]; want T = b · S rows and probs [>= b · heads, S, S]");
  g.b = g.t / g.s;
  SHARDFLOW_REQUIRE(static_cast<int64_t>(probs.extent(0)) >= g.b * g.a, op, ": probs holds ", probs.extent(0),
                    " (sequence, head) pairs but the micro-batch needs ", g.b * g.a);
  return g;
}
using Range = Kokkos::pair<int64_t, int64_t>;
/// Query rows per causal block: a block of rows [r0, r1) only multiplies keys [0, r1), so
/// the products skip most of the masked upper triangle (S = 128: 3/4 of the square).
constexpr int64_t kCausalBlock = 64;

/// AttnDropout's mask of one (sequence, head): keep(row, col) for a row's columns in order
/// (one Philox call per 4 elements).
struct DropMask {
  uint32_t key[2];
  uint32_t hi[2];  // counter words 2 and 3: g·2³² + h
  int64_t S;
  uint32_t thr;
  DropMask(const AttnDropout& d, int64_t g, int64_t h, int64_t s) : S(s), thr(d.threshold()) {
    key[0] = static_cast<uint32_t>(d.key);
    key[1] = static_cast<uint32_t>(d.key >> 32);
    hi[0] = static_cast<uint32_t>(h);
    hi[1] = static_cast<uint32_t>(g);
  }
  /// Blocks per batch: Philox4x32-10 of kLanes consecutive counters at once, the same words
  /// as Philox4x32::generate block by block (the kernel tests compare every element with it).
  /// With AVX-512 one vector of 16 counters per word, the 32 × 32 → 64-bit products of the
  /// even and odd lanes taken apart; elsewhere a loop over lanes.
  static constexpr int kLanes = 16;
  KOKKOS_INLINE_FUNCTION void blocks(uint64_t b, uint32_t (&w)[4][kLanes]) const {
#if defined(__AVX512F__) && !defined(__CUDA_ARCH__)
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // counters b + i: low words, and high words (+1 where the low word wrapped)
    const __m512i lo = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(b))), lane);
    const __mmask16 wrapped = _mm512_cmplt_epu32_mask(lo, lane);
    const __m512i high = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(b >> 32)));
    const __m512i hi1 = _mm512_mask_add_epi32(high, wrapped, high, _mm512_set1_epi32(1));
    __m512i c0 = lo, c1 = hi1, c2 = _mm512_set1_epi32(static_cast<int>(hi[0])),
            c3 = _mm512_set1_epi32(static_cast<int>(hi[1]));
    const __m512i m0 = _mm512_set1_epi64(0xD2511F53ll), m1 = _mm512_set1_epi64(0xCD9E8D57ll);
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; ++round) {
      // products of the even lanes (low 32 bits of each 64-bit lane) and of the odd ones (the
      // all-lanes mask forms: the plain ones pass an undefined vector that GCC 12 warns about)
      const __mmask8 all8 = 0xFF;
      const __m512i p0e = _mm512_maskz_mul_epu32(all8, c0, m0);
      const __m512i p0o = _mm512_maskz_mul_epu32(all8, _mm512_maskz_srli_epi64(all8, c0, 32), m0);
      const __m512i p1e = _mm512_maskz_mul_epu32(all8, c2, m1);
      const __m512i p1o = _mm512_maskz_mul_epu32(all8, _mm512_maskz_srli_epi64(all8, c2, 32), m1);
      const __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_maskz_srli_epi64(all8, p0e, 32), p0o);
      const __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, p0e, _mm512_maskz_slli_epi64(all8, p0o, 32));
      const __m512i hi1p = _mm512_mask_blend_epi32(0xAAAA, _mm512_maskz_srli_epi64(all8, p1e, 32), p1o);
      const __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, p1e, _mm512_maskz_slli_epi64(all8, p1o, 32));
      const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(hi1p, c1), _mm512_set1_epi32(static_cast<int>(k0)));
      const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      c0 = n0;
      c2 = n2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm512_storeu_si512(w[0], c0);
    _mm512_storeu_si512(w[1], c1);
    _mm512_storeu_si512(w[2], c2);
    _mm512_storeu_si512(w[3], c3);
#else
    for (int i = 0; i < kLanes; ++i) {
      const uint64_t bi = b + static_cast<uint64_t>(i);
      const uint32_t c[4] = {static_cast<uint32_t>(bi), static_cast<uint32_t>(bi >> 32), hi[0], hi[1]};
      uint32_t o[4];
      Philox4x32::generate(c, key, o);
      for (int k = 0; k < 4; ++k) w[k][i] = o[k];
    }
#endif
  }
  /// f(col, keep) for col in [0, n) of `row`, in order.
  template <class F>
  KOKKOS_INLINE_FUNCTION void row(int64_t row_, int64_t n, F&& f) const {
    if (n <= 0) return;
    const uint64_t e0 = static_cast<uint64_t>(row_ * S), e1 = e0 + static_cast<uint64_t>(n);
    uint32_t w[4][kLanes];
    for (uint64_t b = e0 >> 2; b < (e1 + 3) >> 2; b += kLanes) {
      blocks(b, w);
      const uint64_t first = b << 2, last = (b + kLanes) << 2;
      for (uint64_t e = first > e0 ? first : e0; e < (last < e1 ? last : e1); ++e) {
        const uint64_t k = e - first;
        f(static_cast<int64_t>(e - e0), w[k & 3][k >> 2] >= thr);
      }
    }
  }
};

/// out(i, j) = the dropped probability of p(i, j) (row r0 + i), j <= r0 + i; 0 above the
/// diagonal, up to `cols` columns. With round16, rounded as a 16-bit step stores it.
template <class Scalar, class Exec, class P, class O>
void dropped(const AttnDropout& d, int64_t g, int64_t h, int64_t S, P p, O out, int64_t r0, int64_t r1, int64_t cols,
             DType round16) {
  const DropMask mask(d, g, h, S);
  const Scalar scale = static_cast<Scalar>(1.0 / (1.0 - d.p));
  Kokkos::parallel_for(
      "nn::attn_dropout", Kokkos::RangePolicy<Exec>(0, r1 - r0), KOKKOS_LAMBDA(const int64_t i) {
        const int64_t row = r0 + i;
        mask.row(row, row + 1, [&](int64_t j, bool keep) {
          Scalar v = keep ? p(i, j) * scale : Scalar(0);
          if (round16 != DType::F32) v = static_cast<Scalar>(round_to(static_cast<float>(v), round16));
          out(i, j) = v;
        });
        for (int64_t j = row + 1; j < cols; ++j) out(i, j) = Scalar(0);
      });
}
}  // namespace

uint32_t AttnDropout::threshold() const {
  const double t = std::round(p * 4294967296.0);
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

uint64_t attention_dropout_key(uint64_t seed, int64_t step, int64_t layer) {
  uint64_t k = mix64(seed ^ 0x6174746E64726F70ull);  // "attndrop"
  k = mix64(k ^ static_cast<uint64_t>(step));
  return mix64(k ^ (static_cast<uint64_t>(layer) * 0x9E3779B97F4A7C15ull));
}

int64_t attention_dropout_kept(const AttnDropout& d, int64_t seq, int64_t head, int64_t S) {
  const DropMask mask(d, d.seq0 + seq, d.head0 + head, S);
  int64_t kept = 0;
  for (int64_t i = 0; i < S; ++i) mask.row(i, i + 1, [&](int64_t, bool keep) { kept += keep ? 1 : 0; });
  return kept;
}

int64_t attention_dropout_generated(int64_t S) {
  constexpr int64_t lanes = DropMask::kLanes;
  int64_t made = 0;
  for (int64_t i = 0; i < S; ++i) {  // DropMask::row(i, i + 1): blocks [e0 / 4, ceil(e1 / 4))
    const int64_t e0 = i * S, e1 = e0 + i + 1, blocks = (e1 + 3) / 4 - e0 / 4;
    made += (blocks + lanes - 1) / lanes * lanes * 4;
  }
  return made;
}

std::vector<uint8_t> attention_dropout_mask(const AttnDropout& d, int64_t seq, int64_t head, int64_t S) {
  std::vector<uint8_t> m(static_cast<size_t>(S * S));
  const DropMask mask(d, d.seq0 + seq, d.head0 + head, S);
  for (int64_t i = 0; i < S; ++i)
    mask.row(i, S, [&](int64_t j, bool keep) { m[static_cast<size_t>(i * S + j)] = keep ? 1 : 0; });
  return m;
}

template <class Scalar, class Exec>
void Attention<Scalar, Exec>::forward(typename V::CMat qkv, int64_t heads, typename V::Ten3 probs, typename V::Mat out,
                                      DType round16, const KvMap& kv, const AttnDropout& drop,
                                      typename V::Mat scratch) {
  const AttnDims g = attn_dims("Attention::forward", qkv, heads, probs, kv);
  SHARDFLOW_REQUIRE(static_cast<int64_t>(out.extent(0)) == g.t && static_cast<int64_t>(out.extent(1)) == g.a * g.d,
                    "Attention::forward: out is [", out.extent(0), ", ", out.extent(1), "], want [", g.t, ", ",
                    g.a * g.d, "]");
  SHARDFLOW_REQUIRE(drop.p >= 0 && drop.p < 1, "Attention::forward: dropout probability ", drop.p, " is not in [0, 1)");
  SHARDFLOW_REQUIRE(!drop.active() || (static_cast<int64_t>(scratch.extent(0)) >= g.s &&
                                       static_cast<int64_t>(scratch.extent(1)) >= g.s),
                    "Attention::forward: dropout needs a scratch of [", g.s, ", ", g.s, "], it has [",
                    scratch.extent(0), ", ", scratch.extent(1), "]");
  const double scale = 1.0 / std::sqrt(static_cast<double>(g.d));
  const int64_t nblk = (g.s + kCausalBlock - 1) / kCausalBlock;
  for (int64_t bi = 0; bi < g.b; ++bi) {
    for (int64_t a = 0; a < g.a; ++a) {
      const int64_t kc = g.ko + kv.kv_of(a) * g.d;
      for (int64_t blk = 0; blk < nblk; ++blk) {
        // query rows [r0, r1) of this block see keys [0, r1) only
        const int64_t r0 = blk * kCausalBlock, r1 = std::min(g.s, r0 + kCausalBlock);
        auto q = Kokkos::subview(qkv, Range(bi * g.s + r0, bi * g.s + r1), Range(a * g.d, (a + 1) * g.d));
        auto k = Kokkos::subview(qkv, Range(bi * g.s, bi * g.s + r1), Range(kc, kc + g.d));
        auto p = Kokkos::subview(probs, bi * g.a + a, Range(r0, r1), Range(0, r1));
        detail::gemm("N", "T", scale, q, k, 0.0, p);
      }
    }
  }
  const int64_t s = g.s;
  Kokkos::parallel_for(
      "nn::attn_softmax", Kokkos::RangePolicy<Exec>(0, g.b * g.a * g.s), KOKKOS_LAMBDA(const int64_t r) {
        const int64_t i = r / s, row = r % s;
        Scalar m = probs(i, row, 0);
        for (int64_t j = 1; j <= row; ++j) m = probs(i, row, j) > m ? probs(i, row, j) : m;
        for (int64_t j = 0; j <= row; ++j) probs(i, row, j) = math::exp(probs(i, row, j) - m);
        Scalar sum = 0;
        for (int64_t j = 0; j <= row; ++j) sum += probs(i, row, j);
        const Scalar inv = Scalar(1) / sum;
        for (int64_t j = 0; j <= row; ++j) probs(i, row, j) *= inv;
        if (round16 != DType::F32)
          for (int64_t j = 0; j <= row; ++j)
            probs(i, row, j) = static_cast<Scalar>(round_to(static_cast<float>(probs(i, row, j)), round16));
        for (int64_t j = row + 1; j < s; ++j) probs(i, row, j) = Scalar(0);
      });
  for (int64_t bi = 0; bi < g.b; ++bi) {
    for (int64_t a = 0; a < g.a; ++a) {
      const int64_t vc = g.vo + kv.kv_of(a) * g.d;
      if (drop.active())
        dropped<Scalar, Exec>(drop, drop.seq0 + bi, drop.head0 + a, g.s,
                              Kokkos::subview(probs, bi * g.a + a, Kokkos::ALL(), Kokkos::ALL()), scratch, 0, g.s, g.s,
                              round16);
      for (int64_t blk = 0; blk < nblk; ++blk) {
        const int64_t r0 = blk * kCausalBlock, r1 = std::min(g.s, r0 + kCausalBlock);
        auto v = Kokkos::subview(qkv, Range(bi * g.s, bi * g.s + r1), Range(vc, vc + g.d));
        auto o = Kokkos::subview(out, Range(bi * g.s + r0, bi * g.s + r1), Range(a * g.d, (a + 1) * g.d));
        if (drop.active())
          detail::gemm("N", "N", 1.0, Kokkos::subview(scratch, Range(r0, r1), Range(0, r1)), v, 0.0, o);
        else
          detail::gemm("N", "N", 1.0, Kokkos::subview(probs, bi * g.a + a, Range(r0, r1), Range(0, r1)), v, 0.0, o);
      }
    }
  }
}

template <class Scalar, class Exec>
void Attention<Scalar, Exec>::backward(typename V::CMat dout, typename V::CMat qkv, typename V::CTen3 probs,
                                       int64_t heads, typename V::Mat dprobs, typename V::Mat dqkv, bool accumulate,
                                       DType round16, const KvMap& kv, const AttnDropout& drop) {
  const AttnDims g = attn_dims("Attention::backward", qkv, heads, probs, kv);
  SHARDFLOW_REQUIRE(static_cast<int64_t>(dout.extent(0)) == g.t && static_cast<int64_t>(dout.extent(1)) == g.a * g.d,
                    "Attention::backward: dout is [", dout.extent(0), ", ", dout.extent(1), "], want [", g.t, ", ",
                    g.a * g.d, "]");
  SHARDFLOW_REQUIRE(dqkv.extent(0) == qkv.extent(0) && dqkv.extent(1) == qkv.extent(1),
                    "Attention::backward: dqkv is [", dqkv.extent(0), ", ", dqkv.extent(1), "] but qkv is [",
                    qkv.extent(0), ", ", qkv.extent(1), "]");
  SHARDFLOW_REQUIRE(static_cast<int64_t>(dprobs.extent(0)) == g.s && static_cast<int64_t>(dprobs.extent(1)) == g.s,
                    "Attention::backward: dprobs scratch is [", dprobs.extent(0), ", ", dprobs.extent(1), "], want [",
                    g.s, ", ", g.s, "]");
  SHARDFLOW_REQUIRE(drop.p >= 0 && drop.p < 1, "Attention::backward: dropout probability ", drop.p,
                    " is not in [0, 1)");
  const double scale = 1.0 / std::sqrt(static_cast<double>(g.d));
  const double beta = accumulate ? 1.0 : 0.0;
  const bool dropping = drop.active();
  const Scalar keep_scale = static_cast<Scalar>(dropping ? 1.0 / (1.0 - drop.p) : 1.0);
  // Grouped-query attention: several query heads add into one kv head's dK and dV, so the
  // kv columns start from zero (unless accumulating) and every product adds.
  const bool mha = kv.is_mha(heads);
  if (!mha && !accumulate)
    Kokkos::deep_copy(Kokkos::subview(dqkv, Kokkos::ALL(), Range(g.ko, g.vo + g.kvh * g.d)), Scalar(0));
  const int64_t nblk = (g.s + kCausalBlock - 1) / kCausalBlock;
  for (int64_t bi = 0; bi < g.b; ++bi) {
    const int64_t base = bi * g.s;
    for (int64_t a = 0; a < g.a; ++a) {
      const int64_t kh = kv.kv_of(a);
      const Range cq(a * g.d, (a + 1) * g.d), ck(g.ko + kh * g.d, g.ko + (kh + 1) * g.d),
          cv(g.vo + kh * g.d, g.vo + (kh + 1) * g.d);
      // Query blocks last to first: the last one covers every key row, so its dK and dV
      // products set (or, accumulating, add to) all of them; earlier blocks add to a prefix.
      for (int64_t blk = nblk - 1; blk >= 0; --blk) {
        const int64_t r0 = blk * kCausalBlock, r1 = std::min(g.s, r0 + kCausalBlock);
        const double beta_kv = (mha && blk == nblk - 1) ? beta : 1.0;
        const Range qrows(base + r0, base + r1), krows(base, base + r1);
        auto p = Kokkos::subview(probs, bi * g.a + a, Range(r0, r1), Range(0, r1));
        auto dp = Kokkos::subview(dprobs, Range(r0, r1), Range(0, r1));
        auto dout_h = Kokkos::subview(dout, qrows, cq);
        // dV = Pᵀ · dO ; dP = dO · Vᵀ (dropout: dV = P'ᵀ · dO with the dropped P' made again in
        // dp, and dP = mask ⊙ dP' / (1 − p) with dP' = dO · Vᵀ)
        if (dropping) {
          dropped<Scalar, Exec>(drop, drop.seq0 + bi, drop.head0 + a, g.s, p, dp, r0, r1, r1, round16);
          detail::gemm("T", "N", 1.0, dp, dout_h, beta_kv, Kokkos::subview(dqkv, krows, cv));
        } else {
          detail::gemm("T", "N", 1.0, p, dout_h, beta_kv, Kokkos::subview(dqkv, krows, cv));
        }
        detail::gemm("N", "T", 1.0, dout_h, Kokkos::subview(qkv, krows, cv), 0.0, dp);
        const DropMask mask(drop, drop.seq0 + bi, drop.head0 + a, g.s);
        // dS = P ⊙ (dP − rowsum(P ⊙ dP)), zero above the diagonal because P is.
        Kokkos::parallel_for(
            "nn::attn_softmax_bwd", Kokkos::RangePolicy<Exec>(0, r1 - r0), KOKKOS_LAMBDA(const int64_t i) {
              const int64_t row = r0 + i;
              if (dropping)
                mask.row(row, row + 1,
                         [&](int64_t j, bool keep) { dp(i, j) = keep ? dp(i, j) * keep_scale : Scalar(0); });
              Scalar dot = 0;
              for (int64_t j = 0; j <= row; ++j) dot += p(i, j) * dp(i, j);
              for (int64_t j = 0; j <= row; ++j) dp(i, j) = p(i, j) * (dp(i, j) - dot);
              if (round16 != DType::F32)
                for (int64_t j = 0; j <= row; ++j)
                  dp(i, j) = static_cast<Scalar>(round_to(static_cast<float>(dp(i, j)), round16));
              for (int64_t j = row + 1; j < r1; ++j) dp(i, j) = Scalar(0);
            });
        // dQ = scale · dS · K ; dK = scale · dSᵀ · Q
        detail::gemm("N", "N", scale, dp, Kokkos::subview(qkv, krows, ck), beta, Kokkos::subview(dqkv, qrows, cq));
        detail::gemm("T", "N", scale, dp, Kokkos::subview(qkv, qrows, cq), beta_kv, Kokkos::subview(dqkv, krows, ck));
      }
    }
  }
}

// ---- rotary position embeddings ---------------------------------------------------------------

template <class Scalar, class Exec>
void Rope<Scalar, Exec>::table(double theta, typename V::Mat table) {
  const int64_t P = static_cast<int64_t>(table.extent(0)), D = static_cast<int64_t>(table.extent(1));
  SHARDFLOW_REQUIRE(D > 0 && D % 2 == 0, "Rope::table: head size ", D, " must be even and > 0");
  SHARDFLOW_REQUIRE(std::isfinite(theta) && theta > 1, "Rope::table: theta ", theta, " must be a finite number > 1");
  auto h = Kokkos::create_mirror_view(table);
  const int64_t half = D / 2;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double phi = static_cast<double>(p) * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
      h(p, i) = static_cast<Scalar>(std::cos(phi));
      h(p, half + i) = static_cast<Scalar>(std::sin(phi));
    }
  Kokkos::deep_copy(table, h);
}

namespace {
template <class Scalar, class Exec, class X, class Tb>
void rope_rotate(const char* op, X x, int64_t rot_heads, int64_t S, Tb table, int cp, int cc, Scalar sign) {
  const int64_t T = static_cast<int64_t>(x.extent(0)), D = static_cast<int64_t>(table.extent(1));
  SHARDFLOW_REQUIRE(D > 0 && D % 2 == 0 && rot_heads >= 0 && rot_heads * D <= static_cast<int64_t>(x.extent(1)), op,
                    ": ", rot_heads, " heads of ", D, " columns do not fit x [", x.extent(0), ", ", x.extent(1), "]");
  SHARDFLOW_REQUIRE(S > 0 && T % S == 0 && cp >= 1 && cc >= 0 && cc < cp && (cp == 1 || S % 2 == 0) &&
                        S * cp <= static_cast<int64_t>(table.extent(0)),
                    op, ": ", T, " rows of sequences of ", S, " positions (context rank ", cc, " of ", cp,
                    ") need a table of >= ", S * cp, " positions, it has ", table.extent(0));
  const int64_t half = D / 2;
  Kokkos::parallel_for(
      op, Kokkos::RangePolicy<Exec>(0, T * rot_heads), KOKKOS_LAMBDA(const int64_t r) {
        const int64_t t = r / rot_heads, c = (r % rot_heads) * D, p = context_position(t % S, S, cp, cc);
        for (int64_t i = 0; i < half; ++i) {
          const Scalar cs = table(p, i), sn = sign * table(p, half + i);
          const Scalar a = x(t, c + i), b = x(t, c + half + i);
          x(t, c + i) = a * cs - b * sn;
          x(t, c + half + i) = b * cs + a * sn;
        }
      });
}
}  // namespace

template <class Scalar, class Exec>
void Rope<Scalar, Exec>::forward(typename V::Mat x, int64_t rot_heads, int64_t S, typename V::CMat table, int cp,
                                 int cc) {
  rope_rotate<Scalar, Exec>("nn::rope_fwd", x, rot_heads, S, table, cp, cc, Scalar(1));
}

template <class Scalar, class Exec>
void Rope<Scalar, Exec>::backward(typename V::Mat dx, int64_t rot_heads, int64_t S, typename V::CMat table, int cp,
                                  int cc) {
  // the rotation is orthogonal: its transpose is the rotation by −φ
  rope_rotate<Scalar, Exec>("nn::rope_bwd", dx, rot_heads, S, table, cp, cc, Scalar(-1));
}

template struct Attention<float>;
template struct Attention<double>;
template struct Rope<float>;
template struct Rope<double>;

}  // namespace shardflow::nn
