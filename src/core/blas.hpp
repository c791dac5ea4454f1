#pragma once
// BLAS kernel selection. OpenBLAS built with DYNAMIC_ARCH picks its kernel ("core") from
// the CPU in its library constructor, before main(); on CPUs it does not know it can fall
// back to a slow generic core (Prescott: SSE3 only). OPENBLAS_CORETYPE forces a core, but
// is read only at load time, so ensure_best_blas_kernel() sets it and re-executes the
// program before MPI_Init when the loaded core is worse than the CPU allows.
//
// Environment: OPENBLAS_CORETYPE set by the user is always respected. shardflow records its
// own choice in SHARDFLOW_BLAS_REEXEC (the core it set: the marker that stops a loop) and
// SHARDFLOW_BLAS_SOURCE (why). SHARDFLOW_BLAS_FALLBACK is set when shardflow's choice
// failed verification and the original setting was restored; no re-exec happens after it.
// Testing hooks: SHARDFLOW_BLAS_TEST_MISDETECT=1 treats a user OPENBLAS_CORETYPE as if
// OpenBLAS had detected that core (to exercise the re-exec on a CPU OpenBLAS detects
// correctly); SHARDFLOW_BLAS_TEST_FAIL_VERIFY=1 makes the verification gemm fail while the
// core is shardflow's choice.
#include <string>

namespace shardflow {

/// x86 vector features usable by this process: the CPU has them (cpuid) and the OS saves
/// their register state (xgetbv).
struct CpuFeatures {
  std::string vendor;  ///< cpuid vendor string, e.g. "GenuineIntel", "AuthenticAMD"
  std::string brand;   ///< cpuid brand string, e.g. "AMD EPYC"
  bool avx2 = false;
  bool avx512f = false;
  bool avx512_bf16 = false;
  bool avx512_fp16 = false;
  /// "avx2 avx512f avx512_bf16 -avx512_fp16" (a leading '-' marks an absent feature).
  std::string to_string() const;
};

CpuFeatures detect_cpu_features();

/// The best OpenBLAS core that is correct on a CPU with these features: "Cooperlake"
/// (avx512_bf16), "SkylakeX" (avx512f), "Haswell" (avx2), or "" (nothing better than
/// OpenBLAS's own choice).
std::string best_blas_core(const CpuFeatures& cpu);

/// The feature best_blas_core() chose for ("avx512_bf16", "avx512f", "avx2" or "").
std::string best_blas_core_reason(const CpuFeatures& cpu);

/// Whether `core` (an openblas_get_corename() value, any case) uses the widest vector ISA
/// that the CPU offers (a Cooperlake core on an avx512_bf16 CPU, SkylakeX or better on
/// avx512f, Haswell/Zen or better on avx2; anything on an older CPU).
bool blas_core_is_good(const std::string& core, const CpuFeatures& cpu);

/// The loaded OpenBLAS's core name, or "" when the BLAS is not OpenBLAS.
std::string blas_core_name();

/// Call first thing in main(), before MPI_Init: may re-execute the program (execv of
/// /proc/self/exe with the same argv) with OPENBLAS_CORETYPE set to best_blas_core(),
/// unless OPENBLAS_CORETYPE is already set or the loaded core is already good. After
/// shardflow's own re-exec, checks sgemm against a reference gemm and, on a mismatch,
/// re-executes once more with the original setting. Warns on stderr when execv fails and
/// carries on with the loaded core.
void ensure_best_blas_kernel(int argc, char** argv);

/// sgemm (via the loaded BLAS's sgemm_) against a naive double-precision gemm on
/// deterministic data, at a few shapes that are not multiples of the kernels' blocking.
struct BlasVerification {
  bool ok = false;
  double max_rel_error = 0;  ///< max |c - ref| / sum_k |a·b| over every element and shape
  std::string detail;        ///< the failing shape and element, or the reason it could not run
};
BlasVerification verify_blas();

/// The relative error bound verify_blas() accepts (f32 with k ≤ 96 is far below it; a
/// wrong kernel is off by O(1)).
constexpr double kBlasVerifyTolerance = 1e-4;

struct BlasInfo {
  std::string library;  ///< openblas_get_config(), or "unknown BLAS"
  std::string kernel;   ///< openblas_get_corename(), or "unknown"
  std::string source;   ///< "detected by OpenBLAS", "chosen by shardflow for avx512_bf16 ...",
                        ///< "OPENBLAS_CORETYPE set in the environment", or the fallback's story
  CpuFeatures cpu;
  /// Single-thread 512^3 C = A·Bᵀ, best call over >= 50 ms: through the library shardflow's
  /// host GEMM uses for that product (core/gemm.hpp), and through each library.
  double sgemm_gflops = 0;
  double sgemm_gflops_openblas = 0;
  double sgemm_gflops_onednn = 0;  ///< 0 when the build has no oneDNN or it failed verification
  std::string gemm;                ///< GemmPolicy::summary(): which library multiplies what
  bool verified = false;
  double max_rel_error = 0;
  /// One line for run headers: "blas Cooperlake (detected by OpenBLAS) | gemm onednn ... |
  /// 150.1 GFLOP/s single-core sgemm (openblas 140.2, onednn 150.1) | verified | cpu ...".
  std::string summary() const;
};

/// Measured once per process (about 60 ms; longer at a slow core), then cached.
const BlasInfo& blas_info();

}  // namespace shardflow
