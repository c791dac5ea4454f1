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
    if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
      f(n);
      // The pthread build started its worker threads when it was loaded (one per core less
      // one), and an idle worker spins in sched_yield for about 0.1 s before it sleeps: a
      // core taken from this process (and from the other ranks on the node) at every start.
      // With one thread the workers are not needed; OpenBLAS's own shutdown (what it runs
      // before a fork) joins them, and it starts them again if it later runs in parallel.
      using Shutdown = int (*)();
      if (n == 1)
        if (auto stop = reinterpret_cast<Shutdown>(dlsym(RTLD_DEFAULT, "blas_thread_shutdown_"))) stop();
    }
  // oneDNN (core/gemm.hpp) runs on OpenMP threads: the same rule, with OMP_NUM_THREADS as
  // the user's choice. libgomp is loaded with oneDNN; without it there is nothing to limit.
  if (ours != nullptr || std::getenv("OMP_NUM_THREADS") == nullptr)
    if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"))) f(n);
}

}  // namespace shardflow
