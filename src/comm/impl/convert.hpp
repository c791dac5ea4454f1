#pragma once
// Private: element conversions between the wire dtypes and the f32 accumulators of the
// 16-bit reductions (round to nearest even, once), and the cast loops over host buffers.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/dtype.hpp"
#include "core/half.hpp"

namespace shardflow::comm::detail {

/// dst[i] = float(src[i]) for a bf16 or f16 source.
inline void widen_to_f32(const void* src, DType t, float* dst, std::size_t n) {
  if (t == DType::BF16) {
    const auto* s = static_cast<const bf16*>(src);
    for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
  } else {
    const auto* s = static_cast<const f16*>(src);
    for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
  }
}

/// dst[i] = round(src[i] / divisor) into bf16 or f16 (divisor 1 for sums and maxima).
inline void narrow_from_f32(const float* src, float divisor, DType t, void* dst, std::size_t n) {
  if (t == DType::BF16) {
    auto* d = static_cast<bf16*>(dst);
    if (divisor == 1.0f)
      for (std::size_t i = 0; i < n; ++i) d[i] = bf16(src[i]);
    else
      for (std::size_t i = 0; i < n; ++i) d[i] = bf16(src[i] / divisor);
  } else {
    auto* d = static_cast<f16*>(dst);
    if (divisor == 1.0f)
      for (std::size_t i = 0; i < n; ++i) d[i] = f16(src[i]);
    else
      for (std::size_t i = 0; i < n; ++i) d[i] = f16(src[i] / divisor);
  }
}

/// buf[i] /= divisor for f32 or f64 buffers (the Mean of the wide dtypes).
inline void divide_in_place(void* buf, DType t, std::size_t n, int divisor) {
  if (t == DType::F32) {
    auto* b = static_cast<float*>(buf);
    const float d = static_cast<float>(divisor);
    for (std::size_t i = 0; i < n; ++i) b[i] /= d;
  } else if (t == DType::F64) {
    auto* b = static_cast<double*>(buf);
    const double d = static_cast<double>(divisor);
    for (std::size_t i = 0; i < n; ++i) b[i] /= d;
  }
}

}  // namespace shardflow::comm::detail
