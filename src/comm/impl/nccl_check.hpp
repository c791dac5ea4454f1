#pragma once
// Private: CHECK_CUDA / CHECK_NCCL, the one place every CUDA and NCCL return code is
// checked (only included by the CUDA/NCCL translation units).
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "core/error.hpp"

#define CHECK_CUDA(call)                                                                                               \
  do {                                                                                                                 \
    cudaError_t shardflow_cuda_rc_ = (call);                                                                           \
    if (shardflow_cuda_rc_ != cudaSuccess)                                                                             \
      ::shardflow::detail::throw_library_error(                                                                        \
          "CUDA", #call,                                                                                               \
          std::string(cudaGetErrorName(shardflow_cuda_rc_)) + ": " + cudaGetErrorString(shardflow_cuda_rc_), __FILE__, \
          __LINE__);                                                                                                   \
  } while (0)

#define CHECK_NCCL(call)                                                                                        \
  do {                                                                                                          \
    ncclResult_t shardflow_nccl_rc_ = (call);                                                                   \
    if (shardflow_nccl_rc_ != ncclSuccess)                                                                      \
      ::shardflow::detail::throw_library_error("NCCL", #call, ncclGetErrorString(shardflow_nccl_rc_), __FILE__, \
                                               __LINE__);                                                       \
  } while (0)
