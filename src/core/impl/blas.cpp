#include "core/blas.hpp"
#include "core/gemm.hpp"
#include "core/process.hpp"

#include <cpuid.h>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace shardflow {

namespace {

// OpenBLAS is loaded behind libblas.so.3 (Debian's alternatives), so look it up at run time.
using CoreNameFn = char* (*)();
using ConfigFn = char* (*)();
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);

template <class F>
F lookup(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_DEFAULT, name));
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && v[0] != '\0') ? v : nullptr;
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

/// 3: avx512_bf16, 2: avx512f, 1: avx2, 0: older.
int cpu_tier(const CpuFeatures& cpu) {
  if (cpu.avx512f && cpu.avx512_bf16) return 3;
  if (cpu.avx512f) return 2;
  if (cpu.avx2) return 1;
  return 0;
}

/// The same scale for OpenBLAS core names (x86_64 DYNAMIC_ARCH list of 0.3.21 and later).
int core_tier(const std::string& core) {
  const std::string c = lower(core);
  if (c == "cooperlake" || c == "sapphirerapids") return 3;
  if (c == "skylakex") return 2;
  if (c == "haswell" || c == "zen" || c == "skylake") return 1;
  return 0;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && s[i] == ' ') ++i;
  return s.substr(i);
}

void warn(const std::string& what) {
  std::fprintf(stderr, "shardflow: warning: %s\n", what.c_str());
  std::fflush(stderr);
}

}  // namespace

std::string CpuFeatures::to_string() const {
  std::string s;
  auto add = [&s](bool on, const char* name) {
    if (!s.empty()) s += ' ';
    if (!on) s += '-';
    s += name;
  };
  add(avx2, "avx2");
  add(avx512f, "avx512f");
  add(avx512_bf16, "avx512_bf16");
  add(avx512_fp16, "avx512_fp16");
  return s;
}

CpuFeatures detect_cpu_features() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  const unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf == 0) return f;
  __cpuid(0, a, b, c, d);
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  f.vendor = vendor;
  if (__get_cpuid_max(0x80000000u, nullptr) >= 0x80000004u) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      __cpuid(0x80000002u + i, a, b, c, d);
      std::memcpy(brand + 16 * i, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
    f.brand = trim(brand);
  }
  // The OS must save the registers: OSXSAVE (leaf 1 ECX bit 27), then XCR0 has the SSE and
  // AVX state (bits 1, 2) for ymm and also opmask, ZMM_Hi256 and Hi16_ZMM (bits 5-7) for zmm.
  __cpuid(1, a, b, c, d);
  const bool osxsave = (c >> 27) & 1u;
  const bool avx = (c >> 28) & 1u;
  unsigned long long xcr0 = 0;
  if (osxsave) {
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  }
  const bool os_ymm = (xcr0 & 0x6u) == 0x6u;
  const bool os_zmm = (xcr0 & 0xe6u) == 0xe6u;
  if (max_leaf < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const unsigned leaf7_subleaves = a;
  f.avx2 = avx && os_ymm && ((b >> 5) & 1u);
  f.avx512f = os_zmm && ((b >> 16) & 1u);
  f.avx512_fp16 = f.avx512f && ((d >> 23) & 1u);
  if (leaf7_subleaves >= 1) {
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = f.avx512f && ((a >> 5) & 1u);
  }
  return f;
}

std::string best_blas_core(const CpuFeatures& cpu) {
  switch (cpu_tier(cpu)) {
    case 3:
      return "Cooperlake";
    case 2:
      return "SkylakeX";
    case 1:
      return "Haswell";
    default:
      return "";
  }
}

std::string best_blas_core_reason(const CpuFeatures& cpu) {
  switch (cpu_tier(cpu)) {
    case 3:
      return "avx512_bf16";
    case 2:
      return "avx512f";
    case 1:
      return "avx2";
    default:
      return "";
  }
}

bool blas_core_is_good(const std::string& core, const CpuFeatures& cpu) { return core_tier(core) >= cpu_tier(cpu); }

std::string blas_core_name() {
  auto f = lookup<CoreNameFn>("openblas_get_corename");
  if (f == nullptr) return "";
  const char* s = f();
  return s != nullptr ? trim(s) : "";
}

BlasVerification verify_blas() {
  BlasVerification v;
  auto sgemm = lookup<SgemmFn>("sgemm_");
  if (sgemm == nullptr) {
    v.detail = "the loaded BLAS has no sgemm_";
    return v;
  }
  struct Shape {
    int m, n, k;
    char tb;
  };
  // Column-major C[m, n] = A[m, k] · op(B); shapes off the kernels' 16/32 blocking.
  const Shape shapes[] = {{96, 80, 72, 'N'}, {77, 61, 53, 'T'}, {33, 17, 95, 'N'}};
  // Testing hook: a wrong result while the core is shardflow's choice (a broken kernel).
  const char* coretype = env("OPENBLAS_CORETYPE");
  const char* ours = env("SHARDFLOW_BLAS_REEXEC");
  const bool corrupt = env("SHARDFLOW_BLAS_TEST_FAIL_VERIFY") != nullptr && coretype != nullptr && ours != nullptr &&
                       std::strcmp(coretype, ours) == 0;
  v.ok = true;
  for (const Shape& s : shapes) {
    std::vector<float> a(static_cast<size_t>(s.m) * s.k), b(static_cast<size_t>(s.k) * s.n),
        c(static_cast<size_t>(s.m) * s.n, 7.0f);
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(static_cast<int>((i * 37 + 11) % 101) - 50) / 50.0f;
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(static_cast<int>((i * 53 + 5) % 89) - 44) / 44.0f;
    const int ldb = s.tb == 'N' ? s.k : s.n;
    const float alpha = 1.0f, beta = 0.0f;
    sgemm("N", &s.tb, &s.m, &s.n, &s.k, &alpha, a.data(), &s.m, b.data(), &ldb, &beta, c.data(), &s.m);
    if (corrupt) c[c.size() / 2] += 1.0f;
    for (int j = 0; j < s.n; ++j) {
      for (int i = 0; i < s.m; ++i) {
        double ref = 0, mag = 0;
        for (int p = 0; p < s.k; ++p) {
          const double bv = s.tb == 'N' ? b[p + static_cast<size_t>(j) * s.k] : b[j + static_cast<size_t>(p) * s.n];
          const double t = static_cast<double>(a[i + static_cast<size_t>(p) * s.m]) * bv;
          ref += t;
          mag += std::fabs(t);
        }
        const double got = c[i + static_cast<size_t>(j) * s.m];
        const double err = std::isfinite(got) ? std::fabs(got - ref) / std::max(mag, 1e-30) : HUGE_VAL;
        if (err > v.max_rel_error) v.max_rel_error = err;
        if (err > kBlasVerifyTolerance && v.ok) {
          v.ok = false;
          char buf[200];
          std::snprintf(buf, sizeof buf, "sgemm %dx%dx%d (B '%c'): C(%d, %d) = %.7g, reference %.7g", s.m, s.n, s.k,
                        s.tb, i, j, got, ref);
          v.detail = buf;
        }
      }
    }
  }
  return v;
}

void ensure_best_blas_kernel(int /*argc*/, char** argv) {
  if (env("SHARDFLOW_BLAS_FALLBACK") != nullptr) return;  // shardflow's choice failed once: never again
  const char* coretype = env("OPENBLAS_CORETYPE");
  const char* ours = env("SHARDFLOW_BLAS_REEXEC");
  if (coretype != nullptr && ours != nullptr && std::strcmp(coretype, ours) == 0) {
    // Running with the core shardflow chose (after its re-exec, or inherited from a
    // shardflow parent): check it before anything depends on it.
    const BlasVerification v = verify_blas();
    if (v.ok) return;
    const char* previous = env("SHARDFLOW_BLAS_PREVIOUS_CORETYPE");
    const std::string restored =
        previous != nullptr ? std::string("OPENBLAS_CORETYPE=") + previous : std::string("OPENBLAS_CORETYPE unset");
    warn(std::string("BLAS kernel ") + coretype + " (chosen by shardflow) FAILED verification: " + v.detail +
         "; restarting with " + restored);
    const std::string fallback =
        std::string("shardflow's choice ") + coretype + " failed verification (" + v.detail + "); restored " + restored;
    if (previous != nullptr)
      setenv("OPENBLAS_CORETYPE", previous, 1);
    else
      unsetenv("OPENBLAS_CORETYPE");
    setenv("SHARDFLOW_BLAS_FALLBACK", fallback.c_str(), 1);
    unsetenv("SHARDFLOW_BLAS_REEXEC");
    unsetenv("SHARDFLOW_BLAS_SOURCE");
    reexec_self(argv, "fallback after a failed verification");
    warn("carrying on with the unverified BLAS kernel " + std::string(coretype) + "; results may be wrong");
    return;
  }
  // A user's OPENBLAS_CORETYPE is respected (the testing hook pretends OpenBLAS chose it).
  const bool pretend = env("SHARDFLOW_BLAS_TEST_MISDETECT") != nullptr;
  if (coretype != nullptr && !pretend) return;
  const std::string loaded = blas_core_name();
  if (loaded.empty()) return;  // not OpenBLAS
  const CpuFeatures cpu = detect_cpu_features();
  const std::string best = best_blas_core(cpu);
  if (best.empty() || blas_core_is_good(loaded, cpu)) return;
  const std::string source = "chosen by shardflow for " + best_blas_core_reason(cpu) + " (OpenBLAS " +
                             (pretend ? "was forced to " : "detected ") + loaded + ")";
  if (coretype != nullptr)
    setenv("SHARDFLOW_BLAS_PREVIOUS_CORETYPE", coretype, 1);
  else
    unsetenv("SHARDFLOW_BLAS_PREVIOUS_CORETYPE");
  setenv("OPENBLAS_CORETYPE", best.c_str(), 1);
  setenv("SHARDFLOW_BLAS_REEXEC", best.c_str(), 1);
  setenv("SHARDFLOW_BLAS_SOURCE", source.c_str(), 1);
  reexec_self(argv, "to load OpenBLAS with OPENBLAS_CORETYPE=" + best);
  warn("carrying on with the slow BLAS kernel " + loaded + " (best for this CPU: " + best + ")");
  if (coretype != nullptr)
    setenv("OPENBLAS_CORETYPE", coretype, 1);
  else
    unsetenv("OPENBLAS_CORETYPE");
  unsetenv("SHARDFLOW_BLAS_REEXEC");
  unsetenv("SHARDFLOW_BLAS_SOURCE");
  unsetenv("SHARDFLOW_BLAS_PREVIOUS_CORETYPE");
}

std::string BlasInfo::summary() const {
  char buf[200];
  if (sgemm_gflops_onednn > 0)
    std::snprintf(buf, sizeof buf, " | %.1f GFLOP/s single-core sgemm (openblas %.1f, onednn %.1f) | ", sgemm_gflops,
                  sgemm_gflops_openblas, sgemm_gflops_onednn);
  else
    std::snprintf(buf, sizeof buf, " | %.1f GFLOP/s single-core sgemm | ", sgemm_gflops);
  return "blas " + kernel + " (" + source + ") | gemm " + gemm + buf + (verified ? "verified" : "VERIFICATION FAILED") +
         " | cpu " + cpu.to_string();
}

const BlasInfo& blas_info() {
  static const BlasInfo info = [] {
    BlasInfo b;
    b.cpu = detect_cpu_features();
    auto config = lookup<ConfigFn>("openblas_get_config");
    b.library = config != nullptr && config() != nullptr ? trim(config()) : "unknown BLAS (not OpenBLAS)";
    b.kernel = blas_core_name();
    if (b.kernel.empty()) b.kernel = "unknown";
    const char* coretype = env("OPENBLAS_CORETYPE");
    const char* ours = env("SHARDFLOW_BLAS_REEXEC");
    if (const char* fb = env("SHARDFLOW_BLAS_FALLBACK")) {
      b.source = fb;
    } else if (coretype != nullptr && ours != nullptr && std::strcmp(coretype, ours) == 0) {
      const char* s = env("SHARDFLOW_BLAS_SOURCE");
      b.source = s != nullptr ? s : "chosen by shardflow";
    } else if (coretype != nullptr) {
      b.source = std::string("OPENBLAS_CORETYPE set in the environment (") + coretype + ")";
    } else {
      b.source = "detected by OpenBLAS";
    }
    const BlasVerification v = verify_blas();
    b.verified = v.ok;
    b.max_rel_error = v.max_rel_error;
    const bool loaded = lookup<SgemmFn>("sgemm_") != nullptr;
    if (!loaded) b.library = "no BLAS loaded in this process";
    if (!v.ok && loaded) warn("BLAS kernel " + b.kernel + " FAILED verification: " + v.detail);
    // Single-thread 512^3 sgemm through each library (core/gemm.hpp): the best call after a
    // warm-up call, over at least 5 calls and 50 ms (a few calls alone catch a core that is
    // still clocking up or briefly shared, and read 0.7 of its rate on the 2-core VMs this
    // was written on).
    if (loaded) b.sgemm_gflops_openblas = measure_sgemm_gflops(GemmLibrary::OpenBlas);
    const GemmPolicy& gp = gemm_policy();
    b.gemm = gp.summary();
    if (gp.onednn_built && gp.onednn_verified) b.sgemm_gflops_onednn = measure_sgemm_gflops(GemmLibrary::OneDnn);
    b.sgemm_gflops = gemm_library() == GemmLibrary::OneDnn ? b.sgemm_gflops_onednn : b.sgemm_gflops_openblas;
    return b;
  }();
  return info;
}

}  // namespace shardflow
