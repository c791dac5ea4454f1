// `shardflow calibrate` (sim/calibrate.hpp): this machine's GEMM curve, memory bandwidth,
// elementwise efficiency and MPI link, written as a cluster file.
#include "sim/calibrate.hpp"

#include <unistd.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "core/blas.hpp"
#include "core/error.hpp"
#include "core/gemm.hpp"
#include "nn/kernels.hpp"
#include "optim/adamw.hpp"

namespace shardflow::sim {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// The median time of fn(set) over at least `reps` calls and `min_s` seconds, the call i
// on operand set i mod sets: a step's kernels read operands that other kernels touched
// last (not the warm caches of one call repeated), and a step's median time is what the
// simulation is compared with (not the fastest moment of a VM whose cores change speed).
template <class F>
double typical_of(F&& fn, int sets, int reps, double min_s) {
  std::vector<double> t;
  fn(0);  // first touch
  const double t_end = now() + min_s;
  for (int r = 0; r < reps || now() < t_end; ++r) {
    const double t0 = now();
    fn((r + 1) % sets);
    t.push_back(now() - t0);
    if (r > 10000) break;
  }
  std::nth_element(t.begin(), t.begin() + static_cast<long>(t.size() / 2), t.end());
  return t[t.size() / 2];
}

// Operand sets that together exceed the caches a core can keep warm between kernels
// (this CPU's L2 is 2 MiB; 24 MiB is several times any core's), 2 to 32 of them.
int sets_for(double bytes_per_set) {
  return static_cast<int>(std::clamp(std::ceil(24.0 * (1 << 20) / std::max(bytes_per_set, 1.0)), 2.0, 32.0));
}

double mem_total_gib() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kb = 0;
  while (f >> key >> kb) {
    if (key == "MemTotal:") return kb / 1048576.0;
    std::string unit;
    f >> unit;
  }
  return 0;
}

}  // namespace

std::string local_cluster_path() {
  if (const char* d = std::getenv("SHARDFLOW_CLUSTERS"); d != nullptr && *d != 0) return std::string(d) + "/local.toml";
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != 0) return std::string(x) + "/shardflow/local.toml";
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr && *home != 0 ? home : ".") + "/.cache/shardflow/local.toml";
}

std::string calibrate_local(MPI_Comm comm, const CalibrationOptions& options) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  const int reps = options.quick ? 3 : 10;
  const double min_s = options.quick ? 0.02 : 0.1;
  std::ostringstream os;
  // Every rank measures at once, as every rank computes at once in a step (they share the
  // memory system and, on a VM, the host), and the file takes the slowest rank's figure: a
  // synchronous step waits for its slowest rank at every collective (on this VM the two
  // cores' speeds differ by up to a third at a time, and trade places).
  auto slowest_rank = [&](double rate) {
    MPI_Allreduce(MPI_IN_PLACE, &rate, 1, MPI_DOUBLE, MPI_MIN, comm);
    return rate;
  };
  using V = nn::ViewTypes<float, Kokkos::DefaultExecutionSpace>;
  using Mat = Kokkos::View<float**, Kokkos::LayoutRight>;
  // GEMM by size, through the model's gemm path
  std::vector<std::pair<int, double>> rate;
  double peak = 0, peak16 = 0;
  // bf16 operands: the same products inside a GemmOperandScope(BF16), as a bf16 step runs
  // them (oneDNN's bf16 matmul where it is faster, core/gemm.hpp; else the same sgemm)
  // (every rank or none, as the trainer agrees: the measurements below are collective)
  const bool bf16_matmul = slowest_rank(bf16_gemm_native() ? 1.0 : 0.0) > 0;
  for (int n : {32, 64, 128, 256, 512, 1024}) {
    const int sets = sets_for(3.0 * n * n * sizeof(float));
    std::vector<Mat> x, w, y;
    for (int i = 0; i < sets; ++i) {
      x.emplace_back("x", n, n);
      w.emplace_back("w", n, n);
      y.emplace_back("y", n, n);
      Kokkos::deep_copy(x.back(), 0.5f);
      Kokkos::deep_copy(w.back(), 0.25f);
    }
    MPI_Barrier(comm);
    // the three products of a linear layer: forward (x·wᵀ), input gradient (dy·w) and
    // weight gradient (dyᵀ·x), as the step runs them; their rate (the slowest rank's)
    auto linear_rate = [&] {
      const double t =
          typical_of([&](int i) { nn::Linear<float>::forward(typename V::CMat(x[i]), typename V::CMat(w[i]), y[i]); },
                     sets, reps, min_s) +
          typical_of(
              [&](int i) { nn::Linear<float>::backward_input(typename V::CMat(x[i]), typename V::CMat(w[i]), y[i]); },
              sets, reps, min_s) +
          typical_of(
              [&](int i) { nn::Linear<float>::backward_weight(typename V::CMat(x[i]), typename V::CMat(w[i]), y[i]); },
              sets, reps, min_s);
      return slowest_rank(3 * 2.0 * n * n * n / t);
    };
    const double r = linear_rate();
    rate.emplace_back(n, r);
    peak = std::max(peak, r);
    if (bf16_matmul) {
      const GemmOperandScope bf16_operands(DType::BF16);
      peak16 = std::max(peak16, linear_rate());
    }
  }
  if (!bf16_matmul) peak16 = peak;  // bf16 operands go through the same sgemm
  // memory: STREAM's triad (McCalpin) a = b + s·c on 64 MiB arrays, the bytes of its
  // two reads and one write; the model's elementwise kernels stream several operands too
  const size_t n = size_t{16} << 20;  // floats
  Kokkos::View<float*> a("a", n), b("b", n), c("c", n);
  Kokkos::deep_copy(a, 1.0f);
  Kokkos::deep_copy(b, 2.0f);
  Kokkos::deep_copy(c, 3.0f);
  MPI_Barrier(comm);
  const double tc = typical_of(
      [&](int) {
        float* __restrict__ pa = a.data();
        const float* __restrict__ pb = b.data();
        const float* __restrict__ pc = c.data();
        for (size_t i = 0; i < n; ++i) pa[i] = pb[i] + 0.5f * pc[i];
      },
      1, reps, min_s);
  const double bw = slowest_rank(3.0 * static_cast<double>(n * sizeof(float)) / tc);
  // the model's non-GEMM kernels at a micro-batch of the bench deck's size (512 tokens,
  // H = 256, F = 688, 4 heads of 128 positions), each charged the bytes the simulator
  // counts for it: their total over their total time, against the triad
  const int64_t T = 512, H = 256, F = 688, A = 4, S = 128;
  const int sets = sets_for(static_cast<double>(T * (2 * F + F + 2 * H + 4 * H) + (T / S) * A * S * S) * 4);
  std::vector<Mat> gu, hh, xs, ns, qkv, att;
  std::vector<Kokkos::View<float*>> rstd;
  std::vector<Kokkos::View<float***, Kokkos::LayoutRight>> probs;
  Kokkos::View<float*> g("g", H);
  Kokkos::deep_copy(g, 1.0f);
  for (int i = 0; i < sets; ++i) {
    gu.emplace_back("gu", T, 2 * F);
    hh.emplace_back("h", T, F);
    xs.emplace_back("x", T, H);
    ns.emplace_back("n", T, H);
    qkv.emplace_back("qkv", T, 3 * H);
    att.emplace_back("att", T, H);
    rstd.emplace_back("rstd", T);
    probs.emplace_back("probs", T / S * A, S, S);
    Kokkos::deep_copy(gu.back(), 0.3f);
    Kokkos::deep_copy(xs.back(), 0.7f);
    Kokkos::deep_copy(qkv.back(), 0.01f);
  }
  const size_t pn = size_t{1} << 20;
  Kokkos::View<float*> pp("p", pn), pg("g", pn), pm("m", pn), pv("v", pn);
  Kokkos::deep_copy(pg, 1e-3f);
  optim::AdamWStep st;
  st.step = 1;
  st.lr = 1e-3;
  double bytes = 0, secs = 0;
  MPI_Barrier(comm);
  // SwiGLU: T·F·3 elements
  secs += typical_of([&](int i) { nn::SwiGlu<float>::forward(gu[i], hh[i]); }, sets, reps, min_s);
  bytes += static_cast<double>(T * F) * 4 * 3;
  // RmsNorm: 5 · T·H elements
  secs += typical_of([&](int i) { nn::RmsNorm<float>::forward(xs[i], g, ns[i], rstd[i]); }, sets, reps, min_s);
  bytes += static_cast<double>(T * H) * 4 * 5;
  // the attention core's softmax and its two products, less the products' GEMM time as the
  // simulator charges it on the curve just measured
  const double tcore =
      typical_of([&](int i) { nn::Attention<float>::forward(qkv[i], A, probs[i], att[i]); }, sets, reps, min_s);
  Cluster curve;
  curve.peak_f32 = peak / 1e12;
  for (const auto& [edge, r] : rate) curve.gemm_efficiency.emplace_back(edge, r / peak);
  const double core_gemm = (T / S) * A * 2 * curve.gemm_seconds(S, S, H / A, DType::F32);
  secs += std::max(0.0, tcore - core_gemm);
  bytes += static_cast<double>((T / S) * A * S * S) * 4 * 3;
  // AdamW: 7 · n elements (28 MiB: beyond the caches already)
  secs += typical_of([&](int) { optim::AdamW<float>::update(pp, pg, pm, pv, st, true); }, 1, reps, min_s);
  bytes += static_cast<double>(pn) * 4 * 7;
  const double elem_raw = slowest_rank(bytes / secs / bw);
  const double elem_eff = std::min(1.0, elem_raw);
  // attention dropout's mask (nn::AttnDropout): the causal triangles of the deck's 4 sequences
  // × 4 heads, made as the kernels make them; nanoseconds per element
  int64_t kept_sink = 0;
  const nn::AttnDropout drop{0.1, nn::attention_dropout_key(1, 1, 0), 0, 0};
  const double tmask = typical_of(
      [&](int) {
        for (int64_t q = 0; q < (T / S) * A; ++q) kept_sink += nn::attention_dropout_kept(drop, q / A, q % A, S);
      },
      1, reps, min_s);
  // per element made (whole batches of 64: nn::attention_dropout_generated); as a rate, so that
  // slowest_rank keeps the slowest rank's
  const double made = static_cast<double>((T / S) * A * nn::attention_dropout_generated(S));
  const double mask_ns = 1e9 / slowest_rank(made / tmask);
  SHARDFLOW_REQUIRE(kept_sink > 0, "calibrate: the dropout mask kept nothing");
  if (rank == 0) {
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const int devices = static_cast<int>(std::max(1L, cpus));
    const BlasInfo& bi = blas_info();
    char date[32];
    const std::time_t tt = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&tt));
    os << "# This machine, measured by `shardflow calibrate` on " << date << ".\n";
    os << "# " << bi.summary() << "\n";
    os << "name = \"local\"\n";
    os << "description = \"" << (bi.cpu.brand.empty() ? std::string("this machine") : bi.cpu.brand) << ", "
       << devices << " cores, one rank per core\"\n\n[device]\n";
    os << "# f32: the highest rate over square sizes 32-1024 of the model's gemm path (nn::Linear forward,\n"
       << "# input and weight gradients, each size's three products together), one core per rank, every\n"
       << "# rank at once (the slowest rank's): median times, operands rotated through sets larger than the caches.\n"
       << "# f16 runs the same sgemm on 16-bit values (docs/parallelism.md, mixed precision); bf16 the same\n"
       << "# products inside a bf16 operand scope: " << bf16_gemm_summary() << ".\n";
    char line[256];
    std::snprintf(line, sizeof line, "peak_tflops = { f32 = %.6f, bf16 = %.6f, f16 = %.6f }\n", peak / 1e12,
                  peak16 / 1e12, peak / 1e12);
    os << line;
    std::snprintf(line, sizeof line, "memory_gib = %.3f  # MemTotal shared by the cores\n",
                  mem_total_gib() / devices);
    os << line;
    std::snprintf(line, sizeof line,
                  "memory_bandwidth_gbs = %.3f  # STREAM triad on 64 MiB arrays (2 reads + 1 write), every rank at "
                  "once, the slowest\n",
                  bw / 1e9);
    os << line;
    os << "# bf16 / f16 steps run as rounded f32 here: f32 kernels, rounding passes, 16-bit packs of what a\n"
       << "# layer keeps (docs/parallelism.md, mixed precision)\nsixteen_bit_as_f32 = true\n";
    os << "# each size's rate / the peak\ngemm_efficiency = [";
    for (size_t i = 0; i < rate.size(); ++i) {
      std::snprintf(line, sizeof line, "%s[%d, %.4f]", i ? ", " : "", rate[i].first,
                    std::max(1e-4, rate[i].second / peak));
      os << line;
    }
    os << "]\n";
    std::snprintf(line, sizeof line,
                  "elementwise_efficiency = %.4f  # SwiGLU, RmsNorm, softmax, AdamW: bytes as simulated / time, "
                  "against the triad (measured %.4f; at most 1)\n",
                  std::max(1e-3, elem_eff), elem_raw);
    os << line;
    std::snprintf(line, sizeof line,
                  "dropout_mask_ns = %.4f  # one attention-dropout mask element (Philox4x32-10, 4 a call; made 64 "
                  "at a time)\n\n",
                  mask_ns);
    os << line;
    std::snprintf(line, sizeof line,
                  "[node]\ndevices = %d\n# MPI moves the bytes with the core that computes (no copy engine)\n"
                  "comm_on_compute_core = true\n\n",
                  devices);
    os << line;
  }
  // the link between ranks 0 and 1
  double lat_us = 0, link_gbs = 0;
  std::string how;
  if (size >= 2) {
    std::vector<char> buf(size_t{16} << 20);
    auto pingpong = [&](int nbytes, int iters) {
      MPI_Barrier(comm);
      const double t = now();
      for (int i = 0; i < iters; ++i) {
        if (rank == 0) {
          MPI_Send(buf.data(), nbytes, MPI_BYTE, 1, 7, comm);
          MPI_Recv(buf.data(), nbytes, MPI_BYTE, 1, 7, comm, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
          MPI_Recv(buf.data(), nbytes, MPI_BYTE, 0, 7, comm, MPI_STATUS_IGNORE);
          MPI_Send(buf.data(), nbytes, MPI_BYTE, 0, 7, comm);
        }
      }
      return (now() - t) / iters / 2;  // one way
    };
    (void)pingpong(8, 10);
    lat_us = pingpong(8, options.quick ? 200 : 2000) * 1e6;
    std::vector<double> t;
    for (int r = 0; r < (options.quick ? 3 : 11); ++r) t.push_back(pingpong(16 << 20, 1));
    std::nth_element(t.begin(), t.begin() + static_cast<long>(t.size() / 2), t.end());
    link_gbs = static_cast<double>(16 << 20) / t[t.size() / 2] / 1e9;  // the median, as above
    how = "MPI ping-pong between ranks 0 and 1: 8 B for the latency, 16 MiB for the bandwidth";
  }
  if (rank == 0) {
    char line[512];
    if (size < 2) {
      // no peer: MPI's shared-memory transport copies through a shared buffer (two copies)
      link_gbs = bw / 1e9 / 2 / 2;  // a copy moves each byte twice (read + write), two copies
      lat_us = 1.0;
      how = "ESTIMATED, not measured (one process, no peer): half a memcpy's rate, 1 us; run "
            "`mpiexec -n 2 shardflow calibrate` to measure MPI";
    }
    std::snprintf(line, sizeof line,
                  "[link.intra]\n# %s\nbandwidth_gbs = %.4f\nlatency_us = %.3f\nhop_latency_us = %.3f\nefficiency = 1.0\n\n",
                  how.c_str(), link_gbs, lat_us, lat_us);
    os << line;
    std::snprintf(line, sizeof line,
                  "[link.inter]\n# one node: no network here; the same as inside the node\nbandwidth_gbs = %.4f\n"
                  "latency_us = %.3f\nhop_latency_us = %.3f\nefficiency = 1.0\n\n[collectives]\nintra = \"ring\"\n"
                  "inter = \"ring\"\n",
                  link_gbs, lat_us, lat_us);
    os << line;
  }
  // every rank returns rank 0's text
  std::string text = os.str();
  int len = static_cast<int>(text.size());
  MPI_Bcast(&len, 1, MPI_INT, 0, comm);
  text.resize(static_cast<size_t>(len));
  MPI_Bcast(text.data(), len, MPI_CHAR, 0, comm);
  return text;
}

}  // namespace shardflow::sim
