#include "core/dtype.hpp"

#include "core/error.hpp"

namespace shardflow {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  throw Error("dtype_size: invalid DType value " + std::to_string(static_cast<int>(t)));
}

std::string dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
  }
  throw Error("dtype_name: invalid DType value " + std::to_string(static_cast<int>(t)));
}

DType parse_dtype(const std::string& name) {
  for (DType t : {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::I64})
    if (dtype_name(t) == name) return t;
  if (name == "float32") return DType::F32;
  if (name == "float64") return DType::F64;
  if (name == "bfloat16") return DType::BF16;
  if (name == "float16") return DType::F16;
  throw InputError("unknown dtype '" + name + "' (expected one of f32, f64, bf16, f16, i32, i64)");
}

bool is_floating(DType t) { return t == DType::F32 || t == DType::F64 || t == DType::BF16 || t == DType::F16; }

}  // namespace shardflow
