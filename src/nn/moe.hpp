#pragma once
// Mixture-of-experts pieces of the training step (docs/parallelism.md, "Mixture of
// experts"): the router decisions on the host (softmax, top-k, the per-sequence capacity
// rule, the sequence-wise load-balancing loss and their backward), and the row kernels of
// dispatch and combine on Kokkos Views.
//
// Routing of one token t with router logits z [E]:
//   p = softmax(z); the top_k experts by p (ties: lower index first), in that order;
//   gate_j = softmax over the chosen logits (p_j renormalised over the chosen experts).
// Capacity: each sequence may send at most C = ceil(capacity_factor · S · top_k / E) tokens
// to each expert. Choices are admitted in the order (choice rank j, position s): all first
// choices of the sequence by position, then all second choices, ...; a choice that finds
// its expert full is dropped (its term of the combine is zero; the gates are not
// renormalised). The rule depends on the sequence only, so any mesh drops the same choices.
// Load-balancing loss (sequence-wise, Switch-style): for every sequence
//   aux = aux_coef · E · Σ_e f_e · P_e,  f_e = (#choices of e in the sequence) / (S · top_k),
//   P_e = mean over the sequence's positions of p_e;
// f_e is a count (no gradient), P_e carries the gradient into the router.
#include <cstdint>
#include <vector>

#include "nn/types.hpp"

namespace shardflow::nn {

struct MoeConfig {
  int64_t experts = 0;  // E
  int64_t top_k = 1;
  int64_t seq = 1;  // S: capacity and the load-balancing loss are per sequence
  double capacity_factor = 1.25;
  double aux_coef = 0.01;
  /// C = ceil(capacity_factor · S · top_k / E).
  int64_t capacity() const;
};

/// The router's decisions for T tokens (T a multiple of S), host arrays, row-major.
struct MoeRouting {
  int64_t tokens = 0;
  std::vector<float> probs;     // [T, E]
  std::vector<int32_t> expert;  // [T, k] chosen experts, best first
  std::vector<float> gate;      // [T, k]
  std::vector<uint8_t> kept;    // [T, k] 1 when admitted within capacity
  std::vector<float> load;      // [T / S, E] f_e of each sequence
  int64_t dropped = 0;          // choices dropped by the capacity rule
  double aux = 0;               // Σ over the T / S sequences of their aux loss
};

/// Decisions from router logits [T, E] (host memory).
MoeRouting moe_route(const float* logits, int64_t tokens, const MoeConfig& c);

/// dlogits [T, E] (host, overwritten) of  Σ_a dgate[a] · gate[a] + aux_scale · Σ_seq aux,
/// given dgate [T, k] (zero for dropped choices).
void moe_route_backward(const MoeRouting& r, const float* dgate, double aux_scale, const MoeConfig& c, float* dlogits);

/// Row kernels. A choice a = t · k + j of token t is sent as row slot[a] of the dispatch
/// buffers (slot[a] < 0: dropped).
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct MoeRows {
  using V = ViewTypes<Scalar, Exec>;
  using Index = Kokkos::View<const int64_t*, typename V::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  /// dst[slot[a], :] = x[a / k, :] for every kept choice a.
  static void dispatch(typename V::CMat x, Index slot, int64_t k, typename V::Mat dst);
  /// out[t, :] (+)= Σ_j gate[t·k + j] · y[slot[t·k + j], :] over kept choices, j in order.
  static void combine(typename V::CMat y, Index slot, typename V::CVec gate, int64_t k, typename V::Mat out,
                      bool accumulate);
  /// dy[slot[a], :] = gate[a] · dout[a / k, :] for every kept choice a.
  static void combine_backward(typename V::CMat dout, Index slot, typename V::CVec gate, int64_t k, typename V::Mat dy);
  /// dgate[a] = dout[a / k, :] · y[slot[a], :]  (0 for dropped choices), summed in column order.
  static void gate_grad(typename V::CMat dout, typename V::CMat y, Index slot, int64_t k, typename V::Vec dgate);
  /// dx[t, :] (+)= Σ_j dxr[slot[t·k + j], :] over kept choices, j in order.
  static void dispatch_backward(typename V::CMat dxr, Index slot, int64_t k, typename V::Mat dx, bool accumulate);
};

extern template struct MoeRows<float>;
extern template struct MoeRows<double>;

}  // namespace shardflow::nn
