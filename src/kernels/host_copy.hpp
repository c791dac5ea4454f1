#pragma once
// Host copies of many equal runs (the pack / unpack host path). One call copies a batch of
// runs, so the per-run cost is a loop iteration, not a library call: run i is the `bytes`
// bytes at src + i * src_step, copied to dst + i * dst_step. Runs must not overlap.
//
// On x86-64 CPUs with AVX2 (checked once at load time) runs are copied with 32-byte vector
// loads and stores, four in flight; elsewhere short runs are copied inline in 32-byte
// blocks and runs of 256 bytes or more go to memcpy. Library memcpy pays a call, a size
// dispatch and, from a few KiB, the start-up of `rep movsb` on every run: measured on this
// machine (bench_pack), 256-byte and 4-KiB runs in 1 MiB boxes reached 0.80 and 0.75 of
// one contiguous memcpy through it, against 0.94 and 0.92 inline. A 64-byte (AVX-512)
// variant was tried and measured no faster in bench_pack (256 KiB to 16 MiB boxes, 256- and
// 1024-byte runs, three alternating runs each): the copies run at the cache's and memory's
// rate, not the load/store ports'.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace shardflow::kernels::detail {

void host_copy_runs(char* dst, const char* src, std::int64_t cnt, std::size_t bytes, std::int64_t dst_step,
                    std::int64_t src_step);

/// One run of every row of a row walk (host_copy_row_runs): in the walked rows [row0, row0 +
/// rows), the `bytes` bytes at row_off of the row; the other side of row r's run is at
/// other + (r - row0) * other_step.
struct RowRun {
  std::int64_t row0 = 0, rows = 0;
  std::size_t row_off = 0, bytes = 0;
  char* other = nullptr;
  std::int64_t other_step = 0;
  /// Write with non-temporal stores (the AVX2 implementation): FromRows the other
  /// side, IntoRows the walked rows. For bytes not read next by this core (a staging buffer
  /// a peer's exchange reads; a large destination): they go to memory without the ordinary
  /// store's read of each line first. Whole 64-byte lines only: a line a run only begins is
  /// completed by the next streamed run that writes right after it (FromRows the same run
  /// in the next row, when its other side is contiguous; IntoRows the next streamed run of
  /// the walk), else written with ordinary stores.
  bool stream = false;
};

/// Which side of the copies the walked rows are.
enum class RowWalk { FromRows, IntoRows };

/// Walks the rows r = 0 .. rows-1 (row r at base + r * row_step) once, in order, and copies
/// each row's part of every run in `runs` (given in ascending row_off) before moving to the
/// next row: the rows are one ascending stream. FromRows copies each row's runs out to
/// their `other` side (e.g. a source row split among several pieces); IntoRows fills each
/// row's runs from theirs (a destination row assembled from several pieces). Splitting
/// rows among pieces one piece at a time (every row's first part, then every row's second
/// part) touches each row out of order, and the hardware prefetchers then fetch memory as
/// if the rows were read twice (docs/comm.md: 1.7-2x slower for 512-byte halves of 1 KiB
/// rows of a 32 MiB source). Runs must not overlap where they are written.
void host_copy_row_runs(char* base, std::int64_t row_step, std::int64_t rows, const RowRun* runs, std::size_t nruns,
                        RowWalk dir);

/// Which implementation host_copy_runs uses ("avx2" or "generic").
const char* host_copy_impl();

/// The implementations this CPU can run, fastest first (tests and benchmarks).
std::vector<std::string> host_copy_impls();

/// Makes host_copy_runs use `impl` from now on (tests and benchmarks; not thread-safe
/// against concurrent copies). Throws InputError naming it when this CPU cannot run it.
void set_host_copy_impl(const std::string& impl);

}  // namespace shardflow::kernels::detail
