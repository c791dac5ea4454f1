#pragma once
// StepProgram: one rank's training step as data. The step compiler (compile/compiler.hpp)
// emits it from the StepShape without MPI or memory; the trainer binds it (allocates the
// buffers of its BufferPlan, turns each TaskSpec into a graph task with a kernel call or a
// non-blocking collective on a live communicator) and runs it; `shardflow compile` counts it.
//
// Nomenclature
//   buffer        a named 1-D array of the step (a parameter, a gradient, an activation of one
//                 act slot, a ring buffer, a pipeline receive buffer, ...) with its element count,
//                 dtype and class (what `train --summary` counts it as). Buffers are numbered;
//                 several roles may name one buffer (aliases: one expert rank's dispatch).
//   BufRef        a buffer and an element offset into it.
//   ComputeOp     one kernel call of the block program (StepOp) with its operands' indices:
//                 layer, micro-batch, act slot, gather-ring and grad-ring buffer.
//   TaskSpec      a compute task (ComputeOps run in order) or a communication task (CommOp).
//   edge          (a, b): task a runs before task b, in the order the compiler added them.
// Tasks are numbered in emission order; the collectives of one communicator are issued in
// that order on every rank (graph/task_graph.hpp), which is what makes the step deadlock-free.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "comm/types.hpp"
#include "compile/step_shape.hpp"
#include "core/dtype.hpp"
#include "graph/task_graph.hpp"
#include "parallel/axis_groups.hpp"

namespace shardflow::compile {

// ---- buffers ---------------------------------------------------------------------------------

enum class BufferClass : uint8_t { Params, Grads, Optimizer, Transient, Activations, Inputs, Scalars };
const char* buffer_class_name(BufferClass c);

struct BufferSpec {
  std::string name;
  int64_t numel = 0;
  DType dtype = DType::F32;
  BufferClass cls = BufferClass::Activations;
  int64_t bytes() const;
};

struct BufRef {
  int buf = -1;
  int64_t off = 0;
  bool valid() const { return buf >= 0; }
};

/// A parameter's buffers (-1: not held): the parameter (its tensor box, or its ZeRO-3
/// shard), its gradient (its ZeRO-2/3 shard), and the AdamW moments (their ZeRO shard).
struct ParamBuffers {
  int param = -1, grad = -1, adam_m = -1, adam_v = -1;
};
/// What a layer's forward keeps for its backward, per act slot.
struct ActBuffers {
  int x_in = -1, n1 = -1, rstd1 = -1, qkv = -1, probs = -1, att = -1, x_mid = -1, n2 = -1, rstd2 = -1, gu = -1,
      h = -1;
  int lse = -1;  // context parallel: the attention rows' log-sum-exp (instead of probs)
  /// Sequence parallel: the norms' rows [Tr, H] this rank made, kept for the backward; n1 and
  /// n2 are then one all-gathered copy that every layer shares (gathered again before the
  /// backward reads it, as Megatron-LM does)
  int n1_rows = -1, n2_rows = -1;
};
/// An MoE layer's routing and dispatch state per act slot. x_recv aliases x_send and
/// y_send aliases y_recv when the expert axis has one rank.
struct MoeBuffers {
  int logits = -1, gate = -1, choice_row = -1, x_send = -1, x_recv = -1, y_recv = -1, y_send = -1, gu = -1, h = -1;
};

struct BufferPlan {
  std::vector<BufferSpec> specs;
  std::vector<ParamBuffers> params;           // StepShape::params order
  std::vector<int> gather_ring, grad_ring;    // ZeRO-3 gathers; ZeRO-2/3 gradients
  /// ZeRO-1: the gradient shard of one parameter whose shard is not contiguous (dims
  /// before the ZeRO dim), packed for the norm; one buffer for all of them, in turn.
  int grad_pack = -1;
  std::vector<std::vector<ActBuffers>> acts;  // [local layer][act slot] (-1s for another chunk's slots)
  std::vector<std::vector<MoeBuffers>> moes;  // [local layer][act slot]; empty for a dense layer
  int moe_dgate = -1, moe_dh = -1, moe_dgu = -1, moe_dlogits = -1;
  std::vector<int> x, dx, x_recv, dx_recv;  // per act slot: residual stream, its gradient, pipeline receive rings
  /// strategy.activation_comm_dtype of 16 bits: the receive rings hold that dtype, and x / dx
  /// are narrowed into these send rings before they go (per act slot; empty for an f32 wire)
  std::vector<int> x_send, dx_send;
  int y_rows = -1, dn_rows = -1, dx_full = -1;  // sequence parallel
  int y = -1, dn = -1, dh = -1, dgu = -1, datt = -1, dqkv = -1, dprobs = -1;
  ActBuffers work;          // mixed precision: f32 work set of the 16-bit kept activations (qkv .. h)
  int rope = -1;             // llama: the RoPE table [S, D] (cos of the D/2 frequencies, then sin)
  /// Context parallel (ring attention): key/value blocks in flight [T, 2·K_l·D] (two, the one
  /// computed on and the one arriving), their gradients likewise and this rank's own when it
  /// comes home; the online softmax's row maxima and sums, the backward's D, the chunk scratch.
  int kv_ring[2] = {-1, -1}, dkv_ring[2] = {-1, -1}, dkv_home = -1;
  int ring_m = -1, ring_l = -1, ring_dvec = -1, ring_scratch = -1;
  int w16 = -1;              // mixed precision: a weight rounded to 16 bits (not one in the gather ring)
  int nf = -1, rstdf = -1, logits = -1, row_max = -1, stats = -1;  // the head (last stage)
  std::vector<int> inputs, targets;                                 // per micro-batch (i32 tokens)
  int loss_local = -1, loss_global = -1;  // f64[3]: cross-entropy, aux loss, dropped choices
  int norm_local = -1, norm_total = -1;   // f64[1]: squared gradient norm

  int add(std::string name, int64_t numel, DType dtype, BufferClass cls);
  const BufferSpec& spec(int id) const { return specs.at(static_cast<size_t>(id)); }
};

/// The buffers rank shape.rank's step uses.
BufferPlan plan_buffers(const StepShape& shape);

// ---- tasks -----------------------------------------------------------------------------------

/// The kernel calls of the block program (MODEL.md), in the order a step uses them.
enum class StepOp : uint8_t {
  Begin,          // zero the step's loss sums
  Copy,           // dst[0, n) = src[0, n) (a pipeline receive buffer into the act slot)
  Embed,          // token embedding (vocabulary slice) of micro-batch mb (+ positions on tensor rank 0 under sp)
  PosEmbed,       // x += positions
  AttnNorm,       // x_in = x; n1 rows = rmsnorm(x_in)
  Attn,           // qkv, attention, y = attn.out partial sums (context parallel: qkv, own kv block, ring init)
  AttnRing,       // context parallel: the online-softmax update with ring block `step`
  AttnOut,        // context parallel: normalise, lse, y = attn.out partial sums
  MlpNorm,        // x_mid = x_in + y; n2 rows = rmsnorm(x_mid)
  Mlp,            // gate_up, SwiGLU, y = mlp.down partial sums
  Residual,       // x = x_mid + y
  MoeRoute,       // router logits, routing, dispatch rows
  MoePlan,        // received row counts
  MoeExperts,     // every local expert's FFN on its rows
  MoeCombine,     // y = gated combine
  FinalNorm,      // nf rows = rmsnorm(x)
  Logits,         // logits = nf · lm_headᵀ, row maxima
  SumExp,         // Σ exp, target logit
  Loss,           // cross-entropy and its gradient; dn = lm_head backward
  LossValue,      // cross-entropy only (StepMode::Evaluate)
  FinalNormBwd,   // dx = final norm backward
  MoeCombineBwd,  // gate gradients, dy of the experts
  MoeExpertsBwd,  // the experts' backward (dX in place of dy)
  MoeRouterBwd,   // dn = dispatch backward + router backward
  MlpBwd,         // dn = mlp backward
  MlpNormBwd,     // dx += mlp norm backward
  AttnCore,       // probs (and att, the same values) again from the kept qkv (selective recomputation)
  AttnBwd,        // dn = attention backward (context parallel: datt, D, own kv block, zero dq and dkv)
  AttnRingBwd,    // context parallel: ring block `step`'s dQ, dK, dV
  AttnQkvBwd,     // context parallel: dkv home into dqkv; dn = the qkv projections' backward
  AttnNormBwd,    // dx += attention norm backward
  EmbedBwd,       // embedding and position gradients
  GradNormLocal,  // this rank's share of the squared gradient norm
  AdamW,          // the optimizer step (clipped with the global norm)
};
const char* step_op_name(StepOp op);

struct ComputeOp {
  explicit ComputeOp(StepOp o = StepOp::Begin) : op(o) {}
  StepOp op;
  int layer = -1;     // global layer
  int mb = -1;        // micro-batch
  int act_slot = -1;  // act slot of (chunk, micro-batch)
  int ring = 0;       // which gather-ring buffer holds the parameters (ZeRO-3)
  int grad_ring = 0;  // which grad-ring buffer receives the gradients (ZeRO-3)
  bool acc = false;   // accumulate gradients (micro-batch > 0)
  bool recompute = false;  // AttnNorm: re-run from the kept layer input (x_in), not from x
  int step = -1;      // AttnRing / AttnRingBwd: the ring step (block of context rank cc − step)
  BufRef src, dst;    // Copy
  int64_t n = 0;      // Copy
  DType cast = DType::F32;  // Copy: the dtype of its 16-bit side (a pipeline wire ring), f32 for a plain copy
};

struct CommOp {
  comm::CollectiveKind kind = comm::CollectiveKind::AllReduce;
  parallel::Axes axes;         // the communicator: a group of mesh axes (declared order)
  graph::CollectiveDesc desc;  // key, kind, tensor, count, dtype, peer (what verify and traces see)
  comm::ReduceOp op = comm::ReduceOp::Sum;
  DType dtype = DType::F32;  // on the wire
  BufRef src, dst;           // all_reduce: in place unless dst differs; gather: shard -> full; scatter: full -> shard
  int64_t count = 0;         // all_reduce, send, recv: elements
  int64_t outer = 1, rows = 0, inner = 0;  // all_gather / reduce_scatter as [outer, rows, inner] split on rows
  bool accumulate = false;                 // reduce_scatter adds into its shard
  int peer = -1;                           // send / recv: the peer's coordinate on the axis
  int moe_layer = -1, moe_slot = -1;       // all_to_all(v): whose dispatch counts
  bool moe_out = false;                    // all_to_allv: to the experts (true) or back
  int64_t staging_bytes = 0;               // pack/cast buffers the operation needs
  int staging_slot = -1;                   // StepProgram::staging_slots entry they live in (-1: none)
  /// Bytes of the tensor the collective moves (desc.count elements of the wire dtype).
  int64_t tensor_bytes() const;
};

struct TaskSpec {
  std::string name;
  /// The schedule group (index into StepShape::order) whose emission made the task: -1 before
  /// the first group (the step's start, ZeRO-3's first gathers), order.size() after the last
  /// (loss, gradient norm, update). The simulator's block replay costs a stage group by group.
  int group = -1;
  bool is_comm = false;
  std::vector<ComputeOp> ops;  // compute task: run in order
  CommOp comm;                 // communication task
};

struct StepProgram {
  StepShape shape;
  BufferPlan buffers;
  std::vector<TaskSpec> tasks;
  std::vector<std::pair<int, int>> edges;  // (before, after), in emission order (duplicates possible)
  /// Staging of the shard collectives, pooled: the staged all-gathers of one communicator
  /// share one buffer, as do its staged reduce-scatters; each waits for the previous one of
  /// its pool to complete (an edge), so one at a time uses it. Bytes of each pool.
  std::vector<int64_t> staging_slots;
  int64_t staging_total() const;  // Σ staging_slots
};

/// Bytes of the step's buffers of class c (each buffer once, aliases once), and for
/// Transient also the staging its shard collectives allocate. In double: a deck far too big
/// for any machine can pass int64 here, and the trainer must still refuse it with numbers.
double step_bytes(const StepProgram& prog, BufferClass c);

}  // namespace shardflow::compile
