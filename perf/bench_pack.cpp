// bench_pack: pack / unpack bandwidth against memcpy of the same bytes, measured in the
// same run (nccl-tests manner: every row checks its own results and reports #wrong).
//
// For each box size B (bytes, 64 KiB .. 64 MiB by default) and contiguous run length R
// (64 B .. 64 KiB), the source is a row-major f32 array [B/R, 2R/4] and the box is
// columns [0, R/4) of every row, so each row of the box is one run of R bytes that cannot
// merge with the next. pack: box -> contiguous buffer; unpack: contiguous -> box;
// memcpy: the same number of bytes between two contiguous buffers (the goal's peer).
// runcpy (host spaces, f32 only): a plain loop of one memcpy per run over the same strided
// layout, in the same direction: the cost of the access pattern itself, so /runcpy is the
// kernel's own overhead (1.00 = none). Times are the best
// (minimum) of --iters repetitions, run interleaved (pack, unpack, memcpy) so that all
// three see the same machine; on a shared machine the minimum is the uncontended cost.
//
//   bench_pack [--min-bytes N] [--max-bytes N] [--min-run N] [--max-run N] [--iters N]
//              [--cast bf16|f16]   (fused cast-and-pack / unpack-and-cast instead of f32)
//              [--impl avx2|generic]   (the host run copy; default: the fastest the CPU runs)
// Exit code 1 when any row has #wrong > 0.
#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "core/half.hpp"
#include "kernels/pack.hpp"

namespace {
using namespace shardflow;
using Exec = Kokkos::DefaultExecutionSpace;
using Clock = std::chrono::steady_clock;

struct Options {
  std::int64_t min_bytes = 64 << 10, max_bytes = 64 << 20;
  std::int64_t min_run = 64, max_run = 64 << 10;
  int iters = 0;  // 0: chosen per size
  std::string cast;
  std::string impl;  // host run copy; empty: the default
};

std::int64_t parse_size(const char* s) {
  char* end = nullptr;
  double v = std::strtod(s, &end);
  std::string suf(end);
  if (suf == "K" || suf == "k") v *= 1024;
  else if (suf == "M" || suf == "m") v *= 1024 * 1024;
  else if (suf == "G" || suf == "g") v *= 1024.0 * 1024 * 1024;
  else if (!suf.empty()) {
    std::fprintf(stderr, "bench_pack: bad size '%s'\n", s);
    std::exit(2);
  }
  return static_cast<std::int64_t>(v);
}

double best(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

template <class F>
double time_once(F&& f) {
  auto t0 = Clock::now();
  f();
  Exec().fence();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

template <class P>  // packed element type (float, bf16 or f16)
int run_rows(const Options& o) {
  int failures = 0;
  std::printf("# %10s %9s %6s | %9s %9s %7s %7s | %9s %9s %7s %7s | %10s | %7s\n", "box_bytes", "run_bytes", "iters",
              "pack_us", "pack_GB/s", "/memcpy", "/runcpy", "unpack_us", "unpk_GB/s", "/memcpy", "/runcpy", "memcpyGB/s",
              "#wrong");
  for (std::int64_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= 4) {
    for (std::int64_t run_bytes = o.min_run; run_bytes <= o.max_run && run_bytes <= bytes; run_bytes *= 4) {
      const std::int64_t run = run_bytes / 4;  // f32 elements per run
      const std::int64_t rows = bytes / run_bytes;
      const std::int64_t cols = 2 * run;
      const std::int64_t n = rows * run;
      Shape shape{rows, cols};
      Box box{{0, 0}, {rows, run}};
      kernels::StridedBox sb = kernels::StridedBox::row_major(shape, box);

      Kokkos::View<float*, Exec::memory_space> src(Kokkos::view_alloc(Kokkos::WithoutInitializing, "src"), rows * cols);
      Kokkos::View<P*, Exec::memory_space> packed(Kokkos::view_alloc(Kokkos::WithoutInitializing, "packed"), n);
      Kokkos::View<float*, Exec::memory_space> dst(Kokkos::view_alloc(Kokkos::WithoutInitializing, "dst"), rows * cols);
      Kokkos::View<char*, Exec::memory_space> ma(Kokkos::view_alloc(Kokkos::WithoutInitializing, "memcpy_a"), n * sizeof(P));
      Kokkos::View<char*, Exec::memory_space> mb(Kokkos::view_alloc(Kokkos::WithoutInitializing, "memcpy_b"), n * sizeof(P));
      // values exactly representable in every packed type (bf16 has 8 significant bits)
      Kokkos::parallel_for(
          "init", Kokkos::RangePolicy<Exec, Kokkos::IndexType<std::int64_t>>(0, rows * cols),
          KOKKOS_LAMBDA(std::int64_t i) { src(i) = static_cast<float>(i % 251); });
      Kokkos::deep_copy(dst, -1.0f);
      Kokkos::deep_copy(ma, 1);
      Kokkos::deep_copy(mb, 0);
      Exec().fence();

      int iters = o.iters > 0 ? o.iters : static_cast<int>(std::clamp<std::int64_t>((1ll << 30) / bytes, 5, 200));
      constexpr bool with_runcpy = kernels::is_host_space_v<Exec> && std::is_same<P, float>::value;
      Kokkos::View<float*, Exec::memory_space> rc_dst;
      Kokkos::View<float*, Exec::memory_space> rc_src;
      if (with_runcpy) {
        rc_dst = Kokkos::View<float*, Exec::memory_space>("runcpy_dst", rows * cols);
        rc_src = Kokkos::View<float*, Exec::memory_space>("runcpy_src", n);
      }
      std::vector<double> tp, tu, tm, trp, tru;
      for (int it = -1; it < iters; ++it) {  // it = -1: warm-up
        double a = time_once([&] { kernels::pack(Exec(), src, sb, packed); });
        double b = time_once([&] { kernels::unpack(Exec(), packed, 0, dst, sb); });
        double c = time_once([&] {
          if constexpr (kernels::is_host_space_v<Exec>) std::memcpy(mb.data(), ma.data(), ma.extent(0));
          else Kokkos::deep_copy(Exec(), mb, ma);  // cudaMemcpy device-to-device
        });
        double d = 0, e = 0;
        if constexpr (with_runcpy) {
          const float* s = src.data();
          float* pk = rc_src.data();
          float* u = rc_dst.data();
          d = time_once([&] {
            for (std::int64_t r = 0; r < rows; ++r) std::memcpy(pk + r * run, s + r * cols, run * sizeof(float));
          });
          e = time_once([&] {
            for (std::int64_t r = 0; r < rows; ++r) std::memcpy(u + r * cols, pk + r * run, run * sizeof(float));
          });
        }
        if (it >= 0) {
          tp.push_back(a);
          tu.push_back(b);
          tm.push_back(c);
          trp.push_back(d);
          tru.push_back(e);
        }
      }
      // check: packed = the box of src (converted); dst = src inside the box, -1 outside
      std::int64_t wrong = 0;
      {
        auto hs = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), src);
        auto hp = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), packed);
        auto hd = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), dst);
        for (std::int64_t r = 0; r < rows; ++r)
          for (std::int64_t c = 0; c < cols; ++c) {
            const float s = hs(r * cols + c);
            if (c < run) {
              wrong += Convert<P, float>::apply(hp(r * run + c)) != s;
              wrong += hd(r * cols + c) != s;
            } else {
              wrong += hd(r * cols + c) != -1.0f;
            }
          }
      }
      const double moved = static_cast<double>(n) * sizeof(float);  // payload bytes of the box
      const double mp = best(tp), mu = best(tu), mm = best(tm);
      const double memcpy_bw = static_cast<double>(n * sizeof(P)) / mm / 1e9;
      const double pbw = moved / mp / 1e9, ubw = moved / mu / 1e9;
      char rp[16] = "      -", ru[16] = "      -";
      if (with_runcpy) {
        std::snprintf(rp, sizeof rp, "%7.2f", best(trp) / mp);
        std::snprintf(ru, sizeof ru, "%7.2f", best(tru) / mu);
      }
      std::printf("  %10lld %9lld %6d | %9.1f %9.2f %7.2f %7s | %9.1f %9.2f %7.2f %7s | %10.2f | %7lld\n",
                  static_cast<long long>(bytes), static_cast<long long>(run_bytes), iters, mp * 1e6, pbw,
                  pbw / memcpy_bw, rp, mu * 1e6, ubw, ubw / memcpy_bw, ru, memcpy_bw, static_cast<long long>(wrong));
      std::fflush(stdout);
      if (wrong) ++failures;
    }
  }
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_pack: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--min-bytes") o.min_bytes = parse_size(next());
    else if (a == "--max-bytes") o.max_bytes = parse_size(next());
    else if (a == "--min-run") o.min_run = parse_size(next());
    else if (a == "--max-run") o.max_run = parse_size(next());
    else if (a == "--iters") o.iters = std::atoi(next());
    else if (a == "--cast") o.cast = next();
    else if (a == "--impl") o.impl = next();
    else if (a == "--help" || a == "-h") {
      std::printf(
          "bench_pack [--min-bytes N] [--max-bytes N] [--min-run N] [--max-run N] [--iters N] [--cast bf16|f16]\n"
          "           [--impl avx2|generic]\n");
      return 0;
    } else {
      std::fprintf(stderr, "bench_pack: unknown option '%s'\n", a.c_str());
      return 2;
    }
  }
  if (o.min_bytes < 4 || o.min_run < 4 || o.min_run % 4 || o.min_bytes > o.max_bytes) {
    std::fprintf(stderr, "bench_pack: sizes must be multiples of 4 bytes with min <= max\n");
    return 2;
  }
  if (!o.cast.empty() && o.cast != "bf16" && o.cast != "f16") {
    std::fprintf(stderr, "bench_pack: --cast takes bf16 or f16, not '%s'\n", o.cast.c_str());
    return 2;
  }
  if (!o.impl.empty()) {
    try {
      kernels::detail::set_host_copy_impl(o.impl);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_pack: --impl: %s\n", e.what());
      return 2;
    }
  }
  Kokkos::initialize(argc, argv);
  int failures = 0;
  {
    std::printf("# bench_pack: execution space %s (host run copy: %s), f32 source%s\n", Exec::name(),
                kernels::detail::host_copy_impl(),
                o.cast.empty() ? "" : (", packed as " + o.cast + " (GB/s counts f32 bytes; memcpy moves the packed bytes)").c_str());
    if (o.cast.empty()) failures = run_rows<float>(o);
    else if (o.cast == "bf16") failures = run_rows<bf16>(o);
    else failures = run_rows<f16>(o);
    std::printf("# rows with #wrong > 0: %d\n", failures);
  }
  Kokkos::finalize();
  return failures ? 1 : 0;
}
