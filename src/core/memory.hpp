#pragma once
// What the framework allocates, per process, with its high-water mark: every Kokkos
// allocation in any memory space (through Kokkos' allocate/deallocate tool callbacks) and
// the host buffers shardflow maps itself (checkpoint staging, noted by their owners).
// install_tracker() is idempotent; allocations made before it (and their frees) are not
// seen. When a Kokkos tools library is loaded (KOKKOS_TOOLS_LIBS / KOKKOS_PROFILE_LIBRARY),
// its callbacks stay in place and tracking() is false.
#include <cstdint>

namespace shardflow::memory {

void install_tracker();
bool tracking();
/// For buffers shardflow allocates outside Kokkos (no-ops while not tracking).
void note_alloc(const void* p, std::int64_t bytes);
void note_free(const void* p);
/// Bytes allocated now, and the most at any moment since the last reset_peak().
std::int64_t current_bytes();
std::int64_t peak_bytes();
/// Sets the high-water mark to the bytes allocated now, and returns them.
std::int64_t reset_peak();

}  // namespace shardflow::memory
