// `shardflow version`: the build's configuration.
#include <Kokkos_Core.hpp>
#include <cstdio>

#include "command.hpp"
#include "core/blas.hpp"
#include "core/gemm.hpp"

#ifdef SHARDFLOW_HAVE_TCMALLOC
extern "C" const char* tc_version(int* major, int* minor, const char** patch);  // (gperftools/tcmalloc.h)
#endif

namespace {
shardflow::app::CommandRegistration reg(
    "version", "print the version and the enabled backends",
    [](CLI::App&) {
      return []() {
        if (shardflow::app::world_rank() != 0) return 0;
        std::printf("shardflow 0.1.0\n");
        std::printf("kokkos %d.%d.%d\n", KOKKOS_VERSION / 10000, (KOKKOS_VERSION / 100) % 100, KOKKOS_VERSION % 100);
#ifdef SHARDFLOW_HAVE_CUDA
        std::printf("cuda: enabled\n");
#else
        std::printf("cuda: disabled\n");
#endif
#ifdef SHARDFLOW_HAVE_NCCL
        std::printf("nccl: enabled\n");
#else
        std::printf("nccl: disabled\n");
#endif
        const shardflow::BlasInfo& b = shardflow::blas_info();
        std::printf("blas: %s\n", b.library.c_str());
        std::printf("blas kernel: %s\n", b.kernel.c_str());
        std::printf("blas kernel source: %s\n", b.source.c_str());
        std::printf("cpu: %s (%s): %s\n", b.cpu.brand.c_str(), b.cpu.vendor.c_str(), b.cpu.to_string().c_str());
        std::printf("blas verification: %s (max relative error %.2g, bound %.0e)\n", b.verified ? "ok" : "FAILED",
                    b.max_rel_error, shardflow::kBlasVerifyTolerance);
        std::printf("gemm: %s\n", b.gemm.c_str());
        std::printf("sgemm: %.1f GFLOP/s (one thread, 512^3 A·Bᵀ, the library shardflow uses for it)\n",
                    b.sgemm_gflops);
        std::printf("sgemm openblas: %.1f GFLOP/s\n", b.sgemm_gflops_openblas);
        std::printf("sgemm onednn: %.1f GFLOP/s%s\n", b.sgemm_gflops_onednn,
                    b.sgemm_gflops_onednn > 0 ? "" : " (not in this build, or it failed verification)");
        std::printf("bf16 gemm: %s\n", shardflow::bf16_gemm_summary().c_str());
#ifdef SHARDFLOW_HAVE_TCMALLOC
        int major = 0, minor = 0;
        const char* patch = "";
        std::printf("malloc: tcmalloc_minimal (%s)\n", tc_version(&major, &minor, &patch));
#else
        std::printf("malloc: the C library's\n");
#endif
        return 0;
      };
    },
    /*needs_mpi=*/false);
}  // namespace
