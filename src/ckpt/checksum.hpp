#pragma once
// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final xor
// 0xFFFFFFFF): the checksum of checkpoint blocks. The same function as iSCSI/ext4/
// Python's `crc32c` package, so a checkpoint can be checked without shardflow.
// Uses carry-less multiplication (AVX-512 VPCLMULQDQ) folding when the CPU has it, else the
// SSE4.2 crc32 instruction, else a table.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace shardflow::ckpt {

/// CRC-32C of `n` bytes. Chain calls by passing the previous result as `crc`
/// (crc32c(b, nb, crc32c(a, na)) == crc32c of a followed by b).
std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0);

/// The table-driven implementation (for tests: must equal crc32c on every input).
std::uint32_t crc32c_portable(const void* data, std::size_t n, std::uint32_t crc = 0);

/// CRC-32C of `count` segments of `seg` bytes, segment i at base + i * stride, as if they
/// were adjacent (a column tile of a row-major array): one pass, no gathering copy.
std::uint32_t crc32c_strided(const void* base, std::size_t stride, std::size_t seg, std::size_t count,
                             std::uint32_t crc = 0);
/// Whether crc32c_strided runs at full speed for segments of `seg` bytes (carry-less
/// multiply folding available and seg a multiple of 256); else it chains one CRC per segment.
bool crc32c_strided_is_fast(std::size_t seg);
/// Copies `count` segments of `seg` bytes, segment i from src + i * src_stride to
/// dst + i * dst_stride, and returns the CRC-32C of the copied bytes in order (chained from
/// `crc`): one pass, each byte loaded once, stored and folded from the same register, so the
/// checksum is of exactly the bytes that were stored. Full speed when crc32c_strided_is_fast
/// (seg); else a copy and a CRC per segment. The ranges must not overlap.
/// `stores`: Streaming writes the destination's whole cache lines with non-temporal stores
/// (the folding copy, a destination 8-byte aligned; a store fence before it returns), for a
/// destination nobody reads again soon: a restore's own tensors. Plain stores first read
/// every destination line into the cache, a third stream of memory traffic (session 21: the
/// in-place restore 0.76-0.84 of a raw read with them, 0.91-1.01 streaming).
enum class CopyStores { Cached, Streaming };
std::uint32_t crc32c_copy_strided(void* dst, std::size_t dst_stride, const void* src, std::size_t src_stride,
                                  std::size_t seg, std::size_t count, std::uint32_t crc = 0,
                                  CopyStores stores = CopyStores::Cached);
/// The implementation crc32c runs on this CPU, in words.
const char* crc32c_implementation();

/// Three independent CRC-32Cs of `n` bytes each, interleaved (as fast as one CRC of 3n
/// bytes): crc[k] = crc32c(p[k], n, crc[k]) for k = 0, 1, 2.
void crc32c_x3(const void* const p[3], std::size_t n, std::uint32_t crc[3]);

/// The CRC-32C of A followed by B from crc32c(A) and crc32c(B) (|B| = len_b bytes).
std::uint32_t crc32c_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::size_t len_b);

/// A byte range [offset, offset + length) of a file.
struct ByteRange {
  std::int64_t offset = 0, length = 0;
  bool operator==(const ByteRange& o) const { return offset == o.offset && length == o.length; }
};

/// CRC-32C of the first `size` bytes of file `path` with the ranges `skip` left out (the
/// bytes outside them, in file order), read with plain POSIX I/O. `skip` must be sorted,
/// non-overlapping and inside [0, size). Throws Error naming the file when it cannot be
/// opened or holds fewer than `size` bytes. This is the metadata checksum of a shard file
/// (skip = the raw data of its datasets).
std::uint32_t file_crc32c_outside(const std::string& path, std::int64_t size, const std::vector<ByteRange>& skip);
/// The same through an open descriptor `fd` of that file (`path` names it in errors).
std::uint32_t file_crc32c_outside(int fd, const std::string& path, std::int64_t size,
                                  const std::vector<ByteRange>& skip);

}  // namespace shardflow::ckpt
