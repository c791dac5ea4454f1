#include "ckpt/checksum.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "core/error.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <nmmintrin.h>
#define SHARDFLOW_CRC32C_X86 1
#endif

namespace shardflow::ckpt {

namespace {

constexpr std::uint32_t kPoly = 0x82F63B78u;

// Slicing-by-8 tables: kTable[k][b] is the CRC of byte b followed by k zero bytes.
struct Tables {
  std::uint32_t t[8][256];
  Tables() {
    for (std::uint32_t b = 0; b < 256; ++b) {
      std::uint32_t c = b;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
      t[0][b] = c;
    }
    for (int k = 1; k < 8; ++k)
      for (std::uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xff];
  }
};
const Tables& tables() {
  static const Tables tb;
  return tb;
}

// GF(2) arithmetic modulo the (reflected) polynomial, for combining CRCs.
std::uint32_t gf2_mul(std::uint32_t a, std::uint32_t b) {
  std::uint32_t r = 0;
  for (int i = 0; i < 32; ++i) {
    if (a & 0x80000000u) r ^= b;
    a <<= 1;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return r;
}
std::uint32_t xpow(std::uint64_t k) {  // x^k mod P, reflected
  std::uint32_t result = 0x80000000u, power = 0x40000000u;
  while (k) {
    if (k & 1) result = gf2_mul(result, power);
    power = gf2_mul(power, power);
    k >>= 1;
  }
  return result;
}
std::uint32_t x8n(std::size_t len) { return xpow(8 * static_cast<std::uint64_t>(len)); }  // x^(8*len) mod P

std::uint32_t portable_raw(const unsigned char* p, std::size_t n, std::uint32_t c) {
  const auto& t = tables().t;
  while (n >= 8) {
    std::uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;  // little-endian host (x86, arm64)
    c = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^ t[3][hi & 0xff] ^
        t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xff];
  return c;
}

#ifdef SHARDFLOW_CRC32C_X86
// Three independent streams hide the 3-cycle latency of the crc32 instruction; the
// streams are combined by shifting the CRC of the earlier parts over the later bytes
// (multiplication by x^(8*len) in GF(2), done with the table-free "zeros" operator).
__attribute__((target("sse4.2"))) std::uint32_t hw_1(const unsigned char* p, std::size_t n, std::uint32_t c) {
  std::uint64_t c64 = c;
  while (n >= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    c64 = _mm_crc32_u64(c64, v);
    p += 8;
    n -= 8;
  }
  c = static_cast<std::uint32_t>(c64);
  while (n--) c = _mm_crc32_u8(c, *p++);
  return c;
}

__attribute__((target("sse4.2"))) std::uint32_t hw_raw(const unsigned char* p, std::size_t n, std::uint32_t c) {
  constexpr std::size_t kLane = 8192;  // bytes per stream per round
  if (n < 3 * kLane) return hw_1(p, n, c);
  static const std::uint32_t shift_lane = x8n(kLane);
  static const std::uint32_t shift_2lanes = x8n(2 * kLane);
  while (n >= 3 * kLane) {
    std::uint64_t a = c, b = 0, d = 0;
    const unsigned char* pa = p;
    const unsigned char* pb = p + kLane;
    const unsigned char* pd = p + 2 * kLane;
    for (std::size_t i = 0; i < kLane; i += 8) {
      std::uint64_t va, vb, vd;
      std::memcpy(&va, pa + i, 8);
      std::memcpy(&vb, pb + i, 8);
      std::memcpy(&vd, pd + i, 8);
      a = _mm_crc32_u64(a, va);
      b = _mm_crc32_u64(b, vb);
      d = _mm_crc32_u64(d, vd);
    }
    // state after a|b|d = shift(a, 2 lanes) ^ shift(b, 1 lane) ^ d (CRC linearity)
    c = gf2_mul(static_cast<std::uint32_t>(a), shift_2lanes) ^ gf2_mul(static_cast<std::uint32_t>(b), shift_lane) ^
        static_cast<std::uint32_t>(d);
    p += 3 * kLane;
    n -= 3 * kLane;
  }
  return hw_1(p, n, c);
}

__attribute__((target("sse4.2"))) void hw_x3(const unsigned char* const p[3], std::size_t n, std::uint32_t c[3]) {
  std::uint64_t a = c[0], b = c[1], d = c[2];
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t va, vb, vd;
    std::memcpy(&va, p[0] + i, 8);
    std::memcpy(&vb, p[1] + i, 8);
    std::memcpy(&vd, p[2] + i, 8);
    a = _mm_crc32_u64(a, va);
    b = _mm_crc32_u64(b, vb);
    d = _mm_crc32_u64(d, vd);
  }
  std::uint32_t a32 = static_cast<std::uint32_t>(a), b32 = static_cast<std::uint32_t>(b), d32 = static_cast<std::uint32_t>(d);
  for (; i < n; ++i) {
    a32 = _mm_crc32_u8(a32, p[0][i]);
    b32 = _mm_crc32_u8(b32, p[1][i]);
    d32 = _mm_crc32_u8(d32, p[2][i]);
  }
  c[0] = a32;
  c[1] = b32;
  c[2] = d32;
}
bool have_sse42() {
  static const bool v = __builtin_cpu_supports("sse4.2");
  return v;
}

// ---- carry-less-multiply folding (AVX-512 VPCLMULQDQ) ----------------------------------
// The bytes are held as polynomials in 128-bit lanes, bit k of a lane (little-endian) the
// coefficient of x^(127-k) (the reflected order: the first bit is the highest power). A
// lane R = Lo * x^64 + Hi moves D bits further down the stream (R * x^D, reduced modulo P
// to a congruent value) with two carry-less products: for a constant K held in the low 32
// bits (reflected), clmul(Lo, K) is Lo * K * x^33 in the lane's order, so
//   R * x^D  =  clmul(Lo, x^(D+31) mod P)  ^  clmul(Hi, x^(D-33) mod P)   (mod P).
// Four 512-bit registers (16 lanes, 256 bytes) fold 2048 bits per round; at the end the
// lanes fold into one, and the CRC state of R is R * x^32 mod P: the crc32 instruction over
// its 16 bytes from state 0. The initial state enters xored into the first 4 bytes.
struct FoldConstants {
  // per 128-bit lane {x^(D+31), x^(D-33)} mod P for D = 2048, 512, and the lane offsets
  // 384, 256, 128 (lane 3: none) of the final reduction
  alignas(64) std::uint64_t k2048[8], k512[8], lanes[8];
  FoldConstants() {
    for (int l = 0; l < 4; ++l) {
      k2048[2 * l] = xpow(2048 + 31);
      k2048[2 * l + 1] = xpow(2048 - 33);
      k512[2 * l] = xpow(512 + 31);
      k512[2 * l + 1] = xpow(512 - 33);
      const std::uint64_t d = static_cast<std::uint64_t>(384 - 128 * l);
      lanes[2 * l] = l < 3 ? xpow(d + 31) : 0;
      lanes[2 * l + 1] = l < 3 ? xpow(d - 33) : 0;
    }
  }
};
const FoldConstants& fold_constants() {
  static const FoldConstants k;
  return k;
}
bool have_vpclmul() {
  static const bool v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("vpclmulqdq") &&
                        __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.2");
  return v;
}

#define SHARDFLOW_FOLD_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,vpclmulqdq,pclmul,sse4.2")))

SHARDFLOW_FOLD_TARGET inline __m512i fold_by(__m512i x, __m512i k, __m512i data) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11), data,
                                   0x96);  // a ^ b ^ c
}

/// The raw CRC state of four 512-bit fold registers (16 lanes, in stream order x0 .. x3).
SHARDFLOW_FOLD_TARGET inline std::uint32_t fold_finish(__m512i x0, __m512i x1, __m512i x2, __m512i x3) {
  const FoldConstants& kc = fold_constants();
  const __m512i k512 = _mm512_load_si512(kc.k512);
  __m512i y = fold_by(x0, k512, x1);
  y = fold_by(y, k512, x2);
  y = fold_by(y, k512, x3);
  // lanes 0..2 moved to the end of lane 3 (lane 3 times the zero constant is 0), then xored
  const __m512i moved = fold_by(y, _mm512_load_si512(kc.lanes), _mm512_setzero_si512());
  alignas(64) std::uint64_t ys[8], ms[8];
  _mm512_store_si512(ys, y);
  _mm512_store_si512(ms, moved);
  const std::uint64_t lo = ys[6] ^ ms[0] ^ ms[2] ^ ms[4], hi = ys[7] ^ ms[1] ^ ms[3] ^ ms[5];
  return static_cast<std::uint32_t>(_mm_crc32_u64(_mm_crc32_u64(0, lo), hi));
}

/// Raw CRC state after `count` segments of `seg` bytes (seg a multiple of 256, count >= 1),
/// segment i at base + i * stride, from raw state c.
SHARDFLOW_FOLD_TARGET std::uint32_t fold_raw(const unsigned char* base, std::size_t stride, std::size_t seg,
                                             std::size_t count, std::uint32_t c) {
  const FoldConstants& kc = fold_constants();
  const __m512i k2048 = _mm512_load_si512(kc.k2048);
  __m512i x0 = _mm512_xor_si512(_mm512_loadu_si512(base), _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, static_cast<long long>(c)));
  __m512i x1 = _mm512_loadu_si512(base + 64), x2 = _mm512_loadu_si512(base + 128), x3 = _mm512_loadu_si512(base + 192);
  std::size_t i = 256;
  for (std::size_t s = 0; s < count; ++s, i = 0) {
    const unsigned char* p = base + s * stride;
    for (; i < seg; i += 256) {
      x0 = fold_by(x0, k2048, _mm512_loadu_si512(p + i));
      x1 = fold_by(x1, k2048, _mm512_loadu_si512(p + i + 64));
      x2 = fold_by(x2, k2048, _mm512_loadu_si512(p + i + 128));
      x3 = fold_by(x3, k2048, _mm512_loadu_si512(p + i + 192));
    }
  }
  return fold_finish(x0, x1, x2, x3);
}

/// One segment of fold_copy: its 256-byte blocks loaded once, folded into x0..x3 (or, for the
/// very first block, seeding them with the initial state c) and stored to q. Q: q is 8·Q
/// bytes past a 64-byte boundary (1..7: every full store is aligned, two loaded blocks
/// joined by valignq, with a masked head and tail; 0: aligned as loaded), or -1 for
/// unaligned stores (a destination not 8-byte aligned).
// hi:lo shifted right by K qwords, the low 512 bits (valignq; the masked form with a zero
// pass-through, since GCC 12 warns about the unmasked form's undefined one under -Werror)
template <int K>
SHARDFLOW_FOLD_TARGET inline __m512i join_qwords(__m512i hi, __m512i lo) {
  return _mm512_mask_alignr_epi64(_mm512_setzero_si512(), static_cast<__mmask8>(0xFF), hi, lo, K);
}

// one whole, aligned 64-byte store: non-temporal when NT
template <bool NT>
SHARDFLOW_FOLD_TARGET inline void store_line(unsigned char* a, __m512i v) {
  if constexpr (NT)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(a), v);
  else
    _mm512_store_si512(a, v);
}

template <int Q, bool NT>
SHARDFLOW_FOLD_TARGET inline void fold_copy_segment(const unsigned char* p, unsigned char* q, std::size_t seg,
                                                    __m512i& x0, __m512i& x1, __m512i& x2, __m512i& x3, bool& seeded,
                                                    std::uint32_t c, __m512i k2048) {
  __m512i prev = _mm512_setzero_si512();
  unsigned char* base = q - 8 * (Q > 0 ? Q : 0);  // the 64-byte boundary below q
  for (std::size_t i = 0; i < seg; i += 256) {
    const __m512i d0 = _mm512_loadu_si512(p + i), d1 = _mm512_loadu_si512(p + i + 64),
                  d2 = _mm512_loadu_si512(p + i + 128), d3 = _mm512_loadu_si512(p + i + 192);
    if constexpr (Q < 0) {
      _mm512_storeu_si512(q + i, d0);
      _mm512_storeu_si512(q + i + 64, d1);
      _mm512_storeu_si512(q + i + 128, d2);
      _mm512_storeu_si512(q + i + 192, d3);
    } else if constexpr (Q == 0) {
      store_line<NT>(q + i, d0);
      store_line<NT>(q + i + 64, d1);
      store_line<NT>(q + i + 128, d2);
      store_line<NT>(q + i + 192, d3);
    } else {
      if (i == 0)
        _mm512_mask_storeu_epi64(q, static_cast<__mmask8>((1u << (8 - Q)) - 1), d0);  // the head, up to the boundary
      else
        store_line<NT>(base + i, join_qwords<8 - Q>(d0, prev));
      store_line<NT>(base + i + 64, join_qwords<8 - Q>(d1, d0));
      store_line<NT>(base + i + 128, join_qwords<8 - Q>(d2, d1));
      store_line<NT>(base + i + 192, join_qwords<8 - Q>(d3, d2));
      prev = d3;
    }
    if (!seeded) {
      x0 = _mm512_xor_si512(d0, _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, static_cast<long long>(c)));
      x1 = d1;
      x2 = d2;
      x3 = d3;
      seeded = true;
    } else {
      x0 = fold_by(x0, k2048, d0);
      x1 = fold_by(x1, k2048, d1);
      x2 = fold_by(x2, k2048, d2);
      x3 = fold_by(x3, k2048, d3);
    }
  }
  if constexpr (Q > 0)  // the tail: the last 8·Q bytes, from the boundary before q + seg
    _mm512_mask_storeu_epi64(base + seg, static_cast<__mmask8>((1u << Q) - 1),
                             join_qwords<8 - Q>(_mm512_setzero_si512(), prev));
}

/// fold_raw over segments copied on the way: each 256-byte block is loaded once, stored to
/// dst and folded from the same registers (seg a multiple of 256, count >= 1). Stores are
/// kept 64-byte aligned where the destination allows (a destination 16 bytes off a cache
/// line, as malloc returns, otherwise splits every store: 25 % slower measured). NT: the
/// whole lines' stores non-temporal (the masked ends and unaligned destinations stay plain).
template <bool NT>
SHARDFLOW_FOLD_TARGET std::uint32_t fold_copy(unsigned char* dst, std::size_t dst_stride, const unsigned char* src,
                                              std::size_t src_stride, std::size_t seg, std::size_t count,
                                              std::uint32_t c) {
  const FoldConstants& kc = fold_constants();
  const __m512i k2048 = _mm512_load_si512(kc.k2048);
  __m512i x0 = _mm512_setzero_si512(), x1 = x0, x2 = x0, x3 = x0;
  bool seeded = false;
  for (std::size_t s = 0; s < count; ++s) {
    const unsigned char* p = src + s * src_stride;
    unsigned char* q = dst + s * dst_stride;
    const auto m = reinterpret_cast<std::uintptr_t>(q) & 63;
    // clang-format off
    switch (m % 8 != 0 ? -1 : static_cast<int>(m / 8)) {
      case 0: fold_copy_segment<0, NT>(p, q, seg, x0, x1, x2, x3, seeded, c, k2048); break;
      case 1: fold_copy_segment<1, NT>(p, q, seg, x0, x1, x2, x3, seeded, c, k2048); break;
      case 2: fold_copy_segment<2, NT>(p, q, seg, x0, x1, x2, x3, seeded, c, k2048); break;
      case 3: fold_copy_segment<3, NT>(p, q, seg, x0, x1, x2, x3, seeded, c, k2048); break;
      case 4: fold_copy_segment<4, NT>(p, q, seg, x0, x1, x2, x3, seeded, c, k2048); break;
      case 5: fold_copy_segment<5, NT>(p, q, seg, x0, x1, x2, x3, seeded, c, k2048); break;
      case 6: fold_copy_segment<6, NT>(p, q, seg, x0, x1, x2, x3, seeded, c, k2048); break;
      case 7: fold_copy_segment<7, NT>(p, q, seg, x0, x1, x2, x3, seeded, c, k2048); break;
      default: fold_copy_segment<-1, false>(p, q, seg, x0, x1, x2, x3, seeded, c, k2048); break;
    }
    // clang-format on
  }
  if constexpr (NT) _mm_sfence();  // the streamed lines are visible before the caller goes on
  return fold_finish(x0, x1, x2, x3);
}
#endif

}  // namespace

std::uint32_t crc32c_portable(const void* data, std::size_t n, std::uint32_t crc) {
  return ~portable_raw(static_cast<const unsigned char*>(data), n, ~crc);
}

std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc) {
#ifdef SHARDFLOW_CRC32C_X86
  if (n >= 512 && have_vpclmul()) {
    const auto* p = static_cast<const unsigned char*>(data);
    const std::size_t body = n / 256 * 256;
    return ~hw_1(p + body, n - body, fold_raw(p, body, body, 1, ~crc));
  }
  if (have_sse42()) return ~hw_raw(static_cast<const unsigned char*>(data), n, ~crc);
#endif
  return crc32c_portable(data, n, crc);
}

std::uint32_t crc32c_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::size_t len_b) {
  // CRC linearity: the pre/post inversions of A's and B's CRCs cancel out
  return gf2_mul(crc_a, x8n(len_b)) ^ crc_b;
}

std::uint32_t crc32c_strided(const void* base, std::size_t stride, std::size_t seg, std::size_t count,
                             std::uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(base);
#ifdef SHARDFLOW_CRC32C_X86
  if (seg % 256 == 0 && seg > 0 && count > 0 && have_vpclmul()) return ~fold_raw(p, stride, seg, count, ~crc);
#endif
  for (std::size_t i = 0; i < count; ++i) crc = crc32c(p + i * stride, seg, crc);
  return crc;
}

std::uint32_t crc32c_copy_strided(void* dst, std::size_t dst_stride, const void* src, std::size_t src_stride,
                                  std::size_t seg, std::size_t count, std::uint32_t crc, CopyStores stores) {
  auto* q = static_cast<unsigned char*>(dst);
  const auto* p = static_cast<const unsigned char*>(src);
#ifdef SHARDFLOW_CRC32C_X86
  if (seg % 256 == 0 && seg > 0 && count > 0 && have_vpclmul())
    return ~(stores == CopyStores::Streaming ? fold_copy<true>(q, dst_stride, p, src_stride, seg, count, ~crc)
                                             : fold_copy<false>(q, dst_stride, p, src_stride, seg, count, ~crc));
#else
  (void)stores;
#endif
  for (std::size_t i = 0; i < count; ++i) {
    std::memcpy(q + i * dst_stride, p + i * src_stride, seg);
    crc = crc32c(q + i * dst_stride, seg, crc);
  }
  return crc;
}

bool crc32c_strided_is_fast(std::size_t seg) {
#ifdef SHARDFLOW_CRC32C_X86
  return seg % 256 == 0 && seg > 0 && have_vpclmul();
#else
  (void)seg;
  return false;
#endif
}

const char* crc32c_implementation() {
#ifdef SHARDFLOW_CRC32C_X86
  if (have_vpclmul()) return "vpclmulqdq (AVX-512 carry-less multiply, 4 x 512-bit folds) + sse4.2";
  if (have_sse42()) return "sse4.2 crc32 (3 streams)";
#endif
  return "portable (slicing-by-8 tables)";
}

void crc32c_x3(const void* const p[3], std::size_t n, std::uint32_t crc[3]) {
#ifdef SHARDFLOW_CRC32C_X86
  if (have_sse42()) {
    const unsigned char* const q[3] = {static_cast<const unsigned char*>(p[0]), static_cast<const unsigned char*>(p[1]),
                                       static_cast<const unsigned char*>(p[2])};
    std::uint32_t c[3] = {~crc[0], ~crc[1], ~crc[2]};
    hw_x3(q, n, c);
    for (int k = 0; k < 3; ++k) crc[k] = ~c[k];
    return;
  }
#endif
  for (int k = 0; k < 3; ++k) crc[k] = crc32c_portable(p[k], n, crc[k]);
}

std::uint32_t file_crc32c_outside(const std::string& path, std::int64_t size, const std::vector<ByteRange>& skip) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw Error(::shardflow::detail::concat("cannot open '", path, "' to check it: ", std::strerror(errno)));
  try {
    const std::uint32_t crc = file_crc32c_outside(fd, path, size, skip);
    ::close(fd);
    return crc;
  } catch (...) {
    ::close(fd);
    throw;
  }
}

std::uint32_t file_crc32c_outside(int fd, const std::string& path, std::int64_t size,
                                  const std::vector<ByteRange>& skip) {
  // a buffer of what is to be read (the metadata: kilobytes), at most 1 MiB
  std::int64_t outside = size;
  for (const auto& r : skip) outside -= r.length;
  std::vector<unsigned char> buf(static_cast<std::size_t>(std::clamp<std::int64_t>(outside, 1, std::int64_t(1) << 20)));
  std::uint32_t crc = 0;
  std::int64_t pos = 0;
  size_t k = 0;
  std::string failure;
  while (pos < size && failure.empty()) {
    while (k < skip.size() && skip[k].offset + skip[k].length <= pos) ++k;
    if (k < skip.size() && skip[k].offset <= pos) {  // inside a skipped range
      pos = skip[k].offset + skip[k].length;
      continue;
    }
    std::int64_t end = k < skip.size() ? std::min(size, skip[k].offset) : size;
    end = std::min<std::int64_t>(end, pos + static_cast<std::int64_t>(buf.size()));
    const ssize_t r = ::pread(fd, buf.data(), static_cast<size_t>(end - pos), static_cast<off_t>(pos));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) failure = ::shardflow::detail::concat("read of '", path, "' at byte ", pos, " failed: ", std::strerror(errno));
    else if (r == 0) failure = ::shardflow::detail::concat("'", path, "' ends at byte ", pos, ", before ", size);
    else {
      crc = crc32c(buf.data(), static_cast<size_t>(r), crc);
      pos += r;
    }
  }
  if (!failure.empty()) throw Error(failure);
  return crc;
}

}  // namespace shardflow::ckpt
