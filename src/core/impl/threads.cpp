#include "core/threads.hpp"

#include <dlfcn.h>

#include <cstdlib>

namespace shardflow {

void limit_blas_threads() {
  using SetThreads = void (*)(int);
  const char* ours = std::getenv("SHARDFLOW_BLAS_THREADS");
  int n = ours != nullptr ? std::atoi(ours) : 1;
  if (n < 1) n = 1;
  // OpenBLAS is loaded behind libblas.so.3 (Debian's alternatives), so look it up at run time.
  // OPENBLAS_NUM_THREADS is the user's choice, already applied by OpenBLAS.
  if (ours != nullptr || std::getenv("OPENBLAS_NUM_THREADS") == nullptr)
    if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
  // oneDNN (core/gemm.hpp) runs on OpenMP threads: the same rule, with OMP_NUM_THREADS as
  // the user's choice. libgomp is loaded with oneDNN; without it there is nothing to limit.
  if (ours != nullptr || std::getenv("OMP_NUM_THREADS") == nullptr)
    if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"))) f(n);
}

}  // namespace shardflow
