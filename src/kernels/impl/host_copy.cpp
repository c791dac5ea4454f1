#include "kernels/host_copy.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SHARDFLOW_HOST_COPY_AVX2 1
#endif

namespace shardflow::kernels::detail {

namespace {

/// A run copied inline in 32-byte blocks below 256 bytes, by memcpy from 256 bytes.
inline void copy_run_generic(char* __restrict__ d, const char* __restrict__ s, std::size_t n) {
  if (n >= 256) {
    std::memcpy(d, s, n);
    return;
  }
  while (n >= 32) {
    __builtin_memcpy(d, s, 32);
    d += 32;
    s += 32;
    n -= 32;
  }
  if (n >= 16) {
    __builtin_memcpy(d, s, 16);
    d += 16;
    s += 16;
    n -= 16;
  }
  if (n) std::memcpy(d, s, n);
}

void copy_runs_generic(char* dst, const char* src, std::int64_t cnt, std::size_t bytes, std::int64_t dst_step,
                       std::int64_t src_step) {
  for (std::int64_t i = 0; i < cnt; ++i) copy_run_generic(dst + i * dst_step, src + i * src_step, bytes);
}

#ifdef SHARDFLOW_HOST_COPY_AVX2
/// A run's bytes in whole 32-byte blocks, four in flight; returns where the blocks end
/// (fewer than 32 bytes remain).
__attribute__((target("avx2"))) inline std::size_t copy_blocks_avx2(char* __restrict__ b, const char* __restrict__ a,
                                                                    std::size_t bytes) {
  std::size_t i = 0;
  for (; i + 128 <= bytes; i += 128) {
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i + 32));
    const __m256i x2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i + 64));
    const __m256i x3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i + 96));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + i), x0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + i + 32), x1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + i + 64), x2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + i + 96), x3);
  }
  for (; i + 32 <= bytes; i += 32)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + i), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)));
  return i;
}

/// One run of at least 32 bytes.
__attribute__((target("avx2"))) inline void copy_run_avx2(char* __restrict__ b, const char* __restrict__ a,
                                                          std::size_t bytes) {
  if (copy_blocks_avx2(b, a, bytes) < bytes) {  // the last 32 bytes again, overlapping what is copied
    const std::size_t t = bytes - 32;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + t), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + t)));
  }
}

__attribute__((target("avx2"))) void copy_runs_avx2(char* dst, const char* src, std::int64_t cnt, std::size_t bytes,
                                                    std::int64_t dst_step, std::int64_t src_step) {
  if (bytes < 32) {
    copy_runs_generic(dst, src, cnt, bytes, dst_step, src_step);
    return;
  }
  for (std::int64_t r = 0; r < cnt; ++r) copy_run_avx2(dst + r * dst_step, src + r * src_step, bytes);
}

/// The line a stream of runs left open: `have` bytes bound for `at` (which starts a
/// 64-byte line), kept here until the next run of the same stream completes the line.
struct PendingLine {
  alignas(64) char line[64];
  char* at = nullptr;
  std::size_t have = 0;
  /// The open line's bytes with ordinary stores (the rest of that line is not the stream's).
  void flush() {
    if (have > 0) std::memcpy(at, line, have);
    have = 0;
  }
};

/// One PendingLine per run of a walk (on the stack for up to kStackRuns runs).
class PendingLines {
 public:
  explicit PendingLines(std::size_t n) : p_(n <= kStackRuns ? stack_ : (heap_.resize(n), heap_.data())), n_(n) {}
  PendingLine& operator[](std::size_t k) { return p_[k]; }
  void flush() {
    for (std::size_t k = 0; k < n_; ++k) p_[k].flush();
  }

 private:
  static constexpr std::size_t kStackRuns = 4;
  PendingLine stack_[kStackRuns];
  std::vector<PendingLine> heap_;
  PendingLine* p_;
  std::size_t n_;
};

/// The 64 bytes at s to the line at d (64-byte aligned), with non-temporal stores.
__attribute__((target("avx2"))) inline void stream_line_avx2(char* d, const char* s) {
  _mm256_stream_si256(reinterpret_cast<__m256i*>(d), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 32), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32)));
}

/// One run of a stream written with non-temporal stores, a whole 64-byte line at a time. A
/// line the run only begins is held in `p` (the next run of the stream, when it lands right
/// after, completes it); one it only ends, or one begun by another writer, gets ordinary
/// stores. A non-temporal store of part of a line goes to memory as a partial write, slower
/// than the ordinary store's read of the line: so a stream written 512 bytes at a time to a
/// destination 16 bytes off a line (a malloc'd buffer) still has all its lines but the first
/// written whole. The caller flushes `p` at the end and fences.
__attribute__((target("avx2"))) inline void stream_run_avx2(char* __restrict__ d, const char* __restrict__ s,
                                                            std::size_t n, PendingLine& p) {
  if (p.have > 0) {
    if (p.at + p.have == d) {  // this run continues the open line
      const std::size_t take = std::min(n, 64 - p.have);
      std::memcpy(p.line + p.have, s, take);
      p.have += take;
      d += take;
      s += take;
      n -= take;
      if (p.have < 64) return;
      stream_line_avx2(p.at, p.line);
      p.have = 0;
    } else {
      p.flush();
    }
  }
  if (n == 0) return;
  const std::size_t head = std::min(n, (64 - (reinterpret_cast<std::uintptr_t>(d) & 63)) & 63);
  if (head) copy_run_generic(d, s, head);  // the line's first bytes are not this run's
  std::size_t i = head;
  for (; i + 64 <= n; i += 64) stream_line_avx2(d + i, s + i);
  if (i < n) {
    p.at = d + i;
    p.have = n - i;
    std::memcpy(p.line, s + i, p.have);
  }
}

__attribute__((target("avx2"))) void copy_row_runs_avx2(char* base, std::int64_t row_step, std::int64_t rows,
                                                        const RowRun* runs, std::size_t nruns, RowWalk dir) {
  const bool from = dir == RowWalk::FromRows;
  bool streamed = false;
  PendingLines pending(from ? nruns : 0);
  PendingLine into_rows;
  for (std::int64_t r = 0; r < rows; ++r) {
    char* row = base + r * row_step;
    for (std::size_t k = 0; k < nruns; ++k) {
      const RowRun& q = runs[k];
      if (r < q.row0 || r >= q.row0 + q.rows) continue;
      char* a = row + q.row_off;
      char* b = q.other + (r - q.row0) * q.other_step;
      char* d = from ? b : a;
      const char* s = from ? a : b;
      if (q.stream) {  // FromRows: each run's other side is a stream; IntoRows: the rows are one
        stream_run_avx2(d, s, q.bytes, from ? pending[k] : into_rows);
        streamed = true;
      } else if (q.bytes >= 32) {
        copy_run_avx2(d, s, q.bytes);
      } else {
        copy_run_generic(d, s, q.bytes);
      }
    }
  }
  pending.flush();
  into_rows.flush();
  if (streamed) _mm_sfence();  // the non-temporal stores are visible before the caller goes on
}

#endif

void copy_row_runs_generic(char* base, std::int64_t row_step, std::int64_t rows, const RowRun* runs, std::size_t nruns,
                           RowWalk dir) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::size_t k = 0; k < nruns; ++k) {
      const RowRun& q = runs[k];
      if (r < q.row0 || r >= q.row0 + q.rows) continue;
      char* a = base + r * row_step + q.row_off;
      char* b = q.other + (r - q.row0) * q.other_step;
      if (dir == RowWalk::FromRows)
        copy_run_generic(b, a, q.bytes);
      else
        copy_run_generic(a, b, q.bytes);
    }
}

using CopyRuns = void (*)(char*, const char*, std::int64_t, std::size_t, std::int64_t, std::int64_t);
using CopyRowRuns = void (*)(char*, std::int64_t, std::int64_t, const RowRun*, std::size_t, RowWalk);

struct Impl {
  const char* name;
  CopyRuns fn;
  CopyRowRuns rows;
};

/// Every implementation this CPU runs, fastest first.
std::vector<Impl> available() {
  std::vector<Impl> v;
#ifdef SHARDFLOW_HOST_COPY_AVX2
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) v.push_back({"avx2", copy_runs_avx2, copy_row_runs_avx2});
#endif
  v.push_back({"generic", copy_runs_generic, copy_row_runs_generic});
  return v;
}

Impl g_copy_runs = available().front();

}  // namespace

void host_copy_runs(char* dst, const char* src, std::int64_t cnt, std::size_t bytes, std::int64_t dst_step,
                    std::int64_t src_step) {
  g_copy_runs.fn(dst, src, cnt, bytes, dst_step, src_step);
}

void host_copy_row_runs(char* base, std::int64_t row_step, std::int64_t rows, const RowRun* runs, std::size_t nruns,
                        RowWalk dir) {
  g_copy_runs.rows(base, row_step, rows, runs, nruns, dir);
}

const char* host_copy_impl() { return g_copy_runs.name; }

std::vector<std::string> host_copy_impls() {
  std::vector<std::string> names;
  for (const Impl& i : available()) names.emplace_back(i.name);
  return names;
}

void set_host_copy_impl(const std::string& impl) {
  std::string have;
  for (const Impl& i : available()) {
    if (impl == i.name) {
      g_copy_runs = i;
      return;
    }
    have += have.empty() ? i.name : std::string(", ") + i.name;
  }
  SHARDFLOW_REQUIRE_INPUT(false, "host copy implementation '", impl, "' is not available on this CPU (have: ", have,
                          ")");
}

}  // namespace shardflow::kernels::detail
