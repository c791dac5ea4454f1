#pragma once
// Vocabulary of the communication layer: backend tags, reduction operators, the kinds of
// collective.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/dtype.hpp"
#include "core/half.hpp"  // bf16, f16, dtype_of<T>()

namespace shardflow::comm {

/// Which library moves the bytes: Mpi (host memory, MPICH) or Nccl (device memory).
enum class Backend : std::uint8_t { Mpi, Nccl };

/// Reductions. Mean is the sum divided by the group size; the division happens once, after
/// the whole sum, in the accumulation type (f32 for bf16/f16, the dtype itself for f32/f64),
/// before any rounding to a 16-bit dtype. Mean is not defined for integer dtypes.
enum class ReduceOp : std::uint8_t { Sum, Mean, Max };

enum class CollectiveKind : std::uint8_t {
  AllGather,
  ReduceScatter,
  AllReduce,
  Broadcast,
  Send,
  Recv,
  AllToAll,
  AllToAllv
};

std::string backend_name(Backend b);
/// "mpi" or "nccl"; throws InputError naming the value otherwise.
Backend parse_backend(const std::string& name);
std::string reduce_op_name(ReduceOp op);
std::string collective_name(CollectiveKind k);
/// True when this build has the NCCL backend (SHARDFLOW_HAVE_NCCL).
bool nccl_built();

/// True for bf16 and f16, whose reductions accumulate in f32.
inline bool is_16bit(DType t) { return t == DType::BF16 || t == DType::F16; }

}  // namespace shardflow::comm
