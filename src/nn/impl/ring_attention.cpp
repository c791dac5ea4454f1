// Ring attention (context parallelism): one key/value block at a time against this rank's
// query rows, per (sequence, head, query chunk, key chunk) pair, with an online softmax
// (forward) and FlashAttention-2's backward (P recomputed from the saved log-sum-exp).
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/half.hpp"
#include "nn/impl/gemm.hpp"
#include "nn/impl/math.hpp"
#include "nn/kernels.hpp"

namespace shardflow::nn {

namespace {
using Range = Kokkos::pair<int64_t, int64_t>;

struct RingDims {
  int64_t t, b, sl, c, a, kvh, d;  // rows, sequences, rows per sequence, chunk, heads, kv heads, head size
};

template <class Q, class KV>
RingDims ring_dims(const char* op, const Q& qkv, int64_t heads, const KV& kv, const KvMap& map, int64_t seq_local,
                   int cp, int q_rank, int k_rank) {
  RingDims g{};
  SHARDFLOW_REQUIRE(cp >= 2 && q_rank >= 0 && q_rank < cp && k_rank >= 0 && k_rank < cp, op, ": context ranks ", q_rank,
                    " and ", k_rank, " of ", cp);
  g.t = static_cast<int64_t>(qkv.extent(0));
  g.sl = seq_local;
  SHARDFLOW_REQUIRE(seq_local > 0 && seq_local % 2 == 0 && g.t % seq_local == 0, op, ": ", g.t,
                    " rows are not sequences of ", seq_local, " local positions (two chunks each)");
  g.b = g.t / g.sl;
  g.c = g.sl / 2;
  g.a = heads;
  g.kvh = map.kv_heads > 0 ? map.kv_heads : heads;
  SHARDFLOW_REQUIRE(heads > 0 && kv.extent(0) == qkv.extent(0) && static_cast<int64_t>(kv.extent(1)) % (2 * g.kvh) == 0,
                    op, ": kv block is [", kv.extent(0), ", ", kv.extent(1), "], want [", g.t, ", 2 · ", g.kvh,
                    " · D]");
  g.d = static_cast<int64_t>(kv.extent(1)) / (2 * g.kvh);
  SHARDFLOW_REQUIRE(static_cast<int64_t>(qkv.extent(1)) >= heads * g.d, op, ": qkv has ", qkv.extent(1),
                    " columns, fewer than the ", heads, " query heads of ", g.d);
  SHARDFLOW_REQUIRE(map.kv_of(0) >= 0 && map.kv_of(heads - 1) < g.kvh, op,
                    ": the query heads need kv heads outside the block's [0, ", g.kvh, ")");
  return g;
}

template <class Vw>
void require_stats(const char* op, const RingDims& g, const Vw& v, const char* name) {
  SHARDFLOW_REQUIRE(static_cast<int64_t>(v.extent(0)) == g.b * g.a * g.sl, op, ": ", name, " has ", v.extent(0),
                    " entries, want b · heads · S_l = ", g.b * g.a * g.sl);
}

// the global chunk of local chunk lc (0 or 1) of context rank r
inline int64_t chunk_of(int r, int lc, int cp) { return lc == 0 ? r : 2 * cp - 1 - r; }

// One unmasked (query chunk, key chunk) pair of a (sequence, head): its rows, the kv head,
// whether it is causal (the same chunk) and where its rows' statistics start.
struct ChunkPair {
  int64_t bi, a, kh;
  Range qrows, krows;
  bool diag;
  int64_t base;  // (bi·A + a)·S_l + first query row
};
// fn(pair) for every pair of the block that is not masked, in a fixed order
template <class Fn>
void for_each_pair(const RingDims& g, const KvMap& map, int cp, int q_rank, int k_rank, Fn&& fn) {
  for (int64_t bi = 0; bi < g.b; ++bi)
    for (int64_t a = 0; a < g.a; ++a)
      for (int lq = 0; lq < 2; ++lq)
        for (int lk = 0; lk < 2; ++lk) {
          const int64_t gq = chunk_of(q_rank, lq, cp), gk = chunk_of(k_rank, lk, cp);
          if (gq < gk) continue;  // the key chunk comes later: masked
          fn(ChunkPair{bi, a, map.kv_of(a), Range(bi * g.sl + lq * g.c, bi * g.sl + (lq + 1) * g.c),
                       Range(bi * g.sl + lk * g.c, bi * g.sl + (lk + 1) * g.c), gq == gk,
                       (bi * g.a + a) * g.sl + lq * g.c});
        }
}

// Row reductions in eight fixed lanes (lane j % 8, then the lanes in order): the same result
// whatever the machine, and loops GCC vectorises without reassociating (an ordered scalar
// sum would keep the exponentials beside it scalar too).
template <class Row>
KOKKOS_INLINE_FUNCTION auto row_max(const Row& r, int64_t n) {
  using S = std::remove_cv_t<std::remove_reference_t<decltype(r(0))>>;
  S lane[8];
  for (int k = 0; k < 8; ++k) lane[k] = r(0);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) lane[k] = r(j + k) > lane[k] ? r(j + k) : lane[k];
  for (; j < n; ++j) lane[0] = r(j) > lane[0] ? r(j) : lane[0];
  S m = lane[0];
  for (int k = 1; k < 8; ++k) m = lane[k] > m ? lane[k] : m;
  return m;
}
template <class Row>
KOKKOS_INLINE_FUNCTION auto row_sum(const Row& r, int64_t n) {
  using S = std::remove_cv_t<std::remove_reference_t<decltype(r(0))>>;
  S lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) lane[k] += r(j + k);
  for (; j < n; ++j) lane[0] += r(j);
  S s = 0;
  for (int k = 0; k < 8; ++k) s += lane[k];
  return s;
}
}  // namespace

template <class Scalar, class Exec>
void RingAttention<Scalar, Exec>::init(typename V::Vec m, typename V::Vec l, typename V::Mat acc) {
  Kokkos::deep_copy(m, -std::numeric_limits<Scalar>::infinity());
  Kokkos::deep_copy(l, Scalar(0));
  Kokkos::deep_copy(acc, Scalar(0));
}

template <class Scalar, class Exec>
void RingAttention<Scalar, Exec>::forward_block(typename V::CMat qkv, int64_t heads, typename V::CMat kv,
                                                const KvMap& map, int64_t seq_local, int cp, int q_rank, int k_rank,
                                                typename V::Vec m, typename V::Vec l, typename V::Mat acc,
                                                typename V::Vec scratch, DType round16) {
  const char* op = "RingAttention::forward_block";
  const RingDims g = ring_dims(op, qkv, heads, kv, map, seq_local, cp, q_rank, k_rank);
  require_stats(op, g, m, "m");
  require_stats(op, g, l, "l");
  SHARDFLOW_REQUIRE(acc.extent(0) == qkv.extent(0) && static_cast<int64_t>(acc.extent(1)) == heads * g.d, op,
                    ": acc is [", acc.extent(0), ", ", acc.extent(1), "], want [", g.t, ", ", heads * g.d, "]");
  SHARDFLOW_REQUIRE(static_cast<int64_t>(scratch.extent(0)) >= g.c * g.c, op, ": scratch of ", scratch.extent(0),
                    " for a chunk of ", g.c, " x ", g.c);
  const double scale = 1.0 / std::sqrt(static_cast<double>(g.d));
  const int64_t C = g.c, d = g.d, kvh = g.kvh;
  typename V::Mat sc(scratch.data(), static_cast<size_t>(C), static_cast<size_t>(C));
  const Scalar ninf = -std::numeric_limits<Scalar>::infinity();
  for_each_pair(g, map, cp, q_rank, k_rank, [&](const ChunkPair& pr) {
    const int64_t a = pr.a, kh = pr.kh, base = pr.base;
    const bool diag = pr.diag;
    auto q = Kokkos::subview(qkv, pr.qrows, Range(a * d, (a + 1) * d));
    auto k = Kokkos::subview(kv, pr.krows, Range(kh * d, (kh + 1) * d));
    auto v = Kokkos::subview(kv, pr.krows, Range((kvh + kh) * d, (kvh + kh + 1) * d));
    auto o = Kokkos::subview(acc, pr.qrows, Range(a * d, (a + 1) * d));
    detail::gemm("N", "T", scale, q, k, 0.0, sc);
    Kokkos::parallel_for(
        "nn::ring_attn_online_softmax", Kokkos::RangePolicy<Exec>(0, C), KOKKOS_LAMBDA(const int64_t i) {
          const int64_t lim = diag ? i + 1 : C;
          auto row = Kokkos::subview(sc, i, Kokkos::ALL());
          const Scalar mx = row_max(row, lim);
          const Scalar mo = m(base + i);
          const Scalar mn = mo > mx ? mo : mx;
          const Scalar corr = mo == ninf ? Scalar(0) : math::exp(mo - mn);
          for (int64_t j = 0; j < lim; ++j) row(j) = math::exp(row(j) - mn);
          const Scalar sum = row_sum(row, lim);
          if (round16 != DType::F32)
            for (int64_t j = 0; j < lim; ++j)
              row(j) = static_cast<Scalar>(round_to(static_cast<float>(row(j)), round16));
          for (int64_t j = lim; j < C; ++j) row(j) = Scalar(0);
          l(base + i) = l(base + i) * corr + sum;
          m(base + i) = mn;
          for (int64_t e = 0; e < d; ++e) o(i, e) *= corr;
        });
    detail::gemm("N", "N", 1.0, sc, v, 1.0, o);
  });
}

template <class Scalar, class Exec>
void RingAttention<Scalar, Exec>::finish(typename V::CVec m, typename V::CVec l, int64_t heads, int64_t seq_local,
                                         typename V::Mat acc, typename V::Vec lse) {
  const int64_t t = static_cast<int64_t>(acc.extent(0));
  SHARDFLOW_REQUIRE(
      heads > 0 && seq_local > 0 && t % seq_local == 0 && static_cast<int64_t>(acc.extent(1)) % heads == 0 &&
          static_cast<int64_t>(m.extent(0)) == t * heads && l.extent(0) == m.extent(0) && lse.extent(0) == m.extent(0),
      "RingAttention::finish: acc [", acc.extent(0), ", ", acc.extent(1), "], m ", m.extent(0), ", l ", l.extent(0),
      ", lse ", lse.extent(0), " for ", heads, " heads");
  const int64_t d = static_cast<int64_t>(acc.extent(1)) / heads, sl = seq_local, A = heads;
  Kokkos::parallel_for(
      "nn::ring_attn_finish", Kokkos::RangePolicy<Exec>(0, t * heads), KOKKOS_LAMBDA(const int64_t r) {
        const int64_t u = r % sl, a = (r / sl) % A, bi = r / (sl * A), row = bi * sl + u;
        const Scalar inv = Scalar(1) / l(r);
        for (int64_t e = 0; e < d; ++e) acc(row, a * d + e) *= inv;
        lse(r) = m(r) + math::log(l(r));
      });
}

template <class Scalar, class Exec>
void RingAttention<Scalar, Exec>::backward_prep(typename V::CMat dout, typename V::CMat out, int64_t heads,
                                                int64_t seq_local, typename V::Vec dvec) {
  const int64_t t = static_cast<int64_t>(out.extent(0));
  SHARDFLOW_REQUIRE(heads > 0 && seq_local > 0 && t % seq_local == 0 && dout.extent(0) == out.extent(0) &&
                        dout.extent(1) == out.extent(1) && static_cast<int64_t>(out.extent(1)) % heads == 0 &&
                        static_cast<int64_t>(dvec.extent(0)) == t * heads,
                    "RingAttention::backward_prep: dout [", dout.extent(0), ", ", dout.extent(1), "], out [",
                    out.extent(0), ", ", out.extent(1), "], dvec ", dvec.extent(0), " for ", heads, " heads");
  const int64_t d = static_cast<int64_t>(out.extent(1)) / heads, sl = seq_local, A = heads;
  Kokkos::parallel_for(
      "nn::ring_attn_dvec", Kokkos::RangePolicy<Exec>(0, t * heads), KOKKOS_LAMBDA(const int64_t r) {
        const int64_t u = r % sl, a = (r / sl) % A, bi = r / (sl * A), row = bi * sl + u;
        Scalar s = 0;
        for (int64_t e = 0; e < d; ++e) s += dout(row, a * d + e) * out(row, a * d + e);
        dvec(r) = s;
      });
}

template <class Scalar, class Exec>
void RingAttention<Scalar, Exec>::backward_block(typename V::CMat dout, typename V::CMat qkv, int64_t heads,
                                                 typename V::CMat kv, const KvMap& map, int64_t seq_local, int cp,
                                                 int q_rank, int k_rank, typename V::CVec lse, typename V::CVec dvec,
                                                 typename V::Mat dqkv, typename V::Mat dkv, typename V::Vec scratch,
                                                 DType round16) {
  const char* op = "RingAttention::backward_block";
  const RingDims g = ring_dims(op, qkv, heads, kv, map, seq_local, cp, q_rank, k_rank);
  require_stats(op, g, lse, "lse");
  require_stats(op, g, dvec, "dvec");
  SHARDFLOW_REQUIRE(dkv.extent(0) == kv.extent(0) && dkv.extent(1) == kv.extent(1) && dqkv.extent(0) == qkv.extent(0) &&
                        static_cast<int64_t>(dqkv.extent(1)) >= heads * g.d && dout.extent(0) == qkv.extent(0) &&
                        static_cast<int64_t>(dout.extent(1)) == heads * g.d,
                    op, ": dout [", dout.extent(0), ", ", dout.extent(1), "], dqkv [", dqkv.extent(0), ", ",
                    dqkv.extent(1), "], dkv [", dkv.extent(0), ", ", dkv.extent(1), "] do not fit the block");
  SHARDFLOW_REQUIRE(static_cast<int64_t>(scratch.extent(0)) >= 2 * g.c * g.c, op, ": scratch of ", scratch.extent(0),
                    " for two chunks of ", g.c, " x ", g.c);
  const double scale = 1.0 / std::sqrt(static_cast<double>(g.d));
  const int64_t C = g.c, d = g.d, kvh = g.kvh;
  typename V::Mat p(scratch.data(), static_cast<size_t>(C), static_cast<size_t>(C));
  typename V::Mat dp(scratch.data() + C * C, static_cast<size_t>(C), static_cast<size_t>(C));
  for_each_pair(g, map, cp, q_rank, k_rank, [&](const ChunkPair& pr) {
    const int64_t a = pr.a, kh = pr.kh, base = pr.base;
    const bool diag = pr.diag;
    const Range qrows = pr.qrows, krows = pr.krows;
    const Range ch(a * d, (a + 1) * d), ck(kh * d, (kh + 1) * d), cv((kvh + kh) * d, (kvh + kh + 1) * d);
    auto q = Kokkos::subview(qkv, qrows, ch);
    auto k = Kokkos::subview(kv, krows, ck);
    auto v = Kokkos::subview(kv, krows, cv);
    auto dO = Kokkos::subview(dout, qrows, ch);
    // P = exp(scale · Q Kᵀ − lse), zero where masked
    detail::gemm("N", "T", scale, q, k, 0.0, p);
    Kokkos::parallel_for(
        "nn::ring_attn_bwd_p", Kokkos::RangePolicy<Exec>(0, C), KOKKOS_LAMBDA(const int64_t i) {
          const int64_t lim = diag ? i + 1 : C;
          const Scalar z = lse(base + i);
          for (int64_t j = 0; j < lim; ++j) p(i, j) = math::exp(p(i, j) - z);
          if (round16 != DType::F32)
            for (int64_t j = 0; j < lim; ++j)
              p(i, j) = static_cast<Scalar>(round_to(static_cast<float>(p(i, j)), round16));
          for (int64_t j = lim; j < C; ++j) p(i, j) = Scalar(0);
        });
    // dV += Pᵀ dO ; dP = dO Vᵀ ; dS = P ⊙ (dP − D)
    detail::gemm("T", "N", 1.0, p, dO, 1.0, Kokkos::subview(dkv, krows, cv));
    detail::gemm("N", "T", 1.0, dO, v, 0.0, dp);
    Kokkos::parallel_for(
        "nn::ring_attn_bwd_ds", Kokkos::RangePolicy<Exec>(0, C), KOKKOS_LAMBDA(const int64_t i) {
          const Scalar dv = dvec(base + i);
          for (int64_t j = 0; j < C; ++j) dp(i, j) = p(i, j) * (dp(i, j) - dv);
          if (round16 != DType::F32)
            for (int64_t j = 0; j < C; ++j)
              dp(i, j) = static_cast<Scalar>(round_to(static_cast<float>(dp(i, j)), round16));
        });
    // dQ += scale · dS K ; dK += scale · dSᵀ Q
    detail::gemm("N", "N", scale, dp, k, 1.0, Kokkos::subview(dqkv, qrows, ch));
    detail::gemm("T", "N", scale, dp, q, 1.0, Kokkos::subview(dkv, krows, ck));
  });
}

template struct RingAttention<float>;
template struct RingAttention<double>;

}  // namespace shardflow::nn
