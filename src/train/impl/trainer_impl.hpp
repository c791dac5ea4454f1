#pragma once
// The trainer's state: the compiled StepProgram (compile/compiler.hpp) bound to this rank's
// buffers and communicators, the block program's kernels (step_kernels.cpp), the data
// loader and the step statistics. Binding: trainer.cpp; kernels: step_kernels.cpp.
#include <Kokkos_Core.hpp>
#include <map>
#include <memory>
#include <unordered_map>

#include "compile/compiler.hpp"
#include "core/gemm.hpp"
#include "data/loader.hpp"
#include "model/model_description.hpp"
#include "nn/gpt.hpp"
#include "nn/kernels.hpp"
#include "nn/moe.hpp"
#include "optim/adamw.hpp"
#include "parallel/layout_plan.hpp"
#include "train/impl/shard_collectives.hpp"
#include "train/trainer.hpp"

namespace shardflow::train {

namespace kern {
using Exec = Kokkos::DefaultExecutionSpace;
using VT = nn::ViewTypes<float, Exec>;
using FVec = Kokkos::View<float*>;
using TVec = Kokkos::View<int32_t*>;
using LVec = Kokkos::View<int64_t*>;
using HVec = Kokkos::View<uint16_t*>;  // 16-bit storage (bf16 or f16 bits, train.precision)
inline VT::Mat mat(float* p, int64_t r, int64_t c) { return VT::Mat(p, static_cast<size_t>(r), static_cast<size_t>(c)); }
inline VT::CMat cmat(const float* p, int64_t r, int64_t c) {
  return VT::CMat(p, static_cast<size_t>(r), static_cast<size_t>(c));
}
inline VT::Vec vec(float* p, int64_t n) { return VT::Vec(p, static_cast<size_t>(n)); }
inline VT::CVec cvec(const float* p, int64_t n) { return VT::CVec(p, static_cast<size_t>(n)); }
}  // namespace kern

struct Trainer::Impl {
  using Exec = kern::Exec;
  using FVec = kern::FVec;
  using TVec = kern::TVec;

  // ---- configuration --------------------------------------------------------------
  Deck deck;
  const Mesh* mesh;
  comm::CommSet* comms;
  nn::GptConfig cfg;
  ModelDescription desc;
  std::unique_ptr<parallel::LayoutPlan> plan;  // the only layout decider
  compile::StepProgram prog;                   // this rank's step, as compiled
  optim::AdamWConfig opt;
  nn::MoeConfig moe;
  // the StepShape's numbers the kernels use (prog.shape)
  int zero = 0, tp = 1, tc = 0, ep = 1, ec = 0, shard_size = 1, shard_index = 0;
  bool sp = false, first_stage = true, last_stage = true;
  int64_t A_l = 0, H_l = 0, F_l = 0, V_l = 0, v0 = 0, E_l = 0, e0 = 0, Tr = 0, t0 = 0;
  bool llama = false;   // model.family = llama: q and kv projections, RoPE, no position table
  int64_t QKV_l = 0;    // columns of the local q|k|v activation, (A_l + 2·K_l)·D
  int64_t rot_heads = 0;  // llama: the query and key heads RoPE rotates, A_l + K_l
  nn::KvMap kvmap;      // which local kv head each local query head uses
  int64_t micro = 1, mb_seqs = 1, local_seqs = 1, tokens_mb = 1;
  data::Slice slice;
  std::unique_ptr<data::DataLoader> loader;

  // ---- buffers (prog.buffers, allocated) ------------------------------------------------
  std::vector<FVec> fbuf;                 // f32 buffers by id
  std::vector<TVec> ibuf;                 // i32
  std::vector<kern::LVec> lbuf;           // i64
  std::vector<kern::HVec> hbuf;           // bf16 / f16 (mixed precision's kept activations)
  float* F(int id) const { return fbuf[static_cast<size_t>(id)].data(); }
  float* F(const compile::BufRef& r) const { return F(r.buf) + r.off; }
  void* resolve(const compile::BufRef& r);  // any dtype

  // A parameter as this rank holds it (compile::ParamShape) and its buffers.
  struct Param : compile::ParamShape {
    FVec param, grad, m, v;
  };
  std::vector<Param> params;
  std::unordered_map<std::string, int> index;
  std::vector<std::vector<int>> units;  // unit -> param indices
  std::vector<FVec> gather_ring, grad_ring;     // ZeRO-3 gather ring, ZeRO-2/3 grad ring
  FVec grad_pack;                               // ZeRO-1: a non-contiguous gradient shard, packed for the norm

  struct Acts {
    FVec x_in, n1, rstd1, qkv, probs, att, x_mid, n2, rstd2, gu, h;
    FVec lse;  // context parallel: the attention rows' log-sum-exp
    FVec n1r, n2r;  // sequence parallel: the norms' kept rows (n1, n2: the shared gathered copies)
    // Mixed precision: the 16-bit copies kept for the backward (empty when the activation is
    // kept in f32); qkv .. h above are then the shared f32 work set (prog.buffers.work).
    kern::HVec qkv16, probs16, att16, gu16, h16;
  };
  std::vector<std::vector<Acts>> acts;  // [local layer][act ring]
  // An MoE layer's routing and dispatch state for one micro-batch in flight. Dispatch rows
  // are ordered by expert (so by owning rank), then by choice a = t·k + j.
  struct MoeState {
    nn::MoeRouting route;
    FVec logits, gate;                         // [T, E], [T·k]
    kern::LVec choice_row;                           // [T·k] dispatch row of each choice, -1 dropped
    std::vector<int32_t> send_ec, recv_ec;     // [ep, E] rows per (peer, expert) sent / received
    std::vector<size_t> send_rows, recv_rows;  // per peer
    FVec xsend, ysend;                         // [T·k, H] rows sent out / combined back (dy in backward)
    FVec xr, yr, gu, h;                        // received rows [N, H], expert activations, outputs (dX)
    int64_t nrecv = 0;
  };
  std::vector<std::vector<MoeState>> moes;  // [local layer][act ring]; empty for dense layers
  FVec moe_dgate, moe_dh, moe_dgu, moe_dlogits;
  std::vector<FVec> xs, dxs, rxs, rdxs;  // per act ring: residual stream, its gradient, receive rings
  std::vector<kern::HVec> wire16;        // a 16-bit pipeline wire: its receive and send rings
  FVec yl, dnl, dxfull;                  // sequence parallel: reduce-scattered rows, gathered dx
  FVec ybuf, dn, dh, dgu, datt, dqkv, dprobs, nf, rstdf, logits, row_max, stats;
  FVec rope;  // llama: the RoPE table [S, D]
  // context parallel (ring attention): the StepProgram's ring buffers
  int cp = 1, cc = 0;
  int64_t seq_local = 0;
  FVec kv_ring[2], dkv_ring[2], dkv_home, ring_m, ring_l, ring_dvec, ring_scratch;
  int64_t token_row(int64_t t) const;  // micro-batch row t's token in its sequences (b·S + position)
  void own_kv(int l, int act_slot, float* dst);  // this rank's key/value columns of qkv into dst
  void ring_fwd_step(int l, int act_slot, int step);
  void ring_fwd_out(int l, int act_slot, int ring);
  void ring_bwd_begin(int l, int act_slot, int ring, int gring, bool acc);
  void ring_bwd_step(int l, int act_slot, int step);
  void ring_bwd_qkv(int l, int act_slot, int ring, int gring, bool acc);
  // ---- mixed precision (train.precision) ---------------------------------------------------
  DType prec = DType::F32;  // F32: every round16 below is a no-op and nothing is packed
  // bf16 products go through the bf16 matmul (on every rank: agree_gemm16), which rounds its
  // operands itself: weight16 and dy_rounded pass their input through. The same test as
  // host_sgemm's inside run_op's GemmOperandScope, so the two cannot disagree.
  bool gemm16_rounds() const { return prec == DType::BF16 && bf16_gemm_native(); }
  FVec w16;                 // a weight rounded for its matmul (one not in the gather ring)
  // dynamic loss scaling (F16): the scale the loss gradient is multiplied by, clean steps
  // since it last changed, steps skipped for non-finite gradients
  double loss_scale = 1;
  int64_t scale_clean = 0, skipped_steps = 0;
  bool step_skipped = false;
  void round16(float* p, int64_t n) const;                         // in place
  void pack16(float* p, const kern::HVec& h, int64_t n) const;     // round p in place and keep it in h
  void unpack16(const kern::HVec& h, float* p, int64_t n) const;   // p = h (exact)
  const float* weight16(const Param& w, int ring, int64_t off, int64_t n);  // w's [off, off+n) rounded
  const float* dy_rounded(const float* dy, int64_t n);             // dy rounded into dn (free until the op's last matmul)
  std::vector<TVec> inputs, targets;
  std::unique_ptr<nn::Embedding<float, Exec>::Scratch> escratch;

  // ---- step state ------------------------------------------------------------------------
  int64_t completed = 0;
  // summed over the batch: [cross-entropy, MoE load-balancing loss, dropped MoE choices]
  double sums_local[3] = {0, 0, 0}, sums_global[3] = {0, 0, 0};
  double sq_local = 0, sq_total = 0, grad_norm = 0;
  bool loss_reduced = false;  // the loss sums travel over the loss group
  graph::TaskGraph graph{"train_step"};
  graph::Executor executor;
  std::vector<std::unique_ptr<detail::ShardGather>> gathers;
  std::vector<std::unique_ptr<detail::ShardReduceScatter>> scatters;
  std::vector<Kokkos::View<char*>> staging_pool;  // prog.staging_slots, allocated
  int64_t staging = 0;                             // their bytes
  int64_t memory_baseline = 0;  // bytes tracked (core/memory.hpp) when this trainer began

  Impl(const Deck& d, const Mesh& m, comm::CommSet& c, bool evaluate);
  void check_memory();
  void agree_gemm16();
  double memory_limit(std::string* source) const;
  std::string memory_message(const std::string& what, double bytes, double limit, const std::string& source) const;
  std::string configuration_that_fits(double limit) const;
  void allocate();
  void bind();
  graph::CommStartFn bind_comm(const compile::TaskSpec& t);
  char* arena(const compile::CommOp& o);
  void init_params();

  // ---- the block program (step_kernels.cpp) ---------------------------------------------
  void run_op(const compile::ComputeOp& op);
  float* pptr(const Param& p, int ring) {
    return p.shard_stored(zero) ? gather_ring[static_cast<size_t>(ring)].data() + p.ring_offset : p.param.data();
  }
  float* gptr(const Param& p, int gring) {
    return p.grad_shard_stored(zero) ? grad_ring[static_cast<size_t>(gring)].data() + p.ring_offset : p.grad.data();
  }
  bool accum(const Param& p, bool acc) const { return acc && !p.grad_shard_stored(zero); }
  Param& P(const std::string& n) { return params[static_cast<size_t>(index.at(n))]; }
  Param& U(int unit, int k) {
    return params[static_cast<size_t>(units[static_cast<size_t>(unit)][static_cast<size_t>(k)])];
  }
  /// Layer l's parameter k in the gpt's order (0 attn_norm, 1 attn.qkv or attn.q, 2 attn.out,
  /// 3 mlp_norm, 4 gate_up or router, 5 down or expert gate_up, 6 expert down); the llama's
  /// attn.kv (between attn.q and attn.out) is kv_weight(l).
  Param& lw(int l, int k) { return U(l + 1, k + (llama && k >= 2 ? 1 : 0)); }
  Param& kv_weight(int l) { return U(l + 1, 2); }
  void qkv_forward(int l, int act_slot, int ring);  // n1 → qkv (q|k|v projections, RoPE on llama)
  void qkv_backward(int l, int act_slot, int ring, int gring, bool acc);  // dqkv → weight gradients, dn
  Acts& act(int l, int act_slot) {
    return acts[static_cast<size_t>(prog.shape.local_layer[static_cast<size_t>(l)])][static_cast<size_t>(act_slot)];
  }
  MoeState& ms(int l, int act_slot) {
    return moes[static_cast<size_t>(prog.shape.local_layer[static_cast<size_t>(l)])][static_cast<size_t>(act_slot)];
  }
  Layout param_layout(const Param& p, bool optimizer_state) const;
  const float* dx_full(int act_slot) const {  // the whole micro-batch's dx (all-gathered under sp)
    return sp ? dxfull.data() : dxs[static_cast<size_t>(act_slot)].data();
  }

  void embed_fwd_a(int j, int act_slot, int ring);
  void embed_fwd_b(int act_slot, int ring);
  void norm_fwd(const Param& g, const float* x, float* rows, float* rstd, int ring);
  void norm_bwd(const Param& g, const float* x, const float* rstd, int act_slot, int ring, int gring, bool acc,
                bool acc_dx);
  void linear_backward(const float* dy, const float* x, const Param& w, int ring, int gring, bool acc, int64_t rows,
                       int64_t out, int64_t in, float* dx, bool acc_dx);
  void layer_fwd_norm1(int l, int act_slot, int ring, bool recompute);
  /// Layer l's attention dropout in micro-batch j of the running step (none when evaluating).
  nn::AttnDropout attn_dropout(int l, int j) const;
  void layer_attn_core(int l, int j, int act_slot);
  void layer_fwd_attn(int l, int j, int act_slot, int ring);
  void layer_fwd_norm2(int l, int act_slot, int ring);
  void layer_fwd_mlp(int l, int act_slot, int ring);
  void layer_fwd_end(int l, int act_slot);
  void head_norm(int act_slot, int ring);
  void head_a(int ring);
  void head_b(int j);
  void head_c(int j, int ring, int gring, bool acc);
  void head_d(int act_slot, int ring, int gring, bool acc);
  void head_loss_value(int j);
  void layer_bwd_mlp(int l, int act_slot, int ring, int gring, bool acc);
  void layer_bwd_attn(int l, int j, int act_slot, int ring, int gring, bool acc);
  void layer_bwd_norm(int l, bool mlp, int act_slot, int ring, int gring, bool acc);
  void embed_bwd(int j, int act_slot, int gring, bool acc);
  void moe_route_fwd(int l, int act_slot, int ring);
  void moe_recv_counts(int l, int act_slot);
  void moe_experts_fwd(int l, int act_slot, int ring);
  void moe_combine(int l, int act_slot);
  void moe_combine_bwd(int l, int act_slot);
  void moe_experts_bwd(int l, int act_slot, int ring, int gring, bool acc);
  void moe_router_bwd(int l, int act_slot, int ring, int gring, bool acc);
  void norm_local();
  void update();
};

}  // namespace shardflow::train
