// `shardflow version`: the build's configuration.
#include <cstdio>

#include <Kokkos_Core.hpp>

#include "command.hpp"

namespace {
shardflow::app::CommandRegistration reg("version", "print the version and the enabled backends", [](CLI::App&) {
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
    return 0;
  };
});
}  // namespace
