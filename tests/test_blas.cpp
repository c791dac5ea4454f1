// BLAS kernel selection (core/blas.hpp): cpuid features agree with /proc/cpuinfo, the
// choice of core, the verification gemm, and `shardflow version` in a child process with
// OPENBLAS_CORETYPE unset (must not run Prescott on an avx512f CPU), set by the user
// (respected), and with the testing hooks that exercise the re-exec and its fallback. The
// host GEMM (core/gemm.hpp): both libraries against a double reference on every
// transposition, the policy from SHARDFLOW_GEMM, oneDNN's verification and its fallback.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <KokkosBlas3_gemm.hpp>
#include <Kokkos_Core.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "core/blas.hpp"
#include "core/error.hpp"
#include "core/gemm.hpp"
#include "core/threads.hpp"

extern char** environ;

namespace {

using shardflow::CpuFeatures;

std::set<std::string> cpuinfo_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  std::set<std::string> flags;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream ls(line.substr(line.find(':') + 1));
    std::string f;
    while (ls >> f) flags.insert(f);
    break;
  }
  return flags;
}

struct Child {
  int status = -1;
  std::string out;  // stdout and stderr
  /// The value of "key: value" in out, or "".
  std::string field(const std::string& key) const {
    std::istringstream ls(out);
    std::string line;
    while (std::getline(ls, line))
      if (line.rfind(key + ": ", 0) == 0) return line.substr(key.size() + 2);
    return "";
  }
};

/// Runs `shardflow version` with this process's environment minus MPI launcher variables,
/// OPENBLAS_CORETYPE and SHARDFLOW_BLAS_*, plus `extra` ("NAME=value").
Child run_version(const std::vector<std::string>& extra) {
  std::vector<std::string> envs;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string s = *e;
    static const char* drop[] = {
        "OPENBLAS_CORETYPE=", "SHARDFLOW_BLAS_", "SHARDFLOW_GEMM", "PMI_", "PMIX_", "HYDI_", "HYDRA_", "MPIR_", "OMPI_"};
    bool keep = true;
    for (const char* d : drop) keep = keep && s.rfind(d, 0) != 0;
    if (keep) envs.push_back(s);
  }
  for (const auto& e : extra) envs.push_back(e);
  std::vector<char*> envp;
  for (auto& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string cli = SHARDFLOW_CLI_PATH, sub = "version";
  char* argv[] = {cli.data(), sub.data(), nullptr};
  int fd[2];
  Child c;
  if (pipe(fd) != 0) return c;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fd[1], 1);
    dup2(fd[1], 2);
    close(fd[0]);
    close(fd[1]);
    execve(argv[0], argv, envp.data());
    _exit(127);
  }
  close(fd[1]);
  char buf[4096];
  ssize_t n;
  while ((n = read(fd[0], buf, sizeof buf)) > 0) c.out.append(buf, static_cast<size_t>(n));
  close(fd[0]);
  waitpid(pid, &c.status, 0);
  return c;
}

// Runs first in this binary, right after the test main's limit_blas_threads() (the call
// every shardflow program makes first). OpenBLAS's pthread build starts its worker threads
// when it is loaded, one per core less one, and each idle worker spins in sched_yield for
// about 0.1 s before it sleeps; with one BLAS thread they are never used, so
// limit_blas_threads() joins them: no thread but the main one carries the program's name.
TEST(BlasThreads, NoIdleOpenBlasWorkersAfterStartUp) {
  if (std::getenv("OPENBLAS_NUM_THREADS") || std::getenv("SHARDFLOW_BLAS_THREADS"))
    GTEST_SKIP() << "OPENBLAS_NUM_THREADS or SHARDFLOW_BLAS_THREADS is set: the user's choice stands";
  if (dlsym(RTLD_DEFAULT, "openblas_get_num_threads") == nullptr) GTEST_SKIP() << "no OpenBLAS in this process";
  if (std::thread::hardware_concurrency() < 2) GTEST_SKIP() << "one core: OpenBLAS starts no workers";
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(e.path() / "comm");
    std::string n;
    std::getline(comm, n);
    names.push_back(e.path().filename().string() + ":" + n);
  }
  // OpenBLAS's workers carry the program's name; other libraries name theirs (UCX: "async")
  std::ifstream self("/proc/self/comm");
  std::string me, all;
  std::getline(self, me);
  std::size_t unnamed = 0;
  for (const auto& n : names) {
    all += " " + n;
    unnamed += n.substr(n.find(':') + 1) == me ? 1 : 0;
  }
  EXPECT_EQ(unnamed, 1u) << "threads named '" << me << "' (tid:name):" << all;
}

TEST(Blas, FeaturesAgreeWithProcCpuinfo) {
  const auto flags = cpuinfo_flags();
  ASSERT_FALSE(flags.empty()) << "no flags line in /proc/cpuinfo";
  const CpuFeatures f = shardflow::detect_cpu_features();
  // /proc/cpuinfo lists what the kernel enabled, i.e. also the OS (xgetbv) side.
  EXPECT_EQ(f.avx2, flags.count("avx2") > 0) << f.to_string();
  EXPECT_EQ(f.avx512f, flags.count("avx512f") > 0) << f.to_string();
  EXPECT_EQ(f.avx512_bf16, flags.count("avx512_bf16") > 0) << f.to_string();
  EXPECT_EQ(f.avx512_fp16, flags.count("avx512_fp16") > 0) << f.to_string();
}

TEST(Blas, BestCoreForFeatures) {
  CpuFeatures f;
  EXPECT_EQ(shardflow::best_blas_core(f), "");
  EXPECT_TRUE(shardflow::blas_core_is_good("Prescott", f));
  f.avx2 = true;
  EXPECT_EQ(shardflow::best_blas_core(f), "Haswell");
  EXPECT_TRUE(shardflow::blas_core_is_good("Zen", f));
  EXPECT_FALSE(shardflow::blas_core_is_good("Sandybridge", f));
  f.avx512f = true;
  EXPECT_EQ(shardflow::best_blas_core(f), "SkylakeX");
  EXPECT_FALSE(shardflow::blas_core_is_good("Haswell", f));
  EXPECT_TRUE(shardflow::blas_core_is_good("SKYLAKEX", f));
  f.avx512_bf16 = true;
  EXPECT_EQ(shardflow::best_blas_core(f), "Cooperlake");
  EXPECT_EQ(shardflow::best_blas_core_reason(f), "avx512_bf16");
  EXPECT_FALSE(shardflow::blas_core_is_good("Prescott", f));
  EXPECT_TRUE(shardflow::blas_core_is_good("Cooperlake", f));
}

TEST(Blas, VerificationGemmAgrees) {
  // The model's gemm path (KokkosBlas -> the BLAS TPL); this also makes the test load the BLAS.
  Kokkos::View<float**, Kokkos::LayoutRight> a("a", 2, 3), b("b", 3, 2), c("c", 2, 2);
  auto ha = Kokkos::create_mirror_view(a);
  auto hb = Kokkos::create_mirror_view(b);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) {
      ha(i, j) = static_cast<float>(i + j);
      hb(j, i) = static_cast<float>(j - i);
    }
  Kokkos::deep_copy(a, ha);
  Kokkos::deep_copy(b, hb);
  KokkosBlas::gemm("N", "N", 1.0f, a, b, 0.0f, c);
  auto hc = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), c);
  EXPECT_EQ(hc(0, 0), 5.0f);  // 0*0 + 1*1 + 2*2
  EXPECT_EQ(hc(1, 1), 2.0f);  // 1*-1 + 2*0 + 3*1
  ASSERT_NE(shardflow::blas_core_name(), "") << "OpenBLAS is not loaded";
  const auto v = shardflow::verify_blas();
  EXPECT_TRUE(v.ok) << v.detail;
  EXPECT_LT(v.max_rel_error, 1e-5) << v.detail;
  const auto& info = shardflow::blas_info();
  EXPECT_TRUE(info.verified);
  EXPECT_GT(info.sgemm_gflops, 0.0);
}

TEST(Blas, VersionWithCoretypeUnsetIsNotPrescottOnAvx512) {
  const Child c = run_version({});
  ASSERT_EQ(c.status, 0) << c.out;
  const std::string kernel = c.field("blas kernel");
  ASSERT_FALSE(kernel.empty()) << c.out;
  const CpuFeatures f = shardflow::detect_cpu_features();
  if (f.avx512f) {
    EXPECT_NE(kernel, "Prescott") << c.out;
  }
  EXPECT_TRUE(shardflow::blas_core_is_good(kernel, f)) << kernel << " on " << f.to_string() << "\n" << c.out;
  EXPECT_EQ(c.field("blas verification").rfind("ok", 0), 0u) << c.out;
  const std::string source = c.field("blas kernel source");
  EXPECT_TRUE(source == "detected by OpenBLAS" || source.rfind("chosen by shardflow for ", 0) == 0) << c.out;
}

TEST(Blas, VersionRespectsUserCoretype) {
  const Child c = run_version({"OPENBLAS_CORETYPE=Haswell"});
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_EQ(c.field("blas kernel"), "Haswell") << c.out;
  EXPECT_EQ(c.field("blas kernel source"), "OPENBLAS_CORETYPE set in the environment (Haswell)") << c.out;
}

// OpenBLAS detects this CPU's core correctly on some machines, so the re-exec path would go
// untested there: the hook makes shardflow treat a forced Prescott as OpenBLAS's detection.
TEST(Blas, VersionReexecsAwayFromMisdetectedPrescott) {
  const CpuFeatures f = shardflow::detect_cpu_features();
  if (shardflow::best_blas_core(f).empty()) GTEST_SKIP() << "no avx2 on this CPU: Prescott is as good as any";
  const Child c = run_version({"OPENBLAS_CORETYPE=Prescott", "SHARDFLOW_BLAS_TEST_MISDETECT=1"});
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_EQ(c.field("blas kernel"), shardflow::best_blas_core(f)) << c.out;
  EXPECT_EQ(c.field("blas kernel source").rfind("chosen by shardflow for " + shardflow::best_blas_core_reason(f), 0),
            0u)
      << c.out;
  EXPECT_EQ(c.field("blas verification").rfind("ok", 0), 0u) << c.out;
}

TEST(Blas, VersionFallsBackWhenTheChosenKernelFailsVerification) {
  const CpuFeatures f = shardflow::detect_cpu_features();
  if (shardflow::best_blas_core(f).empty()) GTEST_SKIP() << "no avx2 on this CPU: nothing is chosen";
  const Child c = run_version(
      {"OPENBLAS_CORETYPE=Prescott", "SHARDFLOW_BLAS_TEST_MISDETECT=1", "SHARDFLOW_BLAS_TEST_FAIL_VERIFY=1"});
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_EQ(c.field("blas kernel"), "Prescott") << c.out;
  EXPECT_NE(c.field("blas kernel source").find("failed verification"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("FAILED verification"), std::string::npos) << "no warning on stderr:\n" << c.out;
  EXPECT_EQ(c.field("blas verification").rfind("ok", 0), 0u) << c.out;
}

using shardflow::GemmLibrary;

/// Row-major op(A)·op(B) in double, plus beta·C0 (C0 unread when beta is 0).
std::vector<double> reference(char ta, char tb, int m, int n, int k, const std::vector<float>& a, int lda,
                              const std::vector<float>& b, int ldb, float beta, const std::vector<float>& c0, int ldc) {
  std::vector<double> r(static_cast<size_t>(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = beta == 0.0f ? 0.0 : static_cast<double>(beta) * c0[static_cast<size_t>(i) * ldc + j];
      for (int q = 0; q < k; ++q) {
        const double av = ta == 'N' ? a[static_cast<size_t>(i) * lda + q] : a[static_cast<size_t>(q) * lda + i];
        const double bv = tb == 'N' ? b[static_cast<size_t>(q) * ldb + j] : b[static_cast<size_t>(j) * ldb + q];
        s += av * bv;
      }
      r[static_cast<size_t>(i) * n + j] = s;
    }
  return r;
}

// Every library the build has, every transposition, padded leading dimensions (a row stride
// past the matrix: the padding must stay untouched), beta 0 over NaN and beta 1, k = 0.
TEST(Gemm, EveryLibraryAndTranspositionMatchesTheReference) {
  std::vector<GemmLibrary> libs = {GemmLibrary::OpenBlas};
  if (shardflow::gemm_policy().onednn_built) libs.push_back(GemmLibrary::OneDnn);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (GemmLibrary lib : libs)
    for (char ta : {'N', 'T'})
      for (char tb : {'N', 'T'})
        for (float beta : {0.0f, 1.0f})
          for (int k : {0, 1, 70}) {
            const int m = 45, n = 38, pad = 3;
            const int ar = ta == 'N' ? m : k, ac = ta == 'N' ? k : m, br = tb == 'N' ? k : n, bc = tb == 'N' ? n : k;
            const int lda = ac + pad, ldb = bc + pad, ldc = n + pad;
            std::vector<float> a(static_cast<size_t>(std::max(ar, 1)) * lda), b(static_cast<size_t>(std::max(br, 1)) * ldb),
                c0(static_cast<size_t>(m) * ldc);
            for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(static_cast<int>((i * 29 + 3) % 61) - 30) / 16.0f;
            for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(static_cast<int>((i * 41 + 7) % 53) - 26) / 8.0f;
            for (int i = 0; i < m; ++i)
              for (int j = 0; j < ldc; ++j)
                c0[static_cast<size_t>(i) * ldc + j] = j >= n ? -77.0f : (beta == 0.0f ? nan : static_cast<float>(i - j));
            std::vector<float> c = c0;
            shardflow::host_sgemm_with(lib, ta, tb, m, n, k, 1.0f, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
            const auto want = reference(ta, tb, m, n, k, a, lda, b, ldb, beta, c0, ldc);
            const std::string label = std::string(shardflow::to_string(lib)) + " " + ta + tb + " beta " +
                                      std::to_string(beta) + " k " + std::to_string(k);
            int bad = 0;
            for (int i = 0; i < m; ++i)
              for (int j = 0; j < ldc; ++j) {
                const float got = c[static_cast<size_t>(i) * ldc + j];
                if (j >= n) {
                  bad += got != -77.0f;  // the padding past each row is not written
                  continue;
                }
                // the data are multiples of 1/128 with small sums: every product is exact in f32
                bad += static_cast<double>(got) != want[static_cast<size_t>(i) * n + j];
              }
            EXPECT_EQ(bad, 0) << label;
          }
}

// A GemmTally counts exactly the products host_sgemm runs on its own thread while it lives:
// the calls, their 2·m·n·k FLOPs, time that adds up; nested tallies both count, a product on
// another thread or after the tally ended does not, and the results are the untallied ones.
TEST(Gemm, TallyCountsThisThreadsProducts) {
  const int m = 64, n = 48, k = 40;
  std::vector<float> a(static_cast<size_t>(m) * k, 0.5f), b(static_cast<size_t>(k) * n, 0.25f),
      c(static_cast<size_t>(m) * n, 0.f), plain = c, cm(static_cast<size_t>(m) * m), ck(static_cast<size_t>(k) * n);
  shardflow::host_sgemm('N', 'N', m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, plain.data(), n);
  const double one = 2.0 * m * n * k, two = 2.0 * m * m * k + 2.0 * k * n * m;
  shardflow::GemmTally outer;
  shardflow::host_sgemm('N', 'N', m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);
  EXPECT_EQ(c, plain);  // a tally changes no result
  {
    shardflow::GemmTally inner;
    shardflow::host_sgemm('N', 'T', m, m, k, 1.0f, a.data(), k, a.data(), k, 0.0f, cm.data(), m);  // A·Aᵀ
    shardflow::host_sgemm('T', 'N', k, n, m, 1.0f, a.data(), k, c.data(), n, 0.0f, ck.data(), n);  // Aᵀ·C
    std::thread([&] {  // a product on another thread: counted by neither
      std::vector<float> d(static_cast<size_t>(m) * n);
      shardflow::host_sgemm('N', 'N', m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, d.data(), n);
    })
        .join();
    EXPECT_EQ(inner.calls(), 2);
    EXPECT_EQ(inner.flops(), two);
    EXPECT_GT(inner.seconds(), 0.0);
    EXPECT_GE(outer.seconds(), inner.seconds());
  }
  EXPECT_EQ(outer.calls(), 3);
  EXPECT_EQ(outer.flops(), one + two);
  const double s3 = outer.seconds();
  {
    shardflow::GemmTally later;  // the inner tally ended: a product counts here and in `outer`
    shardflow::host_sgemm('N', 'N', m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);
    EXPECT_EQ(later.calls(), 1);
    EXPECT_EQ(later.flops(), one);
    EXPECT_DOUBLE_EQ(outer.seconds(), s3 + later.seconds());
  }
  EXPECT_EQ(outer.calls(), 4);
}

TEST(Gemm, PolicyFollowsTheEnvironment) {
  const auto& p = shardflow::gemm_policy();
  if (p.setting == "auto" && p.onednn_built && p.onednn_verified) {
    EXPECT_EQ(shardflow::gemm_library(), GemmLibrary::OneDnn);
  }
  Child c = run_version({"SHARDFLOW_GEMM=openblas"});
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_EQ(c.field("gemm").rfind("openblas for every product (SHARDFLOW_GEMM=openblas)", 0), 0u) << c.out;
  c = run_version({"SHARDFLOW_GEMM=fastest"});
  EXPECT_NE(c.status, 0) << c.out;
  EXPECT_NE(c.out.find("SHARDFLOW_GEMM='fastest' is not one of auto, onednn, openblas"), std::string::npos) << c.out;
  if (!p.onednn_built) GTEST_SKIP() << "this build has no oneDNN";
  c = run_version({});
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_EQ(c.field("gemm").rfind("onednn " + p.onednn_version, 0), 0u) << c.out;
  EXPECT_NE(c.field("gemm").find("for A·B, A·Bᵀ, Aᵀ·B, Aᵀ·Bᵀ (SHARDFLOW_GEMM=auto)"), std::string::npos) << c.out;
  c = run_version({"SHARDFLOW_GEMM=onednn"});
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_NE(c.field("gemm").find("for A·B, A·Bᵀ, Aᵀ·B, Aᵀ·Bᵀ (SHARDFLOW_GEMM=onednn)"), std::string::npos) << c.out;
  EXPECT_GT(std::stod(c.field("sgemm onednn")), 0.0) << c.out;
  // a oneDNN that gets a product wrong is not used, and says so
  c = run_version({"SHARDFLOW_GEMM_TEST_FAIL_VERIFY=1"});
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_NE(c.out.find("sgemm FAILED verification"), std::string::npos) << c.out;
  EXPECT_EQ(c.field("gemm").rfind("openblas for every product (SHARDFLOW_GEMM=auto)", 0), 0u) << c.out;
  // asked for by name, it is an error instead
  c = run_version({"SHARDFLOW_GEMM=onednn", "SHARDFLOW_GEMM_TEST_FAIL_VERIFY=1"});
  EXPECT_NE(c.status, 0) << c.out;
  EXPECT_NE(c.out.find("SHARDFLOW_GEMM='onednn', but oneDNN " + p.onednn_version + "'s sgemm FAILED verification"),
            std::string::npos)
      << c.out;
}

// oneDNN's bf16 matmul (core/gemm.hpp, train.precision = bf16): every transposition, padded
// leading dimensions (the padding stays untouched), beta 0 over NaN and beta 1, alpha 1 and
// 1/2, k = 0. The operands are bf16 values with small exact sums, so the result must equal the
// double reference exactly; one operand that is not a bf16 value must be rounded to the
// nearest (1 + 2^-8 + 2^-10 -> 1 + 2^-7), not truncated (-> 1).
TEST(Gemm, Bf16MatmulMatchesTheReference) {
  if (!shardflow::gemm_policy().onednn_built) GTEST_SKIP() << "this build has no oneDNN";
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (char ta : {'N', 'T'})
    for (char tb : {'N', 'T'})
      for (float beta : {0.0f, 1.0f})
        for (float alpha : {1.0f, 0.5f})
          for (int k : {0, 1, 70}) {
            const int m = 45, n = 38, pad = 3;
            const int ar = ta == 'N' ? m : k, ac = ta == 'N' ? k : m, br = tb == 'N' ? k : n, bc = tb == 'N' ? n : k;
            const int lda = ac + pad, ldb = bc + pad, ldc = n + pad;
            std::vector<float> a(static_cast<size_t>(std::max(ar, 1)) * lda),
                b(static_cast<size_t>(std::max(br, 1)) * ldb), c0(static_cast<size_t>(m) * ldc);
            for (size_t i = 0; i < a.size(); ++i)
              a[i] = static_cast<float>(static_cast<int>((i * 29 + 3) % 61) - 30) / 16.0f;
            for (size_t i = 0; i < b.size(); ++i)
              b[i] = static_cast<float>(static_cast<int>((i * 41 + 7) % 53) - 26) / 8.0f;
            std::vector<float> a_rounded = a;
            if (k > 0) {
              a[0] = 1.0f + 1.0f / 256 + 1.0f / 1024;  // op(A)(0, 0) in every transposition
              a_rounded[0] = 1.0f + 1.0f / 128;
            }
            for (int i = 0; i < m; ++i)
              for (int j = 0; j < ldc; ++j)
                c0[static_cast<size_t>(i) * ldc + j] =
                    j >= n ? -77.0f : (beta == 0.0f ? nan : static_cast<float>(i - j));
            std::vector<float> c = c0;
            shardflow::host_gemm_bf16_native(ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
            std::vector<float> c_half = c0;  // beta · C, for alpha · A·B + beta · C
            const auto ab = reference(ta, tb, m, n, k, a_rounded, lda, b, ldb, 0.0f, c_half, ldc);
            const std::string label = std::string(1, ta) + tb + " beta " + std::to_string(beta) + " alpha " +
                                      std::to_string(alpha) + " k " + std::to_string(k);
            int bad = 0;
            for (int i = 0; i < m; ++i)
              for (int j = 0; j < ldc; ++j) {
                const float got = c[static_cast<size_t>(i) * ldc + j];
                if (j >= n) {
                  bad += got != -77.0f;
                  continue;
                }
                const double want =
                    alpha * ab[static_cast<size_t>(i) * n + j] +
                    (beta == 0.0f ? 0.0 : beta * static_cast<double>(c0[static_cast<size_t>(i) * ldc + j]));
                bad += static_cast<double>(got) != want;
              }
            EXPECT_EQ(bad, 0) << label;
          }
}

// Inside a GemmOperandScope(BF16) host_sgemm multiplies through the bf16 matmul when the
// policy uses it (the same bits as host_gemm_bf16_native; an operand that is not a bf16
// value is rounded, so the f32 product differs), else as before; outside, always as before.
TEST(Gemm, Bf16ScopeRoutesTheProducts) {
  const int m = 33, n = 29, k = 47;
  std::vector<float> a(static_cast<size_t>(m) * k), b(static_cast<size_t>(k) * n);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 1.0f / static_cast<float>(3 + i % 11);  // not bf16 values
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(static_cast<int>(i % 13) - 6) / 7.0f;
  auto product = [&](auto gemm) {
    std::vector<float> c(static_cast<size_t>(m) * n, 0.0f);
    gemm(c.data());
    return c;
  };
  const auto f32 = product([&](float* c) {
    shardflow::host_sgemm_with(shardflow::gemm_library(), 'N', 'N', m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c,
                               n);
  });
  const auto plain =
      product([&](float* c) { shardflow::host_sgemm('N', 'N', m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c, n); });
  EXPECT_EQ(plain, f32) << "outside a bf16 scope";
  std::vector<float> scoped;
  {
    const shardflow::GemmOperandScope outer(shardflow::DType::BF16);
    {
      const shardflow::GemmOperandScope inner(shardflow::DType::F32);
      EXPECT_EQ(product([&](float* c) {
                  shardflow::host_sgemm('N', 'N', m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c, n);
                }),
                f32)
          << "an inner f32 scope";
    }
    scoped = product(
        [&](float* c) { shardflow::host_sgemm('N', 'N', m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c, n); });
  }
  EXPECT_EQ(
      product([&](float* c) { shardflow::host_sgemm('N', 'N', m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c, n); }),
      f32)
      << "after the scope closed";
  if (!shardflow::bf16_gemm_native()) {
    EXPECT_EQ(scoped, f32) << shardflow::bf16_gemm_summary();
    GTEST_SKIP() << "the bf16 matmul is not used here: " << shardflow::bf16_gemm_summary();
  }
  const auto native = product([&](float* c) {
    shardflow::host_gemm_bf16_native('N', 'N', m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c, n);
  });
  EXPECT_EQ(scoped, native);
  EXPECT_NE(scoped, f32) << "the scoped product did not round its operands";
}

// SHARDFLOW_GEMM_BF16 in `shardflow version`'s "bf16 gemm" line, its errors, and the check's
// fallback.
TEST(Gemm, Bf16PolicyFollowsTheEnvironment) {
  Child c = run_version({"SHARDFLOW_GEMM_BF16=off"});
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_EQ(c.field("bf16 gemm").rfind("bf16 products: f32 sgemm of the rounded values (SHARDFLOW_GEMM_BF16=off)", 0),
            0u)
      << c.out;
  c = run_version({"SHARDFLOW_GEMM_BF16=fastest"});
  EXPECT_NE(c.status, 0) << c.out;
  EXPECT_NE(c.out.find("SHARDFLOW_GEMM_BF16='fastest' is not one of auto, on, off"), std::string::npos) << c.out;
  c = run_version({"SHARDFLOW_GEMM=openblas", "SHARDFLOW_GEMM_BF16=on"});
  EXPECT_NE(c.status, 0) << c.out;
  EXPECT_NE(c.out.find("SHARDFLOW_GEMM_BF16=on, but the f32 products do not go through oneDNN"), std::string::npos)
      << c.out;
  if (!shardflow::gemm_policy().onednn_built) GTEST_SKIP() << "this build has no oneDNN";
  c = run_version({"SHARDFLOW_GEMM_BF16=on"});
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_EQ(c.field("bf16 gemm").rfind("bf16 products: onednn bf16 matmul (", 0), 0u) << c.out;
  EXPECT_NE(c.field("bf16 gemm").find("(SHARDFLOW_GEMM_BF16=on)"), std::string::npos) << c.out;
  // auto: the matmul exactly when it measured at least kBf16Margin times the sgemm
  c = run_version({});
  ASSERT_EQ(c.status, 0) << c.out;
  const std::string line = c.field("bf16 gemm");
  double bf = 0, f32 = 0;
  ASSERT_EQ(std::sscanf(line.c_str() + line.find('(') + 1, "%lf GFLOP/s against sgemm %lf", &bf, &f32), 2) << line;
  const bool native = line.rfind("bf16 products: onednn bf16 matmul", 0) == 0;
  EXPECT_EQ(native, bf >= shardflow::kBf16Margin * f32) << line;
  // a bf16 matmul that gets a product wrong is not used under auto, and is an error under on
  c = run_version({"SHARDFLOW_GEMM_BF16_TEST_FAIL_VERIFY=1"});
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_NE(c.field("bf16 gemm").find("FAILED verification"), std::string::npos) << c.out;
  EXPECT_EQ(c.field("bf16 gemm").rfind("bf16 products: f32 sgemm of the rounded values", 0), 0u) << c.out;
  c = run_version({"SHARDFLOW_GEMM_BF16=on", "SHARDFLOW_GEMM_BF16_TEST_FAIL_VERIFY=1"});
  EXPECT_NE(c.status, 0) << c.out;
  EXPECT_NE(c.out.find("SHARDFLOW_GEMM_BF16=on, but oneDNN's bf16 matmul FAILED verification"), std::string::npos)
      << c.out;
}

volatile std::sig_atomic_t g_signals_handled = 0;
extern "C" void count_signal(int) { g_signals_handled = g_signals_handled + 1; }

// Signals that arrive while oneDNN multiplies must not corrupt the heap (oneDNN < 3.11 points
// rsp into the heap inside its JIT GEMM kernels, issue #4845): a thread signals this one every
// few µs while it runs the model's product shapes on freshly allocated buffers for 1.5 s. With
// host_sgemm's signal mask taken out, glibc aborts it ("corrupted size vs. prev_size").
TEST(Gemm, SignalsDuringOneDnnProductsLeaveTheHeapIntact) {
  if (!shardflow::gemm_policy().onednn_built) GTEST_SKIP() << "this build has no oneDNN";
  // oneDNN's workspace in the brk heap, as in a training process whose many frees have
  // raised glibc's dynamic mmap threshold (a fresh process maps it, and the frame lands
  // outside the heap's bookkeeping)
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  struct sigaction sa {}, old {};
  sa.sa_handler = count_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // on the interrupted stack, as std::signal installs handlers
  ASSERT_EQ(sigaction(SIGUSR2, &sa, &old), 0);
  const pthread_t self = pthread_self();
  std::atomic<bool> stop{false};
  std::thread pinger([&] {
    while (!stop.load()) {
      pthread_kill(self, SIGUSR2);
      const auto t = std::chrono::steady_clock::now();  // ~2 µs apart: a sleep comes back too late
      while (std::chrono::steady_clock::now() - t < std::chrono::microseconds(2)) {
      }
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  int products = 0;
  double checksum = 0;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1500)) {
    for (const auto& [ta, tb, m, n, k] : std::vector<std::tuple<char, char, int, int, int>>{
             {'N', 'T', 256, 384, 128}, {'N', 'N', 256, 128, 384}, {'N', 'T', 64, 64, 32}}) {
      std::vector<float> a(static_cast<size_t>(m) * k, 0.5f), b(static_cast<size_t>(k) * n, 0.25f),
          c(static_cast<size_t>(m) * n);
      shardflow::host_sgemm_with(GemmLibrary::OneDnn, ta, tb, m, n, k, 1.0f, a.data(), ta == 'N' ? k : m, b.data(),
                                 tb == 'N' ? n : k, 0.0f, c.data(), n);
      checksum += c[c.size() / 2];
      ++products;
    }
  }
  stop = true;
  pinger.join();
  sigaction(SIGUSR2, &old, nullptr);
  EXPECT_GT(g_signals_handled, 100) << "the signals did not arrive";
  EXPECT_GT(products, 30);
  EXPECT_GT(checksum, 0.0);
}

}  // namespace
