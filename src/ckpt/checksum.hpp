#pragma once
// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final xor
// 0xFFFFFFFF): the checksum of checkpoint blocks. The same function as iSCSI/ext4/
// Python's `crc32c` package, so a checkpoint can be checked without shardflow.
// Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise.
#include <cstddef>
#include <cstdint>

namespace shardflow::ckpt {

/// CRC-32C of `n` bytes. Chain calls by passing the previous result as `crc`
/// (crc32c(b, nb, crc32c(a, na)) == crc32c of a followed by b).
std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0);

/// The table-driven implementation (for tests: must equal crc32c on every input).
std::uint32_t crc32c_portable(const void* data, std::size_t n, std::uint32_t crc = 0);

}  // namespace shardflow::ckpt
