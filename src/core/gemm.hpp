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

#include "core/dtype.hpp"

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

/// While alive, counts the products host_sgemm runs on this thread: how many, their FLOPs
/// (2·m·n·k each) and the wall time inside them, so that a benchmark can see the products'
/// share of a step as the step runs them (perf/bench_nn). Off, host_sgemm pays one
/// thread-local load. Tallies nest: each running tally counts every product of its thread.
class GemmTally {
 public:
  GemmTally();
  ~GemmTally();
  GemmTally(const GemmTally&) = delete;
  GemmTally& operator=(const GemmTally&) = delete;
  std::int64_t calls() const { return calls_; }
  double flops() const { return flops_; }
  double seconds() const { return seconds_; }
  /// (host_sgemm) adds one product to this tally and to the tallies it nests in
  void add(double flops, double seconds);

 private:
  GemmTally* outer_;
  std::int64_t calls_ = 0;
  double flops_ = 0, seconds_ = 0;
};

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

// ---- 16-bit operands (train.precision = bf16) ----------------------------------------------
// Mixed precision rounds every matmul operand to a 16-bit value but holds it in f32
// (docs/memory.md), so an f32 sgemm multiplies it: the products are exact and they
// accumulate in f32. oneDNN's bf16 matmul computes the same thing from bf16 storage (exact
// products, f32 accumulation, in its own order) with the CPU's bf16 dot-product
// instructions: on a 2-core AMD EPYC VM (avx512_bf16) about twice the rate of its f32 sgemm,
// on the 2-core Xeon VM of session 7 about 0.55 of it (docs/perf.md). So it is used only
// where it is measured faster, and only inside a GemmOperandScope(BF16), which the trainer
// opens for a bf16 step's kernels: there host_sgemm rounds A and B to bf16 (round to nearest
// even; values that already are bf16 stay exact) and runs the bf16 matmul.
//
// Environment: SHARDFLOW_GEMM_BF16 = auto (default: oneDNN's bf16 matmul when the f32
// products go through oneDNN, it passes its check, and it runs at least kBf16Margin times
// its sgemm on one 512³ product, measured once per process at the first bf16 product), on
// (whenever oneDNN has it and it passes its check; an error otherwise) or off (the f32
// sgemm of the rounded values, as before). Pin it with on or off for results that cannot
// depend on that measurement (the two paths round the same sums in different orders).
// Testing hook: SHARDFLOW_GEMM_BF16_TEST_FAIL_VERIFY=1 makes the bf16 matmul's check fail.

/// While alive, host_sgemm on this thread multiplies operands that are 16-bit values of
/// `operands` held in f32 (F32: ordinary f32 operands). Nests; restores the outer scope.
class GemmOperandScope {
 public:
  explicit GemmOperandScope(DType operands);
  ~GemmOperandScope();
  GemmOperandScope(const GemmOperandScope&) = delete;
  GemmOperandScope& operator=(const GemmOperandScope&) = delete;

 private:
  DType previous_;
};

struct Bf16GemmPolicy {
  std::string setting;     ///< "auto", "on" or "off" (SHARDFLOW_GEMM_BF16)
  bool available = false;  ///< oneDNN is built, used for f32, and has a bf16 matmul
  bool verified = false;   ///< its results matched a double-precision reference
  double max_rel_error = 0;
  double bf16_gflops = 0;  ///< 512³ through the bf16 matmul (auto and on: measured)
  double f32_gflops = 0;   ///< the same product through the f32 host GEMM
  bool native = false;     ///< bf16-scoped products go through the bf16 matmul
  std::string detail;      ///< why not, when not
  /// "bf16 matmul: onednn (226.7 GFLOP/s against sgemm 110.2, SHARDFLOW_GEMM_BF16=auto)".
  std::string summary() const;
};
/// The native bf16 path needs at least this speed-up over sgemm under auto.
constexpr double kBf16Margin = 1.25;

/// Decided once per process at its first call (then cached): the check and, under auto,
/// the measurement (about 0.1 s). Throws InputError naming the value when SHARDFLOW_GEMM_BF16
/// is none of the three, or is on and the bf16 matmul cannot be used.
const Bf16GemmPolicy& bf16_gemm_policy();

/// Turns the bf16 matmul off in this process from now on (the trainer: another rank of the
/// job does not use it, so that no two ranks multiply the same product two ways).
void veto_bf16_gemm(const std::string& why);
/// Whether bf16-scoped products go through the bf16 matmul now: the policy, less a veto.
bool bf16_gemm_native();
/// bf16_gemm_policy().summary(), with the veto when there is one.
std::string bf16_gemm_summary();

/// Row-major C = alpha · op(A) · op(B) + beta · C through oneDNN's bf16 matmul, A and B
/// rounded to bf16 (tests and benchmarks; host_sgemm uses it as described above). Throws
/// InputError when the build has no oneDNN.
void host_gemm_bf16_native(char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                           const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                           std::int64_t ldc);

/// Single-thread 512³ C = A·Bᵀ through one library: the best call over at least 5 calls
/// and 50 ms after a warm-up call, in GFLOP/s (0 when the build has no oneDNN and it is
/// asked for). OpenBLAS runs one thread for it; the process's setting is restored after.
double measure_sgemm_gflops(GemmLibrary lib);

}  // namespace shardflow
