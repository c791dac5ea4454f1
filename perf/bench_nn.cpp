// bench_nn: forward + backward of the reference GPT on one rank (f32), on real bytes from
// the shipped corpus, reporting tokens/s, model GFLOP/s and the ratio to the single-core
// sgemm rate measured in the same run: the faster of the host GEMM's two libraries
// (core/gemm.hpp: OpenBLAS and oneDNN), as `shardflow train`'s MFU denominator.
//
// Model FLOPs per step (forward + backward) = 6 · N_mm · T + 12 · L · S · H · T, with
// N_mm = L · (4H² + 3FH) + V·H the parameters that take part in matmuls and T = b · S the
// tokens (nn::gpt_model_flops). Forward alone is a third of that.
//
// Checks its own results (#wrong): the initial loss is finite and near ln V, two runs of
// the same step give bitwise-equal loss and gradients, and the sgemm result matches a
// plain-loop reference on sampled entries.
//
// The optimizer row: the global squared norm plus one AdamW update of every parameter (the
// work of `Trainer::update` on one rank holding the whole model). It moves 7 · 4 bytes per
// parameter (p, g, m, v read; p, m, v written), so its limit is the memory bandwidth: it is
// reported against memcpy of the same number of bytes (half read, half written) in the same
// run. Checked: the update equals a double-precision reference to 1e-5 relative on sampled
// entries, and the norm equals a serial double sum to 1e-12 relative.
#include <Kokkos_Core.hpp>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

#include "core/blas.hpp"
#include "core/gemm.hpp"
#include "data/loader.hpp"
#include "nn/gpt.hpp"
#include "optim/adamw.hpp"

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
/// CPU time of this thread: on a shared machine it leaves out the time other processes ran.
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct Options {
  int iters = 10;
  int64_t batch = 8, hidden = 256, heads = 4, ffn = 688, layers = 4, vocab = 256, seq = 128;
  int64_t sgemm_n = 1024;
  std::string corpus = SHARDFLOW_CORPUS_PATH;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_nn: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--iters") o.iters = std::atoi(next());
    else if (a == "--batch") o.batch = std::atol(next());
    else if (a == "--hidden") o.hidden = std::atol(next());
    else if (a == "--heads") o.heads = std::atol(next());
    else if (a == "--ffn") o.ffn = std::atol(next());
    else if (a == "--layers") o.layers = std::atol(next());
    else if (a == "--seq") o.seq = std::atol(next());
    else if (a == "--sgemm-n") o.sgemm_n = std::atol(next());
    else if (a == "--corpus") o.corpus = next();
    else if (a == "--help") {
      std::printf("bench_nn [--iters N] [--batch B] [--hidden H] [--heads A] [--ffn F] [--layers L] [--seq S]\n"
                  "         [--sgemm-n N] [--corpus PATH]\n");
      std::exit(0);
    } else {
      std::fprintf(stderr, "bench_nn: unknown option %s (try --help)\n", a.c_str());
      std::exit(2);
    }
  }
  return o;
}

/// Square sgemm C = A·Bᵀ through each host GEMM library the build has (core/gemm.hpp): the
/// operands, one timed call per library (the faster counts), and a check of sampled
/// entries against a plain-loop reference.
struct Sgemm {
  using M = Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace>;
  int64_t n;
  M a, b, c;
  explicit Sgemm(int64_t size) : n(size), a("a", size, size), b("b", size, size), c("c", size, size) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        a(i, j) = static_cast<float>(((i * 7 + j * 3) % 17) - 8) / 16.0f;
        b(i, j) = static_cast<float>(((i * 5 + j * 11) % 13) - 6) / 8.0f;
      }
  }
  double flops() const { return 2.0 * static_cast<double>(n) * n * n; }
  /// {wall, thread CPU} seconds of one call.
  std::pair<double, double> time_once() {
    std::pair<double, double> best{HUGE_VAL, HUGE_VAL};
    const shardflow::GemmPolicy& p = shardflow::gemm_policy();
    for (auto lib : {shardflow::GemmLibrary::OpenBlas, shardflow::GemmLibrary::OneDnn}) {
      if (lib == shardflow::GemmLibrary::OneDnn && !(p.onednn_built && p.onednn_verified)) continue;
      const auto t0 = Clock::now();
      const double c0 = thread_cpu_seconds();
      shardflow::host_sgemm_with(lib, 'N', 'T', n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
      const std::pair<double, double> t{seconds_since(t0), thread_cpu_seconds() - c0};
      if (t.first < best.first) best = t;
    }
    return best;
  }
  int wrong() const {
    int w = 0;
    for (int64_t k = 0; k < 64; ++k) {
      const int64_t i = (k * 131) % n, j = (k * 577 + 3) % n;
      double ref = 0;
      for (int64_t p = 0; p < n; ++p) ref += static_cast<double>(a(i, p)) * static_cast<double>(b(j, p));
      if (std::abs(ref - c(i, j)) > 1e-4 * (1 + std::abs(ref))) ++w;
    }
    return w;
  }
};
}  // namespace

int main(int argc, char** argv) {
  shardflow::ensure_best_blas_kernel(argc, argv);  // may re-execute: first thing
  // One BLAS thread per rank: OpenBLAS reads this when it is loaded, so set it and restart.
  if (std::getenv("OPENBLAS_NUM_THREADS") == nullptr) {
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    execv("/proc/self/exe", argv);
  }
  const Options o = parse(argc, argv);
  Kokkos::ScopeGuard guard(argc, argv);
  int wrong = 0;
  {
    shardflow::nn::GptConfig cfg;
    cfg.vocab = o.vocab;
    cfg.seq = o.seq;
    cfg.hidden = o.hidden;
    cfg.heads = o.heads;
    cfg.ffn = o.ffn;
    cfg.layers = o.layers;
    cfg.validate();
    const int64_t tokens = o.batch * o.seq;
    const double flops = shardflow::nn::gpt_model_flops(cfg, tokens);

    shardflow::data::DataLoader loader(shardflow::data::Corpus::load(o.corpus), 1234, o.batch, o.seq);
    std::vector<shardflow::data::Batch> batches;
    for (int s = 1; s <= 4; ++s) batches.push_back(loader.global_batch(s));
    using Tok = Kokkos::View<int32_t*, Kokkos::HostSpace>;
    std::vector<Tok> in, tg;
    for (const auto& b : batches) {
      in.emplace_back("in", tokens);
      tg.emplace_back("tg", tokens);
      std::memcpy(in.back().data(), b.inputs.data(), sizeof(int32_t) * tokens);
      std::memcpy(tg.back().data(), b.targets.data(), sizeof(int32_t) * tokens);
    }

    shardflow::nn::GptModel<float> model(cfg, o.batch);
    model.init(1234);
    std::printf("# shardflow bench_nn: GPT forward+backward on one rank, f32, OPENBLAS_NUM_THREADS=%s\n",
                std::getenv("OPENBLAS_NUM_THREADS"));
    std::printf("# model V=%ld S=%ld H=%ld A=%ld F=%ld L=%ld, batch %ld (%ld tokens/step), %ld parameters (%ld in matmuls)\n",
                long(cfg.vocab), long(cfg.seq), long(cfg.hidden), long(cfg.heads), long(cfg.ffn), long(cfg.layers),
                long(o.batch), long(tokens), long(shardflow::nn::gpt_num_params(cfg)),
                long(shardflow::nn::gpt_matmul_params(cfg)));
    std::printf("# model FLOPs/step = 6*N_mm*T + 12*L*S*H*T = %.3f GFLOP (forward: a third)\n", flops / 1e9);

    // correctness: initial loss near ln V, bitwise reproducibility
    const double l0 = model.forward_backward(in[0], tg[0]);
    std::vector<float> g0(model.grads_flat().data(), model.grads_flat().data() + model.grads_flat().extent(0));
    const double l1 = model.forward_backward(in[0], tg[0]);
    if (!std::isfinite(l0) || std::abs(l0 - std::log(double(cfg.vocab))) > 1.0) ++wrong;  // 0.02 init: near-uniform
    if (l0 != l1 || std::memcmp(g0.data(), model.grads_flat().data(), sizeof(float) * g0.size()) != 0) ++wrong;

    // The sgemm reference is timed inside the same loop as the model, so that both see the
    // same machine (other processes, clocks); rates are best-of-iterations for both.
    Sgemm ref(o.sgemm_n);
    ref.time_once();
    wrong += ref.wrong();
    // best wall / best thread-CPU seconds: fwd+bwd, forward, sgemm; and the mean wall fwd+bwd
    double w_fb = 1e300, c_fb = 1e300, w_f = 1e300, c_f = 1e300, w_g = 1e300, c_g = 1e300, sum_fb = 0;
    // the products of the best fwd+bwd, as it ran them (host_sgemm timed call by call)
    double mm_s = 0, mm_flops = 0;
    std::int64_t mm_calls = 0;
    for (int it = 0; it < o.iters; ++it) {
      const size_t k = static_cast<size_t>(it) % in.size();
      auto t0 = Clock::now();
      double c0 = thread_cpu_seconds();
      double dt = 0;
      {
        shardflow::GemmTally tally;
        model.forward_backward(in[k], tg[k]);
        dt = seconds_since(t0);
        if (dt < w_fb) {
          mm_s = tally.seconds();
          mm_flops = tally.flops();
          mm_calls = tally.calls();
        }
      }
      c_fb = std::min(c_fb, thread_cpu_seconds() - c0);
      w_fb = std::min(w_fb, dt);
      sum_fb += dt;
      t0 = Clock::now();
      c0 = thread_cpu_seconds();
      model.forward(in[k], tg[k]);
      w_f = std::min(w_f, seconds_since(t0));
      c_f = std::min(c_f, thread_cpu_seconds() - c0);
      const auto g = ref.time_once();
      w_g = std::min(w_g, g.first);
      c_g = std::min(c_g, g.second);
    }
    // the optimizer over the whole model, against memcpy of the same bytes
    const int64_t np = static_cast<int64_t>(model.params_flat().extent(0));
    using FV = Kokkos::View<float*, Kokkos::HostSpace>;
    FV m("m", np), v("v", np), p0("p0", np);
    Kokkos::deep_copy(p0, model.params_flat());
    model.forward_backward(in[0], tg[0]);
    const auto g = model.grads_flat();
    shardflow::optim::AdamWConfig oc;
    using Opt = shardflow::optim::AdamW<float, Kokkos::DefaultHostExecutionSpace>;
    {  // check one update against a double reference
      double sq_ref = 0;
      for (int64_t i = 0; i < np; ++i) sq_ref += double(g(i)) * double(g(i));
      const double sq = Opt::sum_of_squares(g);
      if (std::abs(sq - sq_ref) > 1e-12 * sq_ref) ++wrong;
      const auto st = shardflow::optim::make_step(oc, 1, sq);
      FV pc("pc", np);
      Kokkos::deep_copy(pc, p0);
      Opt::update(pc, g, m, v, st, true);
      for (int64_t k = 0; k < 4096; ++k) {
        const int64_t i = (k * 7919) % np;
        const double gi = st.grad_scale * g(i);
        const double mi = (1 - st.beta1) * gi, vi = (1 - st.beta2) * gi * gi;
        const double want = p0(i) * (1 - st.lr * st.weight_decay) - st.lr * (mi / st.bias1) / (std::sqrt(vi / st.bias2) + st.eps);
        if (std::abs(pc(i) - want) > 1e-5 * (std::abs(want) + 1e-3)) ++wrong;
      }
      Kokkos::deep_copy(m, 0.0f);
      Kokkos::deep_copy(v, 0.0f);
    }
    const size_t opt_bytes = 28 * static_cast<size_t>(np);
    std::vector<char> src(opt_bytes / 2), dst(opt_bytes / 2);
    std::memset(src.data(), 1, src.size());
    std::memset(dst.data(), 2, dst.size());
    FV pw("pw", np);
    Kokkos::deep_copy(pw, p0);
    double w_o = 1e300, c_o = 1e300, w_m = 1e300;
    for (int it = 0; it < 3 * o.iters; ++it) {
      auto t0 = Clock::now();
      const double c0 = thread_cpu_seconds();
      const double sq = Opt::sum_of_squares(g);
      Opt::update(pw, g, m, v, shardflow::optim::make_step(oc, it + 1, sq), true);
      w_o = std::min(w_o, seconds_since(t0));
      c_o = std::min(c_o, thread_cpu_seconds() - c0);
      t0 = Clock::now();
      std::memcpy(dst.data(), src.data(), src.size());
      w_m = std::min(w_m, seconds_since(t0));
      src[static_cast<size_t>(it) % src.size()] ^= dst[(static_cast<size_t>(it) * 31) % dst.size()];
    }
    const double mean_fb = sum_fb / o.iters;
    const double sgemm_w = ref.flops() / w_g / 1e9, sgemm_c = ref.flops() / c_g / 1e9;
    std::printf("# sgemm %ld^3, the faster of OpenBLAS and oneDNN, interleaved with the model, best of %d: %.2f GFLOP/s wall, "
                "%.2f GFLOP/s thread-CPU time\n",
                long(o.sgemm_n), o.iters, sgemm_w, sgemm_c);
    std::printf("#%-14s %9s %11s %9s %9s %10s %9s\n", "phase", "wall_ms", "tokens/s", "GFLOP/s", "vs_sgemm", "cpu_ms",
                "vs_sgemm");
    auto row = [&](const char* name, double w, double c, double f) {
      std::printf(" %-14s %9.2f %11.0f %9.2f %9.3f %10.2f %9.3f\n", name, w * 1e3, tokens / w, f / w / 1e9,
                  f / w / 1e9 / sgemm_w, c * 1e3, c > 0 ? f / c / 1e9 / sgemm_c : 0.0);
    };
    row("fwd+bwd(best)", w_fb, c_fb, flops);
    std::printf(" %-14s %9.2f %11.0f %9.2f %9.3f\n", "fwd+bwd(mean)", mean_fb * 1e3, tokens / mean_fb,
                flops / mean_fb / 1e9, flops / mean_fb / 1e9 / sgemm_w);
    row("forward(best)", w_f, c_f, flops / 3);
    std::printf(
        "# products in the best fwd+bwd, timed call by call as it ran them: %ld calls, %.3f GFLOP in %.2f ms = "
        "%.2f GFLOP/s, %.3f of sgemm; the rest of fwd+bwd %.2f ms\n",
        long(mm_calls), mm_flops / 1e9, mm_s * 1e3, mm_flops / mm_s / 1e9, mm_flops / mm_s / 1e9 / sgemm_w,
        (w_fb - mm_s) * 1e3);
    std::printf("# optimizer: norm + AdamW update of %ld parameters, %.1f MB moved; memcpy of the same bytes, best of %d\n",
                long(np), opt_bytes / 1e6, 3 * o.iters);
    std::printf(" %-14s %9.3f ms %8.2f GB/s | memcpy %8.3f ms %8.2f GB/s | optimizer/memcpy bandwidth %.3f (cpu %.3f ms)\n",
                "adamw(best)", w_o * 1e3, opt_bytes / w_o / 1e9, w_m * 1e3, opt_bytes / w_m / 1e9, w_m / w_o, c_o * 1e3);
    // What an MFU of 0.8 would leave: a training step is fwd+bwd plus the optimizer; the
    // products take what they took above, and everything else must fit in the remainder.
    const double step_08 = flops / (0.8 * sgemm_w * 1e9);
    std::printf(
        "# MFU 0.8 (against the sgemm above): a step of %.2f ms; with the products as above, %.2f ms for "
        "everything else (non-product work of fwd+bwd now %.2f ms, the optimizer %.2f ms)\n",
        step_08 * 1e3, (step_08 - mm_s) * 1e3, (w_fb - mm_s) * 1e3, w_o * 1e3);
    if (mm_calls == 0 || mm_flops <= 0) ++wrong;  // the model's products went past host_sgemm
    std::printf("# initial loss %.6f (ln V = %.6f), iterations %d\n", l0, std::log(double(cfg.vocab)), o.iters);
  }
  std::printf("# #wrong: %d\n", wrong);
  return wrong == 0 ? 0 : 1;
}
