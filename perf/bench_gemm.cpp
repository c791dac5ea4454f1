// bench_gemm: the host f32 GEMM libraries (core/gemm.hpp) on the products one training step
// of a deck's model runs on one rank, side by side in the same process: OpenBLAS (the
// kernel core/blas.hpp chose) against oneDNN's dnnl_sgemm, per product and per transposition,
// and what shardflow's policy (SHARDFLOW_GEMM, default auto) makes of them.
//
// The products, for T = b·S tokens per rank (b = --batch sequences): per layer the four
// linear layers (qkv [3H, H], out [H, H], gate_up [2F, H], down [H, F]), each forward
// (T×out×in, A·Bᵀ), input gradient (T×in×out, A·B) and weight gradient (out×in×T, Aᵀ·B,
// accumulated: beta 1), and the attention core per (sequence, head) as nn::Attention runs it:
// per causal block of 64 query rows (rows [r0, r1) see keys [0, r1)) the scores (A·Bᵀ, scaled,
// into the block's window of the S×S probabilities), the context (A·B, into the head's D
// columns of the output, ldc H) and the four backward products (dV, dK, dQ into the head's
// columns of dqkv, ldc 3H; dP into the S×S scratch), with the step's alpha and beta; once per
// step the head (T×V×H and its two gradients). Column ldc: C's row stride where the step
// writes into a window of a wider matrix (else n); the attention products' A and B are
// windows too (of qkv, the output gradient and the probabilities), with their strides.
// Where beta is 0 the window of C starts as NaN (it must not leak), and the columns past
// n must come out unchanged; both count in #wrong. Samples alternate between the libraries
// (best of --reps per product and library), so a slow phase of the machine hits both.
//
// The third column is what train.precision = bf16 multiplies with where oneDNN's bf16 matmul
// is used (core/gemm.hpp, SHARDFLOW_GEMM_BF16): the same operands rounded to bf16 and
// multiplied by host_gemm_bf16_native (rounding included in its time), with its speed over
// oneDNN's sgemm (what a bf16 step multiplies with otherwise).
//
// Checks (#wrong): every product of both libraries against the other within 1e-5 relative
// of Σ|a·b|, on the same random operands; the bf16 matmul against a double product of the
// rounded operands, within the same bound.
//
// Usage: bench_gemm [--batch B] [--seq S] [--hidden H] [--heads A] [--ffn F] [--vocab V]
//                   [--reps N]      (defaults: inputs/bench.toml's model, 4 sequences)
#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/blas.hpp"
#include "core/gemm.hpp"
#include "core/half.hpp"
#include "core/threads.hpp"

using namespace shardflow;

namespace {

struct Product {
  std::string what;
  char ta, tb;
  int m, n, k;
  float beta;
  int count;  // how many times one step runs it
  int ldc = 0;  // C's row stride (0: n, a dense C)
  float alpha = 1.0f;
  int lda = 0, ldb = 0;  // A's and B's row strides (0: dense)
};

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

int main(int argc, char** argv) {
  ensure_best_blas_kernel(argc, argv);  // may re-execute: first thing
  limit_blas_threads();
  int batch = 4, seq = 128, hidden = 256, heads = 4, ffn = 688, vocab = 256, reps = 30;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (k == "--batch") batch = v;
    else if (k == "--seq") seq = v;
    else if (k == "--hidden") hidden = v;
    else if (k == "--heads") heads = v;
    else if (k == "--ffn") ffn = v;
    else if (k == "--vocab") vocab = v;
    else if (k == "--reps") reps = v;
    else {
      std::fprintf(stderr, "bench_gemm: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  const GemmPolicy& pol = gemm_policy();
  if (!pol.onednn_built || !pol.onednn_verified) {
    std::printf("# bench_gemm: no verified oneDNN in this build (%s): nothing to compare\n", pol.summary().c_str());
    return 0;
  }
  const int T = batch * seq, H = hidden, D = hidden / heads, F = ffn, V = vocab, SH = batch * heads;
  std::vector<Product> ps;
  auto linear = [&](const std::string& name, int out, int in, int per_step) {
    ps.push_back({name + " fwd", 'N', 'T', T, out, in, 0.0f, per_step});
    ps.push_back({name + " dx", 'N', 'N', T, in, out, 0.0f, per_step});
    ps.push_back({name + " dw", 'T', 'N', out, in, T, 1.0f, per_step});
  };
  const int layers = 1;  // per layer; the step runs L of them, the ratios do not depend on L
  linear("qkv", 3 * H, H, layers);
  linear("out", H, H, layers);
  linear("gate_up", 2 * F, H, layers);
  linear("down", H, F, layers);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  constexpr int kBlock = 64;  // nn::Attention's causal block
  const int nblk = (seq + kBlock - 1) / kBlock;
  for (int blk = 0; blk < nblk; ++blk) {  // forward
    const int r0 = blk * kBlock, r1 = std::min(seq, r0 + kBlock), rows = r1 - r0;
    const std::string b = " b" + std::to_string(blk);
    // q, k, v are a head's columns of qkv (3H wide), p a window of the S x S probabilities
    ps.push_back({"scores q·kᵀ" + b, 'N', 'T', rows, r1, D, 0.0f, SH * layers, seq, scale, 3 * H, 3 * H});
    ps.push_back({"context p·v" + b, 'N', 'N', rows, D, r1, 0.0f, SH * layers, H, 1.0f, seq, 3 * H});
  }
  for (int blk = nblk - 1; blk >= 0; --blk) {  // backward, last block first; the first dV/dK of a head set
    const int r0 = blk * kBlock, r1 = std::min(seq, r0 + kBlock), rows = r1 - r0;
    const std::string b = " b" + std::to_string(blk);
    const float beta_kv = blk == nblk - 1 ? 0.0f : 1.0f;
    // dO is a head's columns of the output gradient (H wide), dS a window of the S x S scratch
    ps.push_back({"d(v) = pᵀ·do" + b, 'T', 'N', r1, D, rows, beta_kv, SH * layers, 3 * H, 1.0f, seq, H});
    ps.push_back({"d(p) = do·vᵀ" + b, 'N', 'T', rows, r1, D, 0.0f, SH * layers, seq, 1.0f, H, 3 * H});
    ps.push_back({"d(q) = ds·k" + b, 'N', 'N', rows, D, r1, 0.0f, SH * layers, 3 * H, scale, seq, 3 * H});
    ps.push_back({"d(k) = dsᵀ·q" + b, 'T', 'N', r1, D, rows, beta_kv, SH * layers, 3 * H, scale, seq, 3 * H});
  }
  linear("head", V, H, 1);

  std::printf("# bench_gemm: the host f32 products of one step per rank, OpenBLAS vs oneDNN, one thread\n");
  std::printf("# model T=%d tokens per rank (batch %d x seq %d), H=%d, heads %d, F=%d, V=%d; best of %d alternating samples\n",
              T, batch, seq, H, heads, F, V, reps);
  std::printf("# %s\n", blas_info().summary().c_str());
  std::printf("#%-17s %2s %6s %6s %6s %6s %5s %10s %10s %10s %7s %10s %7s\n", "product", "op", "m", "n", "k", "ldc",
              "x", "openblas", "onednn", "policy", "dnnl/ob", "bf16", "bf/dnnl");
  std::printf("#%-17s %2s %6s %6s %6s %6s %5s %10s %10s %10s %7s %10s %7s\n", "", "", "", "", "", "", "", "GFLOP/s",
              "GFLOP/s", "uses", "speed", "GFLOP/s", "speed");
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  double t_ob = 0, t_dn = 0, t_pol = 0, t_bf = 0;
  double tt_ob[2][2] = {{0, 0}, {0, 0}}, tt_dn[2][2] = {{0, 0}, {0, 0}};
  long wrong = 0;
  for (const Product& p : ps) {
    const int ar = p.ta == 'N' ? p.m : p.k, ac = p.ta == 'N' ? p.k : p.m;
    const int br = p.tb == 'N' ? p.k : p.n, bc = p.tb == 'N' ? p.n : p.k;
    const int ldc = p.ldc > 0 ? p.ldc : p.n, lda = p.lda > 0 ? p.lda : ac, ldb = p.ldb > 0 ? p.ldb : bc;
    std::vector<float> a(static_cast<size_t>(ar) * lda), b(static_cast<size_t>(br) * ldb),
        c0(static_cast<size_t>(p.m) * ldc);
    for (auto& x : a) x = u(rng);
    for (auto& x : b) x = u(rng);
    // C's window: NaN where beta is 0 (never read, must not leak), else random; its
    // neighbours past column n: kGap, which no product may change
    constexpr float kGap = -7.25f;
    for (int i = 0; i < p.m; ++i)
      for (int j = 0; j < ldc; ++j)
        c0[static_cast<size_t>(i) * ldc + j] =
            j >= p.n ? kGap : (p.beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : u(rng));
    std::vector<float> c[3] = {c0, c0, c0};
    const GemmLibrary libs[2] = {GemmLibrary::OpenBlas, GemmLibrary::OneDnn};
    double best[3] = {HUGE_VAL, HUGE_VAL, HUGE_VAL};
    for (int r = 0; r < reps; ++r)
      for (int l = 0; l < 3; ++l) {
        std::copy(c0.begin(), c0.end(), c[l].begin());
        const double t0 = now();
        if (l < 2)
          host_sgemm_with(libs[l], p.ta, p.tb, p.m, p.n, p.k, p.alpha, a.data(), lda, b.data(), ldb, p.beta,
                          c[l].data(), ldc);
        else
          host_gemm_bf16_native(p.ta, p.tb, p.m, p.n, p.k, p.alpha, a.data(), lda, b.data(), ldb, p.beta, c[2].data(),
                                ldc);
        best[l] = std::min(best[l], now() - t0);
      }
    // the two libraries agree (and so each is right to f32 rounding)
    for (int i = 0; i < p.m; ++i)
      for (int j = 0; j < p.n; ++j) {
        double mag = p.beta != 0.0f ? std::fabs(c0[static_cast<size_t>(i) * ldc + j]) : 0.0;
        for (int q = 0; q < p.k; ++q) {
          const double av = p.ta == 'N' ? a[static_cast<size_t>(i) * lda + q] : a[static_cast<size_t>(q) * lda + i];
          const double bv = p.tb == 'N' ? b[static_cast<size_t>(q) * ldb + j] : b[static_cast<size_t>(j) * ldb + q];
          mag += std::fabs(p.alpha * av * bv);
        }
        const size_t e = static_cast<size_t>(i) * ldc + j;
        if (!(std::fabs(static_cast<double>(c[0][e]) - c[1][e]) <= 1e-5 * mag)) ++wrong;
      }
    // the bf16 matmul: a double product of the operands rounded to bf16
    auto r16 = [](float x) { return static_cast<double>(static_cast<float>(bf16(x))); };
    for (int i = 0; i < p.m; ++i)
      for (int j = 0; j < p.n; ++j) {
        const size_t e = static_cast<size_t>(i) * ldc + j;
        double ref = p.beta != 0.0f ? static_cast<double>(p.beta) * c0[e] : 0.0, mag = std::fabs(ref);
        for (int q = 0; q < p.k; ++q) {
          const double av =
              r16(p.ta == 'N' ? a[static_cast<size_t>(i) * lda + q] : a[static_cast<size_t>(q) * lda + i]);
          const double bv =
              r16(p.tb == 'N' ? b[static_cast<size_t>(q) * ldb + j] : b[static_cast<size_t>(j) * ldb + q]);
          ref += static_cast<double>(p.alpha) * av * bv;
          mag += std::fabs(static_cast<double>(p.alpha) * av * bv);
        }
        if (!(std::fabs(static_cast<double>(c[2][e]) - ref) <= 1e-5 * mag)) ++wrong;
      }
    for (const auto& out : c)  // the window's neighbours are as they were
      for (int i = 0; i < p.m; ++i)
        for (int j = p.n; j < ldc; ++j) wrong += out[static_cast<size_t>(i) * ldc + j] != kGap;
    const double flop = 2.0 * p.m * p.n * p.k;
    const GemmLibrary use = gemm_library();
    const int ui = use == GemmLibrary::OneDnn ? 1 : 0;
    t_ob += best[0] * p.count;
    t_dn += best[1] * p.count;
    t_pol += best[ui] * p.count;
    t_bf += best[2] * p.count;
    tt_ob[p.ta == 'T'][p.tb == 'T'] += best[0] * p.count;
    tt_dn[p.ta == 'T'][p.tb == 'T'] += best[1] * p.count;
    const char op[3] = {p.ta == 'N' ? 'N' : 'T', p.tb == 'N' ? 'N' : 'T', 0};
    std::printf(" %-17s %2s %6d %6d %6d %6d %5d %10.1f %10.1f %10s %7.2f %10.1f %7.2f\n", p.what.c_str(), op, p.m, p.n,
                p.k, ldc, p.count, flop / best[0] / 1e9, flop / best[1] / 1e9, to_string(use), best[0] / best[1],
                flop / best[2] / 1e9, best[1] / best[2]);
  }
  std::printf("# per transposition (time-weighted over the step's products), oneDNN speed / OpenBLAS:");
  const char* names[2][2] = {{"A·B", "A·Bᵀ"}, {"Aᵀ·B", "Aᵀ·Bᵀ"}};
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      if (tt_dn[i][j] > 0) std::printf(" %s %.3f", names[i][j], tt_ob[i][j] / tt_dn[i][j]);
  std::printf("\n# one layer + head, summed as one step runs them: openblas %.3f ms, onednn %.3f ms, policy (%s) %.3f ms\n",
              t_ob * 1e3, t_dn * 1e3, pol.setting.c_str(), t_pol * 1e3);
  std::printf("# policy speed / openblas only: %.3f   onednn only / openblas only: %.3f\n", t_ob / t_pol, t_ob / t_dn);
  std::printf("# bf16 operands: onednn bf16 matmul %.3f ms, speed / onednn sgemm %.3f (%s)\n", t_bf * 1e3, t_dn / t_bf,
              bf16_gemm_summary().c_str());
  std::printf("# #wrong %ld\n", wrong);
  return wrong == 0 ? 0 : 1;
}
