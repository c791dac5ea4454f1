#pragma once
// Forward and backward kernels of the reference GPT (docs/model.md, MODEL.md), one class
// template per op, each with static forward/backward functions on Kokkos Views.
//
// Conventions (all ops):
//  * Activations are row-major matrices of T = b * S rows (row t = sequence * S + position)
//    for a micro-batch of any size b; the kernels keep no state. What a backward needs
//    from its forward is passed explicitly (the saved activations named in each op).
//  * Shards: every op works on the local piece the caller owns, stored contiguously.
//    - Linear: w may be any row slice of a weight (column-parallel: y gets the matching
//      output features) or any column slice (row-parallel: x is the matching input
//      features and y is a partial sum that the caller all-reduces).
//    - Attention: a contiguous range of heads; qkv holds [Q_local | K_local | V_local]
//      column blocks, which is what Linear produces from the head-aware shard of the
//      stacked qkv weight (rows of those heads in the Q, K and V blocks, in that order).
//    - SwiGlu: gu holds [gate_local | up_local], likewise from a gate_up shard.
//    - CrossEntropy: a vocabulary slice [v0, v0 + Vl) of the logits, as separable steps
//      with the caller's all-reduces between them.
//    - Embedding: a vocabulary slice [v0, v0 + Vl) of the table (rows outside give zero).
//  * `accumulate = true` adds into the output (gradient accumulation over micro-batches,
//    residual adds); false overwrites it.
//  * All reductions run in a fixed order: the same inputs give bitwise identical outputs.
//  * Shape mismatches throw shardflow::Error naming the op, the operand and the extents.
#include <cstdint>
#include <vector>

#include "core/dtype.hpp"
#include "nn/types.hpp"

namespace shardflow::nn {

/// y = x · wᵀ for x [T, in], w [out, in], y [T, out] (KokkosBlas::gemm).
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct Linear {
  using V = ViewTypes<Scalar, Exec>;
  /// y (+)= x · wᵀ
  static void forward(typename V::CMat x, typename V::CMat w, typename V::Mat y, bool accumulate = false);
  /// dx (+)= dy · w           (dy [T, out], w [out, in], dx [T, in])
  static void backward_input(typename V::CMat dy, typename V::CMat w, typename V::Mat dx, bool accumulate = false);
  /// dw (+)= dyᵀ · x          (dy [T, out], x [T, in], dw [out, in])
  static void backward_weight(typename V::CMat dy, typename V::CMat x, typename V::Mat dw, bool accumulate = false);
};

/// rmsnorm(x, g) = x / sqrt(mean(x², last axis) + eps) ⊙ g, over full rows of H.
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct RmsNorm {
  using V = ViewTypes<Scalar, Exec>;
  static constexpr double default_eps = 1e-5;
  /// y = rmsnorm(x, g); saves rstd[t] = 1 / sqrt(mean(x[t]²) + eps).
  static void forward(typename V::CMat x, typename V::CVec g, typename V::Mat y, typename V::Vec rstd,
                      double eps = default_eps);
  /// dx (+)= ∂/∂x, dg (+)= ∂/∂g (summed over rows in row order), given dy, x, g, rstd.
  static void backward(typename V::CMat dy, typename V::CMat x, typename V::CVec g, typename V::CVec rstd,
                       typename V::Mat dx, typename V::Vec dg, bool accumulate_dx = false,
                       bool accumulate_dg = false);
};

/// h = silu(g) ⊙ u for gu = [g | u] ([T, 2F] → [T, F]); silu(z) = z · sigmoid(z).
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct SwiGlu {
  using V = ViewTypes<Scalar, Exec>;
  static void forward(typename V::CMat gu, typename V::Mat h);
  /// dgu = ∂/∂gu given dh and the saved gu.
  static void backward(typename V::CMat dh, typename V::CMat gu, typename V::Mat dgu);
};

/// Elementwise helpers (residual stream).
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct Residual {
  using V = ViewTypes<Scalar, Exec>;
  /// x += y (the residual add after a row-parallel partial sum has been all-reduced).
  static void add(typename V::Mat x, typename V::CMat y);
  /// y = x
  static void copy(typename V::CMat x, typename V::Mat y);
};

/// Context parallelism, load-balanced for causal attention: a sequence of S positions is cut
/// into 2·cp chunks of C = S/(2·cp); context rank c holds chunks c and 2·cp − 1 − c, as its
/// local rows u in [0, S/cp) (chunk c first). The position of local row u; cp = 1: u.
KOKKOS_INLINE_FUNCTION int64_t context_position(int64_t u, int64_t seq_local, int cp, int c) {
  if (cp <= 1) return u;
  const int64_t C = seq_local / 2;
  return u < C ? c * C + u : (2 * cp - 1 - c) * C + (u - C);
}

/// Which key/value head each local query head uses (grouped-query attention, Llama): local
/// query head a (global a0 + a) uses global kv head (a0 + a) / group, the local kv head
/// (a0 + a) / group − k0 of the kv_heads local ones. The default (kv_heads = 0) is multi-head
/// attention: as many kv heads as query heads, head a with head a.
struct KvMap {
  int64_t kv_heads = 0, group = 1, a0 = 0, k0 = 0;
  bool is_mha(int64_t heads) const { return kv_heads == 0 || (kv_heads == heads && group == 1 && a0 == k0); }
  int64_t kv_of(int64_t a) const { return kv_heads == 0 ? a : (a0 + a) / group - k0; }
};

/// Dropout on the attention probabilities (Megatron-LM's attention_dropout; MODEL.md has
/// none, p = 0). Element (i, j) of query row i and key column j, of global sequence g and
/// global query head h, is kept iff word (i·S + j) mod 4 of Philox4x32-10 with counter
/// ((i·S + j) / 4, g·2³² + h) and the stream's key is >= round(p·2³²), and a kept element is
/// scaled by 1 / (1 − p). The mask depends on those global coordinates and the key only, so
/// every mesh, micro-batching and recomputation drops the same elements as one process does;
/// it is made again where it is needed, never stored.
struct AttnDropout {
  double p = 0;       // in [0, 1)
  uint64_t key = 0;   // the stream (attention_dropout_key: seed, step, layer)
  int64_t seq0 = 0;   // global index of the micro-batch's first sequence in the step's batch
  int64_t head0 = 0;  // global index of the first local query head
  bool active() const { return p > 0; }
  /// Keep iff the word is >= this.
  uint32_t threshold() const;
};
/// The key of layer `layer`'s attention dropout at training step `step` (1-based) of a run
/// seeded with `seed`.
uint64_t attention_dropout_key(uint64_t seed, int64_t step, int64_t layer);
/// Kept elements of one (sequence, head)'s causal triangle (rows i, columns j <= i), the mask
/// made row by row as the attention kernels make it (calibrate times it).
int64_t attention_dropout_kept(const AttnDropout& d, int64_t seq, int64_t head, int64_t S);
/// Elements whose mask words the kernels make for one causal triangle of S rows: each row's
/// columns [0, i] in whole batches of 16 Philox blocks (64 elements), so more than S(S+1)/2
/// (S = 128: 12,288 against 8,256; S = 2048: 1.03 times). What calibrate's and the
/// simulator's dropout_mask_ns counts.
int64_t attention_dropout_generated(int64_t S);
/// The mask of one (sequence, head) as 0 / 1 (row-major [S, S], every element, the causal
/// mask not applied), made as the kernels make it, whole rows (tests compare it with the
/// definition above, one Philox call per element).
std::vector<uint8_t> attention_dropout_mask(const AttnDropout& d, int64_t seq, int64_t head, int64_t S);

/// Causal self-attention on a contiguous range of query heads:
///   o[a] = softmax(q[a] · k[kv(a)]ᵀ / sqrt(D) + causal mask) · v[kv(a)].
/// qkv [T, (A_l + 2·K_l)·D] holds [Q | K | V]: the A_l local query heads, then the K_l local
/// key heads, then the K_l value heads (K_l = A_l, kv(a) = a for multi-head attention: qkv
/// [T, 3·A_l·D]); head a in columns [a·D, (a+1)·D) of its block. out [T, A_l·D] is
/// concat_heads(o). The score and context products run as one gemm per (sequence, head) on
/// row/column windows of qkv, out, dout and dqkv (LayoutRight views with a leading
/// dimension), so nothing is repacked.
/// Saved for the backward: qkv itself and probs [b·A_l, S, S] (zero above the diagonal), the
/// probabilities before dropout.
/// With `drop` active, the products with v use the dropped probabilities (AttnDropout),
/// made per (sequence, head) in `scratch` [S, S] (the backward's dprobs scratch will do).
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct Attention {
  using V = ViewTypes<Scalar, Exec>;
  /// Forward for b = T / S sequences, S = probs.extent(1); probs needs at least b·A_l
  /// entries in its first extent (a workspace sized for the largest micro-batch is fine).
  /// With round16 = BF16 or F16 (mixed precision) the probabilities are rounded to that
  /// type before they multiply v, as a 16-bit step stores them.
  static void forward(typename V::CMat qkv, int64_t heads, typename V::Ten3 probs, typename V::Mat out,
                      DType round16 = DType::F32, const KvMap& kv = KvMap{}, const AttnDropout& drop = AttnDropout{},
                      typename V::Mat scratch = typename V::Mat{});
  /// dqkv (+)= ∂/∂qkv given dout [T, A_l·D], the saved qkv and probs; dprobs [S, S] is
  /// scratch. With round16 = BF16 or F16 the score gradient is rounded to that type before
  /// its two products (every gemm operand of a mixed-precision step is 16-bit). A kv head
  /// shared by several query heads sums their contributions in increasing query head order;
  /// a local kv head no local query head uses gets zero (or keeps its value, accumulating).
  /// `drop` must be the forward's: the dropped probabilities are made again in dprobs.
  static void backward(typename V::CMat dout, typename V::CMat qkv, typename V::CTen3 probs, int64_t heads,
                       typename V::Mat dprobs, typename V::Mat dqkv, bool accumulate = false,
                       DType round16 = DType::F32, const KvMap& kv = KvMap{}, const AttnDropout& drop = AttnDropout{});
};

/// Ring attention (context parallelism): this context rank's query rows against one key/value
/// block at a time, the block of context rank k_rank (all ranks' blocks pass around the ring),
/// with an online softmax, as in Liu et al.'s ring attention and FlashAttention-2.
/// Operands, for b sequences of S_l = S/cp local rows each (T = b·S_l; context_position):
///   qkv  [T, ≥ A_l·D]: the local q|k|v activation; its query columns [0, A_l·D) are used;
///   kv   [T, 2·K_l·D]: a key/value block (K_l key heads, then K_l value heads) of the same
///        b sequences, at k_rank's positions;
///   m, l [b·A_l·S_l] running row maxima and sums, index (sequence·A_l + head)·S_l + row;
///   acc  [T, A_l·D] the unnormalised output;
///   scratch [≥ 2·C·C] with C = S_l / 2 (one chunk).
/// A (query chunk, key chunk) pair is whole (the key chunk comes first), causal on its
/// diagonal (the same chunk), or skipped (the key chunk comes later): the load balance makes
/// every rank's work the same.
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct RingAttention {
  using V = ViewTypes<Scalar, Exec>;
  /// m = −∞, l = 0, acc = 0.
  static void init(typename V::Vec m, typename V::Vec l, typename V::Mat acc);
  /// The online-softmax update of m, l and acc with the block of k_rank (seq_local = S_l).
  /// With round16 the exponentials that multiply v are rounded to that type (a 16-bit
  /// step's probabilities).
  static void forward_block(typename V::CMat qkv, int64_t heads, typename V::CMat kv, const KvMap& map,
                            int64_t seq_local, int cp, int q_rank, int k_rank, typename V::Vec m, typename V::Vec l,
                            typename V::Mat acc, typename V::Vec scratch, DType round16 = DType::F32);
  /// acc /= l (the output, in place) and lse = m + log l (kept for the backward).
  static void finish(typename V::CVec m, typename V::CVec l, int64_t heads, int64_t seq_local, typename V::Mat acc,
                     typename V::Vec lse);
  /// dvec = Σ over each head's columns of dout ⊙ out (FlashAttention-2's D), indexed as m.
  static void backward_prep(typename V::CMat dout, typename V::CMat out, int64_t heads, int64_t seq_local,
                            typename V::Vec dvec);
  /// k_rank's block's share of the gradients: dqkv's query columns += its dQ, dkv += its
  /// dK | dV (both start at zero before the first block). P is recomputed from lse; with
  /// round16, P and the score gradient are rounded before their products.
  static void backward_block(typename V::CMat dout, typename V::CMat qkv, int64_t heads, typename V::CMat kv,
                             const KvMap& map, int64_t seq_local, int cp, int q_rank, int k_rank,
                             typename V::CVec lse, typename V::CVec dvec, typename V::Mat dqkv, typename V::Mat dkv,
                             typename V::Vec scratch, DType round16 = DType::F32);
};

/// Rotary position embeddings (Llama; the rotate-half pairing): on each of the first
/// `rot_heads` D-column blocks of x [T, ≥ rot_heads·D] (the query and key heads of a q|k|v
/// activation), for row t at position p = context_position(t mod S, S, cp, cc) (S: the
/// positions of a sequence this rank holds; p = t mod S without context parallelism) and
/// i in [0, D/2):
///   (x_i, x_{i+D/2}) ← (x_i·cos φ − x_{i+D/2}·sin φ, x_{i+D/2}·cos φ + x_i·sin φ),
///   φ = p · θ^(−2i/D).
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct Rope {
  using V = ViewTypes<Scalar, Exec>;
  /// table [P, D]: cos φ(p, i) in columns [0, D/2), sin φ(p, i) in [D/2, D), for positions
  /// p in [0, P) (computed in double, then rounded: the same on every rank).
  static void table(double theta, typename V::Mat table);
  /// x rotated in place; rows t and t + S share positions; table covers every position.
  static void forward(typename V::Mat x, int64_t rot_heads, int64_t S, typename V::CMat table, int cp = 1, int cc = 0);
  /// The backward (the inverse rotation, in place) of forward on dx.
  static void backward(typename V::Mat dx, int64_t rot_heads, int64_t S, typename V::CMat table, int cp = 1,
                       int cc = 0);
};

/// Cross-entropy of logits [T, V] against targets [T], as separable steps so that the
/// vocabulary can be sharded. With logits holding the slice [v0, v0 + Vl):
///   1. local_max                → caller all-reduces row_max with MAX
///   2. local_sumexp_target      → caller all-reduces stats [T, 2] with SUM
///   3. loss_and_grad            → every shard gets the same per-row losses and the
///                                 gradient of its own logit slice.
/// The plain (unsharded) loss is the same steps with v0 = 0 and no communication.
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct CrossEntropy {
  using V = ViewTypes<Scalar, Exec>;
  /// row_max[t] = max_v logits[t, v] over the local slice.
  static void local_max(typename V::CMat logits, typename V::Vec row_max);
  /// stats[t, 0] = Σ_v exp(logits[t, v] − row_max[t]) over the local slice;
  /// stats[t, 1] = logits[t, targets[t] − v0] if the target is in the slice, else 0.
  static void local_sumexp_target(typename V::CMat logits, typename V::CVec row_max, typename V::CTokens targets,
                                  int64_t v0, typename V::Mat stats);
  /// Returns Σ_t loss_t with loss_t = log(stats[t,0]) + row_max[t] − stats[t,1] (summed in
  /// double, row order), and writes dlogits = grad_scale · (softmax − onehot(target)) for
  /// the local slice. dlogits may be the same memory as logits.
  static double loss_and_grad(typename V::CMat logits, typename V::CVec row_max, typename V::CMat stats,
                              typename V::CTokens targets, int64_t v0, double grad_scale, typename V::Mat dlogits);
  /// Σ_t loss_t only (no gradient).
  static double loss(typename V::CVec row_max, typename V::CMat stats);
  /// The unsharded loss: the three steps with v0 = 0. row_max [T] and stats [T, 2] are
  /// scratch. Returns Σ_t loss_t; skips the gradient when dlogits has no rows.
  static double forward_backward(typename V::CMat logits, typename V::CTokens targets, double grad_scale,
                                 typename V::Mat dlogits, typename V::Vec row_max, typename V::Mat stats);
};

/// Token embedding: x[t, :] (+)= table[tokens[t] − v0, :] for a vocabulary slice
/// [v0, v0 + Vl) of the table (rows whose token lies outside the slice get zero).
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct Embedding {
  using V = ViewTypes<Scalar, Exec>;
  /// Scratch of the deterministic scatter-add: per-row counts and offsets [Vl + 1], a
  /// cursor [Vl] and the positions grouped by row [T].
  struct Scratch {
    Kokkos::View<int64_t*, typename V::memory_space> offsets, cursor, order;
    Scratch() = default;
    Scratch(int64_t vocab_rows, int64_t max_rows);
  };
  static void forward(typename V::CTokens tokens, typename V::CMat table, int64_t v0, typename V::Mat x,
                      bool accumulate = false);
  /// dtable[v, :] (+)= Σ_{t : tokens[t] = v0 + v} dx[t, :], summed in increasing t for
  /// every v (no atomics on floating point; bitwise reproducible).
  static void backward(typename V::CTokens tokens, typename V::CMat dx, int64_t v0, typename V::Mat dtable,
                       Scratch& scratch, bool accumulate = false);
};

/// Learned absolute positions: x[t, :] += pos[t mod S, :] with S = pos.extent(0); under
/// context parallelism (context rank cc of cp) x holds S/cp positions of each sequence and
/// row t gets pos[context_position(t mod S/cp, S/cp, cp, cc)].
template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct PositionEmbedding {
  using V = ViewTypes<Scalar, Exec>;
  static void forward(typename V::CMat pos, typename V::Mat x, int cp = 1, int cc = 0);
  /// dpos[p, :] (+)= Σ_b dx[b·S/cp + u, :] for the local positions p of rows u, summed in
  /// increasing b; the other positions get zero (keep their value, accumulating).
  static void backward(typename V::CMat dx, typename V::Mat dpos, bool accumulate = false, int cp = 1, int cc = 0);
};

#define SHARDFLOW_NN_EXTERN(Op)                 \
  extern template struct Op<float>;             \
  extern template struct Op<double>;
SHARDFLOW_NN_EXTERN(Linear)
SHARDFLOW_NN_EXTERN(RmsNorm)
SHARDFLOW_NN_EXTERN(SwiGlu)
SHARDFLOW_NN_EXTERN(Residual)
SHARDFLOW_NN_EXTERN(Attention)
SHARDFLOW_NN_EXTERN(Rope)
SHARDFLOW_NN_EXTERN(RingAttention)
SHARDFLOW_NN_EXTERN(CrossEntropy)
SHARDFLOW_NN_EXTERN(Embedding)
SHARDFLOW_NN_EXTERN(PositionEmbedding)
#undef SHARDFLOW_NN_EXTERN

}  // namespace shardflow::nn
