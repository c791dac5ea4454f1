#pragma once
// Private: device casts of the Nccl backend's 16-bit reductions (cuda_kernels.cu).
#include <cuda_runtime_api.h>

#include <cstddef>

#include "core/dtype.hpp"

namespace shardflow::comm::detail {
/// dst[i] = float(src[i]) for a bf16/f16 device buffer, enqueued on `stream`.
void cuda_widen_to_f32(const void* src, DType t, float* dst, std::size_t n, cudaStream_t stream);
/// dst[i] = round(src[i] / divisor) into bf16/f16, enqueued on `stream`.
void cuda_narrow_from_f32(const float* src, float divisor, DType t, void* dst, std::size_t n, cudaStream_t stream);
/// buf[i] /= divisor for an f32/f64 device buffer, enqueued on `stream`.
void cuda_divide(void* buf, DType t, std::size_t n, int divisor, cudaStream_t stream);
}  // namespace shardflow::comm::detail
