#pragma once
// View aliases shared by the model-math kernels (src/nn, src/optim).
//
// Every kernel is a static member of a class template <Scalar, ExecSpace> so that callers
// can pass managed Views (which convert implicitly to the unmanaged parameter types) and
// so that the library instantiates float and double once (src/nn/impl/*.cpp). Matrices
// are LayoutRight (row-major) and contiguous: a tensor shard is its own contiguous block,
// never a strided window into a bigger tensor. Activations of a micro-batch of b sequences
// of length S are matrices of T = b * S rows (row t = b_index * S + position).
#include <Kokkos_Core.hpp>
#include <cstdint>

namespace shardflow::nn {

template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct ViewTypes {
  using exec_space = Exec;
  using memory_space = typename Exec::memory_space;
  using Unmanaged = Kokkos::MemoryTraits<Kokkos::Unmanaged>;
  /// Row-major matrix [rows, cols].
  using Mat = Kokkos::View<Scalar**, Kokkos::LayoutRight, memory_space, Unmanaged>;
  using CMat = Kokkos::View<const Scalar**, Kokkos::LayoutRight, memory_space, Unmanaged>;
  /// Rank-3 row-major tensor (e.g. [b * heads, S, D] packed attention operands).
  using Ten3 = Kokkos::View<Scalar***, Kokkos::LayoutRight, memory_space, Unmanaged>;
  using CTen3 = Kokkos::View<const Scalar***, Kokkos::LayoutRight, memory_space, Unmanaged>;
  using Vec = Kokkos::View<Scalar*, memory_space, Unmanaged>;
  using CVec = Kokkos::View<const Scalar*, memory_space, Unmanaged>;
  /// Token ids (bytes widened to int32), one per row of an activation matrix.
  using Tokens = Kokkos::View<int32_t*, memory_space, Unmanaged>;
  using CTokens = Kokkos::View<const int32_t*, memory_space, Unmanaged>;
  /// Owning buffers, for workspaces and parameter storage.
  using OwnedMat = Kokkos::View<Scalar**, Kokkos::LayoutRight, memory_space>;
  using OwnedTen3 = Kokkos::View<Scalar***, Kokkos::LayoutRight, memory_space>;
  using OwnedVec = Kokkos::View<Scalar*, memory_space>;
  using OwnedTokens = Kokkos::View<int32_t*, memory_space>;
};

}  // namespace shardflow::nn
