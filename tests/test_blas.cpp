// BLAS kernel selection (core/blas.hpp): cpuid features agree with /proc/cpuinfo, the
// choice of core, the verification gemm, and `shardflow version` in a child process with
// OPENBLAS_CORETYPE unset (must not run Prescott on an avx512f CPU), set by the user
// (respected), and with the testing hooks that exercise the re-exec and its fallback.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <KokkosBlas3_gemm.hpp>
#include <Kokkos_Core.hpp>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/blas.hpp"

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
        "OPENBLAS_CORETYPE=", "SHARDFLOW_BLAS_", "PMI_", "PMIX_", "HYDI_", "HYDRA_", "MPIR_", "OMPI_"};
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

}  // namespace
