// The allocation tracker behind core/memory.hpp: a pointer -> bytes map under one mutex
// (allocations are rare: set-up, checkpoints, a few per step at most).
#include "core/memory.hpp"

#include <Kokkos_Core.hpp>
#include <mutex>
#include <unordered_map>

namespace shardflow::memory {

namespace {
struct State {
  std::mutex mu;
  std::unordered_map<const void*, std::int64_t> live;
  std::int64_t current = 0, peak = 0;
  bool installed = false;
};
State& state() {
  static State* s = new State;  // never destroyed: Kokkos frees views after static destructors run
  return *s;
}
void on_alloc(const void* p, std::int64_t bytes) {
  if (p == nullptr || bytes <= 0) return;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto [it, fresh] = s.live.emplace(p, bytes);
  if (!fresh) {  // reused address whose free we missed: replace
    s.current -= it->second;
    it->second = bytes;
  }
  s.current += bytes;
  if (s.current > s.peak) s.peak = s.current;
}
void on_free(const void* p) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.live.find(p);
  if (it == s.live.end()) return;  // allocated before the tracker was installed
  s.current -= it->second;
  s.live.erase(it);
}
void kokkos_alloc(const Kokkos_Profiling_SpaceHandle, const char*, const void* p, const uint64_t size) {
  on_alloc(p, static_cast<std::int64_t>(size));
}
void kokkos_free(const Kokkos_Profiling_SpaceHandle, const char*, const void* p, const uint64_t) { on_free(p); }
}  // namespace

void install_tracker() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.installed || Kokkos::Tools::profileLibraryLoaded()) return;
  Kokkos::Tools::Experimental::set_allocate_data_callback(kokkos_alloc);
  Kokkos::Tools::Experimental::set_deallocate_data_callback(kokkos_free);
  s.installed = true;
}

bool tracking() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.installed;
}

void note_alloc(const void* p, std::int64_t bytes) {
  if (tracking()) on_alloc(p, bytes);
}
void note_free(const void* p) {
  if (tracking()) on_free(p);
}

std::int64_t current_bytes() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.current;
}
std::int64_t peak_bytes() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.peak;
}
std::int64_t reset_peak() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.peak = s.current;
  return s.current;
}

}  // namespace shardflow::memory
