// Device casts for the Nccl backend: widen 16-bit to f32 before a reduction, round the
// f32 result once (after the Mean's division), divide f32/f64 results for Mean.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "comm/impl/cuda_kernels.hpp"
#include "comm/impl/nccl_check.hpp"

namespace shardflow::comm::detail {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(std::size_t n) {
  const std::size_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 ? (b == 0 ? 1 : b) : 65535);
}

template <class H>
__device__ float widen(H h);
template <>
__device__ float widen<__nv_bfloat16>(__nv_bfloat16 h) {
  return __bfloat162float(h);
}
template <>
__device__ float widen<__half>(__half h) {
  return __half2float(h);
}
template <class H>
__device__ H narrow(float f);
template <>
__device__ __nv_bfloat16 narrow<__nv_bfloat16>(float f) {
  return __float2bfloat16_rn(f);
}
template <>
__device__ __half narrow<__half>(float f) {
  return __float2half_rn(f);
}

template <class H>
__global__ void widen_kernel(const H* src, float* dst, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(blockDim.x) * gridDim.x)
    dst[i] = widen<H>(src[i]);
}

template <class H>
__global__ void narrow_kernel(const float* src, float divisor, H* dst, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(blockDim.x) * gridDim.x)
    dst[i] = narrow<H>(divisor == 1.0f ? src[i] : src[i] / divisor);
}

template <class T>
__global__ void divide_kernel(T* buf, T divisor, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(blockDim.x) * gridDim.x)
    buf[i] /= divisor;
}

}  // namespace

void cuda_widen_to_f32(const void* src, DType t, float* dst, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (t == DType::BF16)
    widen_kernel<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(src), dst, n);
  else
    widen_kernel<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const __half*>(src), dst, n);
  CHECK_CUDA(cudaGetLastError());
}

void cuda_narrow_from_f32(const float* src, float divisor, DType t, void* dst, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (t == DType::BF16)
    narrow_kernel<<<blocks_for(n), kThreads, 0, stream>>>(src, divisor, static_cast<__nv_bfloat16*>(dst), n);
  else
    narrow_kernel<<<blocks_for(n), kThreads, 0, stream>>>(src, divisor, static_cast<__half*>(dst), n);
  CHECK_CUDA(cudaGetLastError());
}

void cuda_divide(void* buf, DType t, std::size_t n, int divisor, cudaStream_t stream) {
  if (n == 0) return;
  if (t == DType::F32)
    divide_kernel<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<float*>(buf), static_cast<float>(divisor), n);
  else if (t == DType::F64)
    divide_kernel<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<double*>(buf), static_cast<double>(divisor), n);
  CHECK_CUDA(cudaGetLastError());
}

}  // namespace shardflow::comm::detail
