#include "core/threads.hpp"

#include <dlfcn.h>

#include <cstdlib>

namespace shardflow {

void limit_blas_threads() {
  int n = 1;
  if (const char* s = std::getenv("SHARDFLOW_BLAS_THREADS")) n = std::atoi(s);
  else if (std::getenv("OPENBLAS_NUM_THREADS")) return;  // the user's choice, already applied by OpenBLAS
  if (n < 1) n = 1;
  // OpenBLAS is loaded behind libblas.so.3 (Debian's alternatives), so look it up at run time.
  using SetThreads = void (*)(int);
  if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
}

}  // namespace shardflow
