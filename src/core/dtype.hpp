#pragma once
// Element types that shardflow stores and moves.
#include <cstddef>
#include <cstdint>
#include <string>

namespace shardflow {

enum class DType : std::uint8_t { F32, F64, BF16, F16, I32, I64 };

/// Bytes per element.
std::size_t dtype_size(DType t);
/// "f32", "f64", "bf16", "f16", "i32", "i64".
std::string dtype_name(DType t);
/// Parses a dtype name; throws InputError naming the value otherwise.
DType parse_dtype(const std::string& name);
/// True for f32, f64, bf16, f16.
bool is_floating(DType t);

}  // namespace shardflow
