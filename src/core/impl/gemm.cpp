#include "core/gemm.hpp"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <tuple>
#include <vector>

#include "core/error.hpp"
#include "core/half.hpp"
#include "core/threads.hpp"

#if SHARDFLOW_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>

#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace shardflow {

namespace {

// The BLAS (OpenBLAS behind Debian's libblas.so.3), linked directly (CMakeLists.txt): this
// reference keeps it linked into programs that call no KokkosBlas function.
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*);
extern "C" {
int openblas_get_num_threads() __attribute__((weak));
void openblas_set_num_threads(int) __attribute__((weak));
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && v[0] != '\0') ? v : nullptr;
}

int as_int(std::int64_t v, const char* what) {
  SHARDFLOW_REQUIRE(v >= 0 && v <= std::numeric_limits<int>::max(), "host_sgemm: ", what, " = ", v,
                    " does not fit the BLAS's 32-bit integer");
  return static_cast<int>(v);
}

void sgemm_openblas(char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                    std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands.
  const int im = as_int(m, "m"), in = as_int(n, "n"), ik = as_int(k, "k");
  const int ila = as_int(lda, "lda"), ilb = as_int(ldb, "ldb"), ilc = as_int(ldc, "ldc");
  const char sa[2] = {ta, 0}, sb[2] = {tb, 0};
  sgemm_(sb, sa, &in, &im, &ik, &alpha, b, &ilb, a, &ila, &beta, c, &ilc);
}

#if SHARDFLOW_HAVE_ONEDNN
void sgemm_onednn(char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                  std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  // oneDNN before 3.11 points rsp into the heap inside its JIT-compiled f32 GEMM kernels
  // (oneDNN issue #4845, fixed by PR #4855): a signal handled on this thread meanwhile pushes
  // its frame there and corrupts the heap. Seen here: `shardflow train`'s SIGTERM handler
  // aborted 2 of 5 runs with "corrupted size vs. prev_size" inside a later dnnl_sgemm. So
  // every signal waits until the product is done (process signals go to another thread or
  // are delivered right after); two rt_sigprocmask calls cost ~0.5 µs against ≥ 10 µs.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  const dnnl_status_t s = dnnl_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  SHARDFLOW_REQUIRE(s == dnnl_success, "host_sgemm: oneDNN's dnnl_sgemm('", ta, "', '", tb, "', m ", m, ", n ", n,
                    ", k ", k, ", lda ", lda, ", ldb ", ldb, ", ldc ", ldc, ") failed with status ",
                    static_cast<int>(s));
}

// ---- oneDNN's bf16 matmul (16-bit operands held in f32) ------------------------------------
// A and B are rounded into this thread's bf16 scratch, dense in their stored orientation;
// one matmul primitive per (transpositions, m, n, k, ldc, alpha, beta) is created on first
// use and kept (a training step multiplies a few dozen shapes, again every step). A product
// into a window of a wider C (ldc > n) uses the primitive of the dense product (ldc = n,
// beta 0) into scratch, so the two share one cache entry.
struct Bf16Key {
  char ta, tb;
  std::int64_t m, n, k, ldc;
  float alpha, beta;
  bool operator<(const Bf16Key& o) const {
    return std::tie(ta, tb, m, n, k, ldc, alpha, beta) < std::tie(o.ta, o.tb, o.m, o.n, o.k, o.ldc, o.alpha, o.beta);
  }
};
struct Bf16Prim {
  dnnl::matmul prim;
  dnnl::memory::desc a, b, c;
};
struct Bf16State {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream st{eng};
  std::map<Bf16Key, Bf16Prim> prims;
  std::vector<std::uint16_t> a16, b16;
  std::vector<float> c32;  // a dense product for a C with ldc > n (see gemm_bf16_onednn)
};
Bf16State& bf16_state() {
  thread_local Bf16State s;
  return s;
}

// rows x cols of a row-major matrix with row stride ld, rounded to bf16 (nearest even), dense
void round_rows_bf16(const float* src, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::uint16_t* dst) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* in = src + r * ld;
    std::uint16_t* out = dst + r * cols;
    for (std::int64_t c = 0; c < cols; ++c) out[c] = bf16(in[c]).bits;
  }
}

void gemm_bf16_onednn(char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                      std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  Bf16State& s = bf16_state();
  const std::int64_t ar = ta == 'N' ? m : k, ac = ta == 'N' ? k : m;
  const std::int64_t br = tb == 'N' ? k : n, bc = tb == 'N' ? n : k;
  s.a16.resize(static_cast<std::size_t>(ar * ac));
  s.b16.resize(static_cast<std::size_t>(br * bc));
  round_rows_bf16(a, ar, ac, lda, s.a16.data());
  round_rows_bf16(b, br, bc, ldb, s.b16.data());
  // oneDNN 2.6 runs its brgemm kernels (AMX where the CPU has it) only into a dense C; a C
  // with rows further apart (a window of a wider matrix: attention's per-head products) got
  // its gemm:jit kernel instead. Such a product goes into dense scratch and is then added
  // (beta) or copied into C.
  const bool dense_c = ldc == n;
  float* out = c;
  if (!dense_c) {
    s.c32.resize(static_cast<std::size_t>(m * n));
    out = s.c32.data();
  }
  try {
    const Bf16Key key{ta, tb, m, n, k, dense_c ? ldc : n, alpha, dense_c ? beta : 0.0f};
    auto it = s.prims.find(key);
    if (it == s.prims.end()) {
      using md = dnnl::memory::desc;
      using dt = dnnl::memory::data_type;
      using dims = dnnl::memory::dims;
      const md amd({m, k}, dt::bf16, ta == 'N' ? dims{k, 1} : dims{1, m});
      const md bmd({k, n}, dt::bf16, tb == 'N' ? dims{n, 1} : dims{1, k});
      const md cmd({m, n}, dt::f32, dims{key.ldc, 1});
      dnnl::primitive_attr attr;
      if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
      if (key.beta != 0.0f) {  // C = alpha·A·B + beta·C; beta 0 never reads C
        dnnl::post_ops po;
        po.append_sum(key.beta);
        attr.set_post_ops(po);
      }
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(amd, bmd, cmd), attr, s.eng);
      it = s.prims.emplace(key, Bf16Prim{dnnl::matmul(pd), amd, bmd, cmd}).first;
    }
    const Bf16Prim& p = it->second;
    dnnl::memory am(p.a, s.eng, s.a16.data()), bm(p.b, s.eng, s.b16.data()), cm(p.c, s.eng, out);
    // as for dnnl_sgemm (sgemm_onednn): no signal handler runs on this thread inside the kernel
    struct SignalsHeld {
      sigset_t old;
      SignalsHeld() {
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
      }
      ~SignalsHeld() { pthread_sigmask(SIG_SETMASK, &old, nullptr); }
    } held;
    p.prim.execute(s.st, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    s.st.wait();
    if (!dense_c)
      for (std::int64_t r = 0; r < m; ++r) {
        const float* t = out + r * n;
        float* row = c + r * ldc;
        if (beta == 0.0f)  // beta 0 never reads C (it may hold NaN)
          std::memcpy(row, t, static_cast<std::size_t>(n) * sizeof(float));
        else if (beta == 1.0f)
          for (std::int64_t j = 0; j < n; ++j) row[j] += t[j];
        else
          for (std::int64_t j = 0; j < n; ++j) row[j] = beta * row[j] + t[j];
      }
  } catch (const dnnl::error& e) {
    throw Error(::shardflow::detail::concat("host_gemm_bf16: oneDNN's bf16 matmul ('", ta, "', '", tb, "', m ", m,
                                            ", n ", n, ", k ", k, ", ldc ", ldc, ") failed: ", e.what()));
  }
}

const char* isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    default: return "all";
  }
}
#endif

// The operands of a verification product: op(A) m × k and op(B) k × n stored row-major in
// their transposition, entries (i·37 + 11) mod 101 − 50 and (i·53 + 5) mod 89 − 44 over the
// given divisors, and C full of NaN (beta 0, must not leak) or of small integers.
struct VerifyOperands {
  int ac = 0, bc = 0;
  std::vector<float> a, b, c0;
  VerifyOperands(char ta, char tb, int m, int n, int k, float beta, float a_div, float b_div) {
    const int ar = ta == 'N' ? m : k, br = tb == 'N' ? k : n;
    ac = ta == 'N' ? k : m;
    bc = tb == 'N' ? n : k;
    a.resize(static_cast<size_t>(ar) * ac);
    b.resize(static_cast<size_t>(br) * bc);
    c0.resize(static_cast<size_t>(m) * n);
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(static_cast<int>((i * 37 + 11) % 101) - 50) / a_div;
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(static_cast<int>((i * 53 + 5) % 89) - 44) / b_div;
    for (size_t i = 0; i < c0.size(); ++i)
      c0[i] = beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(i % 7) - 3.0f;
  }
};

/// oneDNN's dnnl_sgemm against a double-precision reference: every transposition, sizes off
/// the kernels' blocking, beta 0 over a C full of NaN (must not leak) and beta 1.
void verify_onednn(GemmPolicy& p) {
  struct Case {
    char ta, tb;
    int m, n, k;
    float beta;
  };
  const Case cases[] = {{'N', 'N', 37, 29, 53, 0.0f}, {'N', 'T', 61, 77, 45, 1.0f}, {'T', 'N', 33, 95, 17, 0.0f},
                        {'T', 'T', 40, 23, 66, 1.0f}};
  const bool corrupt = env("SHARDFLOW_GEMM_TEST_FAIL_VERIFY") != nullptr;
  p.onednn_verified = true;
  for (const Case& t : cases) {
    VerifyOperands o(t.ta, t.tb, t.m, t.n, t.k, t.beta, 50.0f, 44.0f);
    const int ac = o.ac, bc = o.bc;
    const std::vector<float>&a = o.a, &b = o.b, &c0 = o.c0;
    std::vector<float> c = c0;
    try {
      host_sgemm_with(GemmLibrary::OneDnn, t.ta, t.tb, t.m, t.n, t.k, 1.0f, a.data(), ac, b.data(), bc, t.beta,
                      c.data(), t.n);
    } catch (const std::exception& e) {
      p.onednn_verified = false;
      p.detail = e.what();
      return;
    }
    if (corrupt) c[c.size() / 2] += 1.0f;
    for (int i = 0; i < t.m; ++i) {
      for (int j = 0; j < t.n; ++j) {
        double ref = t.beta == 0.0f ? 0.0 : static_cast<double>(c0[static_cast<size_t>(i) * t.n + j]);
        double mag = std::fabs(ref);
        for (int q = 0; q < t.k; ++q) {
          const double av = t.ta == 'N' ? a[static_cast<size_t>(i) * ac + q] : a[static_cast<size_t>(q) * ac + i];
          const double bv = t.tb == 'N' ? b[static_cast<size_t>(q) * bc + j] : b[static_cast<size_t>(j) * bc + q];
          ref += av * bv;
          mag += std::fabs(av * bv);
        }
        const double got = c[static_cast<size_t>(i) * t.n + j];
        const double err = std::isfinite(got) ? std::fabs(got - ref) / std::max(mag, 1e-30) : HUGE_VAL;
        p.onednn_max_rel_error = std::max(p.onednn_max_rel_error, err);
        if (err > 1e-4 && p.onednn_verified) {
          p.onednn_verified = false;
          char buf[200];
          std::snprintf(buf, sizeof buf, "dnnl_sgemm('%c', '%c') %dx%dx%d, beta %g: C(%d, %d) = %.7g, reference %.7g",
                        t.ta, t.tb, t.m, t.n, t.k, static_cast<double>(t.beta), i, j, got, ref);
          p.detail = buf;
        }
      }
    }
  }
}

thread_local DType t_operands = DType::F32;

// The bf16 matmul against a double-precision reference on bf16 values (their products are
// exact in f32, so only the f32 accumulation differs): every transposition, sizes off the
// kernels' blocking, beta 0 over NaN, beta 1, alpha != 1; and a non-bf16 input must come out
// rounded (to nearest even), not truncated. C is also a window of a wider matrix (ldc > n,
// as attention's per-head products write it: the dense-scratch path), whose columns past n
// must stay as they were. Empty when right, else what went wrong.
std::string verify_bf16(double& max_rel_error) {
  struct Case {
    char ta, tb;
    int m, n, k;
    float alpha, beta;
    int ldc_extra;  // ldc = n + ldc_extra
  };
  const Case cases[] = {{'N', 'N', 37, 29, 53, 1.0f, 0.0f, 0},     {'N', 'T', 61, 77, 45, 1.0f, 1.0f, 0},
                        {'T', 'N', 33, 95, 17, 0.125f, 0.0f, 0},   {'T', 'T', 40, 23, 66, 1.0f, 1.0f, 0},
                        {'N', 'T', 64, 128, 64, 0.5f, 0.0f, 0},    {'N', 'N', 64, 64, 128, 0.125f, 0.0f, 192},
                        {'T', 'N', 128, 64, 64, 0.125f, 1.0f, 13}, {'N', 'T', 37, 29, 53, 1.0f, 0.5f, 3},
                        {'N', 'T', 64, 128, 64, 0.5f, 1.0f, 64}};  // reuses the dense 64x128x64 case's primitive
  const bool corrupt = env("SHARDFLOW_GEMM_BF16_TEST_FAIL_VERIFY") != nullptr;
  for (const Case& t : cases) {
    // multiples of 1/32 below 2 in magnitude: bf16 values (8 significant bits)
    VerifyOperands o(t.ta, t.tb, t.m, t.n, t.k, t.beta, 32.0f, 32.0f);
    const int ac = o.ac, bc = o.bc;
    std::vector<float>&a = o.a, &b = o.b;
    const std::vector<float>& c0 = o.c0;
    // one element that is not a bf16 value: 1 + 2^-8 + 2^-10 rounds up to 1 + 2^-7
    a[a.size() / 3] = 1.0f + 1.0f / 256 + 1.0f / 1024;
    const int ldc = t.n + t.ldc_extra;
    constexpr float kGap = -7.25f;  // the window's neighbours: must not change
    std::vector<float> cw(static_cast<size_t>(t.m) * ldc, kGap);
    for (int i = 0; i < t.m; ++i)
      std::copy_n(c0.begin() + static_cast<std::ptrdiff_t>(i) * t.n, t.n,
                  cw.begin() + static_cast<std::ptrdiff_t>(i) * ldc);
    try {
      host_gemm_bf16_native(t.ta, t.tb, t.m, t.n, t.k, t.alpha, a.data(), ac, b.data(), bc, t.beta, cw.data(), ldc);
    } catch (const std::exception& e) {
      return e.what();
    }
    if (corrupt) cw[cw.size() / 2] += 1.0f;
    for (int i = 0; i < t.m; ++i) {
      for (int j = t.n; j < ldc; ++j)
        if (cw[static_cast<size_t>(i) * ldc + j] != kGap) {
          char buf[200];
          std::snprintf(buf, sizeof buf,
                        "bf16 matmul('%c', '%c') %dx%dx%d into a window of ldc %d wrote C(%d, %d) = %.7g", t.ta, t.tb,
                        t.m, t.n, t.k, ldc, i, j, static_cast<double>(cw[static_cast<size_t>(i) * ldc + j]));
          return buf;
        }
    }
    a[a.size() / 3] = 1.0f + 1.0f / 128;  // what the reference multiplies
    for (int i = 0; i < t.m; ++i) {
      for (int j = 0; j < t.n; ++j) {
        double ref = 0.0, mag = 0.0;
        for (int q = 0; q < t.k; ++q) {
          const double av = t.ta == 'N' ? a[static_cast<size_t>(i) * ac + q] : a[static_cast<size_t>(q) * ac + i];
          const double bv = t.tb == 'N' ? b[static_cast<size_t>(q) * bc + j] : b[static_cast<size_t>(j) * bc + q];
          ref += av * bv;
          mag += std::fabs(av * bv);
        }
        ref *= t.alpha;
        mag *= std::fabs(t.alpha);
        if (t.beta != 0.0f) {
          ref += t.beta * static_cast<double>(c0[static_cast<size_t>(i) * t.n + j]);
          mag += std::fabs(t.beta * static_cast<double>(c0[static_cast<size_t>(i) * t.n + j]));
        }
        const double got = cw[static_cast<size_t>(i) * ldc + j];
        const double err = std::isfinite(got) ? std::fabs(got - ref) / std::max(mag, 1e-30) : HUGE_VAL;
        max_rel_error = std::max(max_rel_error, err);
        if (err > 1e-5) {
          char buf[220];
          std::snprintf(buf, sizeof buf,
                        "bf16 matmul('%c', '%c') %dx%dx%d, alpha %g, beta %g, ldc %d: C(%d, %d) = %.7g, "
                        "reference %.7g",
                        t.ta, t.tb, t.m, t.n, t.k, static_cast<double>(t.alpha), static_cast<double>(t.beta), ldc, i, j,
                        got, ref);
          return buf;
        }
      }
    }
  }
  return "";
}

}  // namespace

GemmOperandScope::GemmOperandScope(DType operands) : previous_(t_operands) { t_operands = operands; }
GemmOperandScope::~GemmOperandScope() { t_operands = previous_; }

void host_gemm_bf16_native(char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                           const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                           std::int64_t ldc) {
  SHARDFLOW_REQUIRE((ta == 'N' || ta == 'T') && (tb == 'N' || tb == 'T'), "host_gemm_bf16: transposition flags '", ta,
                    "', '", tb, "' (want 'N' or 'T')");
  SHARDFLOW_REQUIRE(ldc >= n, "host_gemm_bf16: ldc ", ldc, " is below n ", n, " (C's rows would overlap)");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
#if SHARDFLOW_HAVE_ONEDNN
  gemm_bf16_onednn(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#else
  (void)alpha, (void)a, (void)lda, (void)b, (void)ldb;
  SHARDFLOW_REQUIRE_INPUT(false, "host_gemm_bf16: this build has no oneDNN (configure with libdnnl-dev installed)");
#endif
}

const Bf16GemmPolicy& bf16_gemm_policy() {
  static const Bf16GemmPolicy policy = [] {
    Bf16GemmPolicy p;
    const char* s = env("SHARDFLOW_GEMM_BF16");
    p.setting = s != nullptr ? s : "auto";
    SHARDFLOW_REQUIRE_INPUT(p.setting == "auto" || p.setting == "on" || p.setting == "off", "SHARDFLOW_GEMM_BF16='",
                            p.setting, "' is not one of auto, on, off");
    if (p.setting == "off") {
      p.detail = "SHARDFLOW_GEMM_BF16=off";
      return p;
    }
#if SHARDFLOW_HAVE_ONEDNN
    if (gemm_library() != GemmLibrary::OneDnn) {
      p.detail = "the f32 products do not go through oneDNN (" + gemm_policy().summary() + ")";
      SHARDFLOW_REQUIRE_INPUT(p.setting != "on", "SHARDFLOW_GEMM_BF16=on, but ", p.detail);
      return p;
    }
    p.available = true;
    const std::string bad = verify_bf16(p.max_rel_error);
    p.verified = bad.empty();
    SHARDFLOW_REQUIRE_INPUT(p.verified || p.setting != "on",
                            "SHARDFLOW_GEMM_BF16=on, but oneDNN's bf16 matmul FAILED "
                            "verification: ",
                            bad);
    if (!p.verified) {
      p.detail = "FAILED verification: " + bad;
      std::fprintf(stderr, "shardflow: warning: oneDNN's bf16 matmul %s; bf16 products use the f32 sgemm\n",
                   p.detail.c_str());
      return p;
    }
    const int n = 512;
    std::vector<float> a(static_cast<size_t>(n) * n, 1.0f), b(a.size(), 0.5f), c(a.size());
    // the two products alternate, best of each over at least 10 pairs and 0.15 s, so that a
    // slow moment of the core (or another process starting on it) hits both alike
    auto bf16_call = [&] {
      host_gemm_bf16_native('N', 'T', n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    };
    auto f32_call = [&] {
      host_sgemm_with(GemmLibrary::OneDnn, 'N', 'T', n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    };
    bf16_call();  // warm-up: oneDNN compiles its kernels here
    f32_call();
    using clock = std::chrono::steady_clock;
    double best16 = HUGE_VAL, best32 = HUGE_VAL;
    const auto start = clock::now();
    for (int r = 0; r < 10 || (std::chrono::duration<double>(clock::now() - start).count() < 0.15 && r < 1000); ++r) {
      auto t0 = clock::now();
      bf16_call();
      best16 = std::min(best16, std::chrono::duration<double>(clock::now() - t0).count());
      t0 = clock::now();
      f32_call();
      best32 = std::min(best32, std::chrono::duration<double>(clock::now() - t0).count());
    }
    p.bf16_gflops = 2.0 * n * n * n / best16 / 1e9;
    p.f32_gflops = 2.0 * n * n * n / best32 / 1e9;
    p.native = p.setting == "on" || p.bf16_gflops >= kBf16Margin * p.f32_gflops;
    if (!p.native) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "measured %.2fx the sgemm, under the %.2fx it must gain",
                    p.bf16_gflops / p.f32_gflops, kBf16Margin);
      p.detail = buf;
    }
#else
    p.detail = "this build has no oneDNN";
    SHARDFLOW_REQUIRE_INPUT(p.setting != "on", "SHARDFLOW_GEMM_BF16=on, but ", p.detail);
#endif
    return p;
  }();
  return policy;
}

namespace {
std::atomic<bool> g_bf16_vetoed{false};
std::string g_bf16_veto;  // written once, before the veto flag
}  // namespace

void veto_bf16_gemm(const std::string& why) {
  if (g_bf16_vetoed.exchange(true)) return;
  g_bf16_veto = why;
}

bool bf16_gemm_native() { return bf16_gemm_policy().native && !g_bf16_vetoed.load(std::memory_order_relaxed); }

std::string bf16_gemm_summary() {
  std::string s = bf16_gemm_policy().summary();
  if (bf16_gemm_policy().native && g_bf16_vetoed.load()) s += "; NOT USED: " + g_bf16_veto;
  return s;
}

std::string Bf16GemmPolicy::summary() const {
  char buf[160];
  if (bf16_gflops > 0)
    std::snprintf(buf, sizeof buf, " (%.1f GFLOP/s against sgemm %.1f)", bf16_gflops, f32_gflops);
  else
    buf[0] = '\0';
  std::string out = native ? std::string("bf16 products: onednn bf16 matmul") + buf
                           : std::string("bf16 products: f32 sgemm of the rounded values") + buf;
  out += " (SHARDFLOW_GEMM_BF16=" + setting + ")";
  if (!native && !detail.empty()) out += ": " + detail;
  return out;
}

const char* to_string(GemmLibrary lib) { return lib == GemmLibrary::OneDnn ? "onednn" : "openblas"; }

void host_sgemm_with(GemmLibrary lib, char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                     const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                     std::int64_t ldc) {
  SHARDFLOW_REQUIRE((ta == 'N' || ta == 'T') && (tb == 'N' || tb == 'T'), "host_sgemm: transposition flags '", ta,
                    "', '", tb, "' (want 'N' or 'T')");
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta · C, and beta 0 writes zeros without reading C
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  if (lib == GemmLibrary::OneDnn) {
#if SHARDFLOW_HAVE_ONEDNN
    sgemm_onednn(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
#else
    SHARDFLOW_REQUIRE_INPUT(false, "host_sgemm: this build has no oneDNN (configure with libdnnl-dev installed)");
#endif
  }
  sgemm_openblas(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

const GemmPolicy& gemm_policy() {
  static const GemmPolicy policy = [] {
    GemmPolicy p;
    // one thread per rank unless the user says otherwise, also in programs that never called
    // limit_blas_threads(): oneDNN's OpenMP pool would otherwise take every core
    limit_blas_threads();
    const char* s = env("SHARDFLOW_GEMM");
    p.setting = s != nullptr ? s : "auto";
    SHARDFLOW_REQUIRE_INPUT(p.setting == "auto" || p.setting == "onednn" || p.setting == "openblas",
                            "SHARDFLOW_GEMM='", p.setting, "' is not one of auto, onednn, openblas");
#if SHARDFLOW_HAVE_ONEDNN
    p.onednn_built = true;
    const dnnl_version_t* v = dnnl_version();
    p.onednn_version = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
    p.onednn_isa = isa_name(dnnl_get_effective_cpu_isa());
    if (p.setting != "openblas") {
      verify_onednn(p);
      SHARDFLOW_REQUIRE_INPUT(p.onednn_verified || p.setting != "onednn", "SHARDFLOW_GEMM='onednn', but oneDNN ",
                              p.onednn_version, "'s sgemm FAILED verification: ", p.detail);
      if (!p.onednn_verified)
        std::fprintf(stderr, "shardflow: warning: oneDNN %s's sgemm FAILED verification (%s); using OpenBLAS for every "
                             "f32 product\n", p.onednn_version.c_str(), p.detail.c_str());
    }
#else
    p.detail = "this build has no oneDNN";
    SHARDFLOW_REQUIRE_INPUT(p.setting != "onednn", "SHARDFLOW_GEMM='onednn', but ", p.detail,
                            " (configure with libdnnl-dev installed)");
#endif
    // oneDNN for every product when it is there and right (bench_gemm: 1.04-1.14x OpenBLAS per
    // transposition on the model's products)
    const bool dnnl = p.onednn_built && p.onednn_verified && p.setting != "openblas";
    p.library = dnnl ? GemmLibrary::OneDnn : GemmLibrary::OpenBlas;
    if (p.setting == "openblas") p.detail = "SHARDFLOW_GEMM=openblas";
    return p;
  }();
  return policy;
}

std::string GemmPolicy::summary() const {
  std::string out = library == GemmLibrary::OneDnn
                        ? "onednn " + onednn_version + " (" + onednn_isa + ") for A·B, A·Bᵀ, Aᵀ·B, Aᵀ·Bᵀ"
                        : std::string("openblas for every product");
  out += " (SHARDFLOW_GEMM=" + setting + ")";
  if (!detail.empty() && library == GemmLibrary::OpenBlas) out += ": " + detail;
  return out;
}

GemmLibrary gemm_library() { return gemm_policy().library; }

namespace {
thread_local GemmTally* t_tally = nullptr;
}  // namespace

GemmTally::GemmTally() : outer_(t_tally) { t_tally = this; }
GemmTally::~GemmTally() { t_tally = outer_; }
void GemmTally::add(double flops, double seconds) {
  for (GemmTally* t = this; t != nullptr; t = t->outer_) {
    ++t->calls_;
    t->flops_ += flops;
    t->seconds_ += seconds;
  }
}

namespace {
void host_sgemm_untallied(char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  if (t_operands == DType::BF16 && bf16_gemm_native()) {
    host_gemm_bf16_native(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  host_sgemm_with(gemm_library(), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
}  // namespace

void host_sgemm(char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  GemmTally* tally = t_tally;
  if (tally == nullptr) {
    host_sgemm_untallied(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  host_sgemm_untallied(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  tally->add(2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k),
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

double measure_sgemm_gflops(GemmLibrary lib) {
  if (lib == GemmLibrary::OneDnn && !gemm_policy().onednn_built) return 0.0;
  // one OpenBLAS thread for the measurement, whatever the process set (restored after)
  const int threads = openblas_get_num_threads ? openblas_get_num_threads() : 1;
  if (lib == GemmLibrary::OpenBlas && openblas_set_num_threads) openblas_set_num_threads(1);
  const int n = 512;
  std::vector<float> a(static_cast<size_t>(n) * n, 1.0f), b(a.size(), 0.5f), c(a.size());
  auto run = [&] { host_sgemm_with(lib, 'N', 'T', n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n); };
  run();  // warm-up (oneDNN compiles its kernel here)
  using clock = std::chrono::steady_clock;
  double best = HUGE_VAL;
  const auto start = clock::now();
  for (int r = 0; r < 5 || (std::chrono::duration<double>(clock::now() - start).count() < 0.05 && r < 1000); ++r) {
    const auto t0 = clock::now();
    run();
    best = std::min(best, std::chrono::duration<double>(clock::now() - t0).count());
  }
  if (lib == GemmLibrary::OpenBlas && openblas_set_num_threads) openblas_set_num_threads(threads);
  return 2.0 * n * n * n / best / 1e9;
}

}  // namespace shardflow
