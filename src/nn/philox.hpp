#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11):
// a counter-based generator. The output for (key, counter) is a pure function of them, so
// any element of any random stream can be produced independently, on any rank or thread.
// shardflow uses it for initialisation (key from (seed, tensor name), counter = element
// index) and for the data loader (key from seed, counter = (sequence, step)).
#include <Kokkos_Core.hpp>
#include <cstdint>

namespace shardflow::nn {

struct Philox4x32 {
  /// out = Philox4x32-10(counter, key).
  KOKKOS_INLINE_FUNCTION static void generate(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
      const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
      const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
      c0 = hi1 ^ c1 ^ k0;
      c1 = lo1;
      c2 = hi0 ^ c3 ^ k1;
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
  }
  /// The 64-bit word made of out[0] (low) and out[1] (high).
  KOKKOS_INLINE_FUNCTION static uint64_t generate64(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
    const uint32_t c[4] = {static_cast<uint32_t>(counter_lo), static_cast<uint32_t>(counter_lo >> 32),
                           static_cast<uint32_t>(counter_hi), static_cast<uint32_t>(counter_hi >> 32)};
    const uint32_t k[2] = {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
    uint32_t o[4];
    generate(c, k, o);
    return static_cast<uint64_t>(o[0]) | (static_cast<uint64_t>(o[1]) << 32);
  }
};

/// splitmix64's finaliser: a bijective 64-bit mixer (used to derive keys, not streams).
KOKKOS_INLINE_FUNCTION uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace shardflow::nn
