// libFuzzer entry: a whole checkpoint with manifest.json or shard-0.h5 replaced by the
// input (built by scripts/fuzz.sh only). MPI and Kokkos are initialised once.
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "fuzz_entry.hpp"

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  MPI_Init(argc, argv);
  Kokkos::initialize();
  shardflow::fuzz::init_checkpoint_harness();
  // `-write_seeds=DIR`-style helper is not a libFuzzer flag: use SHARDFLOW_FUZZ_WRITE_SEEDS.
  if (const char* dir = std::getenv("SHARDFLOW_FUZZ_WRITE_SEEDS")) {
    shardflow::fuzz::write_seeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)shardflow::fuzz::fuzz_checkpoint(data, size);
  return 0;
}
