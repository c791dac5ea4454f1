// libFuzzer entry: manifest text (built by scripts/fuzz.sh only).
#include <cstddef>
#include <cstdint>

#include "fuzz_entry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)shardflow::fuzz::fuzz_manifest(data, size);
  return 0;
}
