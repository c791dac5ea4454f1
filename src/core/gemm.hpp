#pragma once
// The host f32 GEMM: which library multiplies the model's f32 matrices on a CPU.
//
// Two libraries from Debian can: OpenBLAS (through sgemm_, with the kernel core/blas.hpp
// chooses) and oneDNN (dnnl_sgemm, which detects the CPU's ISA itself and JIT-compiles its
// kernels). Measured on one step's products of the bench model, side by side
// (perf/bench_gemm, docs/perf.md "The host GEMM"), oneDNN is 1.04-1.14x OpenBLAS per
// transposition and 1.2-1.4x on the attention core's small products. The choice is fixed,
// never timed at run time, so that a run's results do not depend on how fast the machine
// happened to be.
//
// Environment: SHARDFLOW_GEMM = auto (default: oneDNN for every product when the build has it
// and it passes its check, else OpenBLAS), onednn (the same, but an error when oneDNN cannot
// be used) or openblas (every product through OpenBLAS: the results of builds before oneDNN).
// oneDNN is checked against a double-precision reference once per process, on every
// transposition; under auto a mismatch falls back to OpenBLAS with a warning. Testing hook:
// SHARDFLOW_GEMM_TEST_FAIL_VERIFY=1 makes that check fail.
//
// oneDNN before 3.11 points rsp into the heap inside its JIT GEMM kernels (oneDNN issue
// #4845): host_sgemm blocks signals for the duration of each oneDNN product.
#include <cstdint>
#include <string>

namespace shardflow {

enum class GemmLibrary { OpenBlas, OneDnn };

const char* to_string(GemmLibrary lib);

/// Row-major C[m, n] = alpha · op(A) · op(B) + beta · C with op = identity ('N') or
/// transpose ('T'); lda, ldb, ldc are row strides in elements. With beta == 0, C is not
/// read (NaNs in it do not propagate). Single-threaded per rank (core/threads.hpp).
void host_sgemm(char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);

/// The same through one library, whatever the policy (tests and benchmarks). Throws
/// InputError when oneDNN is asked for and the build has none.
void host_sgemm_with(GemmLibrary lib, char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                     const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                     std::int64_t ldc);

struct GemmPolicy {
  std::string setting;         ///< "auto", "onednn" or "openblas" (SHARDFLOW_GEMM)
  bool onednn_built = false;   ///< compiled with oneDNN
  bool onednn_verified = false;
  double onednn_max_rel_error = 0;
  std::string onednn_version;  ///< "2.6.3"
  std::string onednn_isa;      ///< the ISA oneDNN runs ("avx512_core_bf16", ...)
  std::string detail;          ///< why oneDNN is not used, when it is not
  GemmLibrary library = GemmLibrary::OpenBlas;  ///< the library of every host f32 product
  /// "onednn 2.6.3 (avx512_core_bf16) for A·B, A·Bᵀ, Aᵀ·B, Aᵀ·Bᵀ (SHARDFLOW_GEMM=auto)".
  std::string summary() const;
};

/// Read once per process (SHARDFLOW_GEMM, oneDNN's verification), then cached. Throws
/// InputError naming the value when SHARDFLOW_GEMM is none of the three, or is onednn and
/// oneDNN is not built or fails its check.
const GemmPolicy& gemm_policy();

/// The library host_sgemm() uses (gemm_policy().library).
GemmLibrary gemm_library();

/// Single-thread 512³ C = A·Bᵀ through one library: the best call over at least 5 calls
/// and 50 ms after a warm-up call, in GFLOP/s (0 when the build has no oneDNN and it is
/// asked for). OpenBLAS runs one thread for it; the process's setting is restored after.
double measure_sgemm_gflops(GemmLibrary lib);

}  // namespace shardflow
