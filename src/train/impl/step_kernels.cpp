// The block program of MODEL.md as this rank runs it: the kernels each ComputeOp of the
// StepProgram calls, on the buffers the trainer bound (trainer_impl.hpp).
#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/gemm.hpp"
#include "core/half.hpp"
#include "train/impl/shard_collectives.hpp"
#include "train/impl/trainer_impl.hpp"

namespace shardflow::train {

using namespace kern;

namespace {
/// y = x · wᵀ backward: dx (+)= dy · w (skipped when dx is null), dw (+)= dyᵀ · x, for dy
/// [rows, out], x [rows, in], w and dw [out, in].
void linear_bwd(const float* dy, const float* x, const float* w, float* dw, int64_t rows, int64_t out, int64_t in,
                float* dx, bool acc_dx, bool acc_w) {
  if (dx != nullptr)
    nn::Linear<float, Exec>::backward_input(cmat(dy, rows, out), cmat(w, out, in), mat(dx, rows, in), acc_dx);
  nn::Linear<float, Exec>::backward_weight(cmat(dy, rows, out), cmat(x, rows, in), mat(dw, out, in), acc_w);
}
}  // namespace

// ---- mixed precision ------------------------------------------------------------------------
// train.precision = bf16 / f16 (docs/memory.md): every matmul operand is a 16-bit value
// (weights rounded per use into w16, activations and gradients rounded where they are made),
// products accumulate in f32 (the gemm), and what a layer keeps for its backward (qkv, probs,
// att, gu, h) is stored in 16 bits (pack16 in the forward, unpack16 in the backward). The
// rounding is round-to-nearest-even (core/half.hpp), the same on every rank and every split.

void Trainer::Impl::round16(float* p, int64_t n) const {
  if (prec == DType::F32 || n <= 0) return;
  const DType d = prec;
  Kokkos::parallel_for(
      "shardflow::train::round16", Kokkos::RangePolicy<Exec>(0, n), KOKKOS_LAMBDA(int64_t i) { p[i] = round_to(p[i], d); });
}

void Trainer::Impl::pack16(float* p, const kern::HVec& h, int64_t n) const {
  if (prec == DType::F32 || n <= 0) return;
  if (h.data() == nullptr) {  // kept in f32 (recomputation scratch): round only
    round16(p, n);
    return;
  }
  uint16_t* q = h.data();
  if (prec == DType::BF16) {
    Kokkos::parallel_for(
        "shardflow::train::pack_bf16", Kokkos::RangePolicy<Exec>(0, n), KOKKOS_LAMBDA(int64_t i) {
          const bf16 v(p[i]);
          q[i] = v.bits;
          p[i] = static_cast<float>(v);
        });
  } else {
    Kokkos::parallel_for(
        "shardflow::train::pack_f16", Kokkos::RangePolicy<Exec>(0, n), KOKKOS_LAMBDA(int64_t i) {
          const f16 v(p[i]);
          q[i] = v.bits;
          p[i] = static_cast<float>(v);
        });
  }
}

void Trainer::Impl::unpack16(const kern::HVec& h, float* p, int64_t n) const {
  if (h.data() == nullptr || n <= 0) return;
  const uint16_t* q = h.data();
  if (prec == DType::BF16) {
    Kokkos::parallel_for(
        "shardflow::train::unpack_bf16", Kokkos::RangePolicy<Exec>(0, n),
        KOKKOS_LAMBDA(int64_t i) { p[i] = static_cast<float>(bf16::from_bits(q[i])); });
  } else {
    Kokkos::parallel_for(
        "shardflow::train::unpack_f16", Kokkos::RangePolicy<Exec>(0, n),
        KOKKOS_LAMBDA(int64_t i) { p[i] = static_cast<float>(f16::from_bits(q[i])); });
  }
}

const float* Trainer::Impl::weight16(const Param& w, int ring, int64_t off, int64_t n) {
  float* src = pptr(w, ring) + off;
  if (prec == DType::F32) return src;
  // the bf16 matmul (every rank uses it or none: agree_gemm16) rounds its operands to bf16
  // itself, the same rounding (and rounding is idempotent): a pass here would only repeat it
  if (gemm16_rounds()) return src;
  // a gathered ZeRO-3 weight is this step's copy: round it where it is (idempotent, so a
  // second use, a later micro-batch, or a bf16 gather changes nothing)
  const bool in_ring = w.shard_stored(zero);
  SHARDFLOW_REQUIRE(in_ring || n <= static_cast<int64_t>(w16.extent(0)), "mixed precision: weight '", w.name,
                    "' needs ", n, " elements of the 16-bit weight buffer, which holds ", w16.extent(0));
  float* dst = in_ring ? src : w16.data();
  const DType d = prec;
  Kokkos::parallel_for(
      "shardflow::train::weight16", Kokkos::RangePolicy<Exec>(0, n),
      KOKKOS_LAMBDA(int64_t i) { dst[i] = round_to(src[i], d); });
  return dst;
}

const float* Trainer::Impl::dy_rounded(const float* dy, int64_t n) {
  if (prec == DType::F32 || gemm16_rounds()) return dy;  // (as in weight16)
  // dn is free here: each backward op writes it with its last matmul, after dy's last use
  float* dst = dn.data();
  const DType d = prec;
  Kokkos::parallel_for(
      "shardflow::train::dy16", Kokkos::RangePolicy<Exec>(0, n), KOKKOS_LAMBDA(int64_t i) { dst[i] = round_to(dy[i], d); });
  return dst;
}

void Trainer::Impl::run_op(const compile::ComputeOp& o) {
  using compile::StepOp;
  // bf16: every matmul operand is a bf16 value (above), which lets the host GEMM use a bf16
  // matmul where one is faster (core/gemm.hpp, SHARDFLOW_GEMM_BF16)
  const GemmOperandScope operands(prec == DType::BF16 ? DType::BF16 : DType::F32);
  const int l = o.layer, j = o.mb, x = o.act_slot, s = o.ring, g = o.grad_ring;
  const bool a = o.acc;
  switch (o.op) {
    case StepOp::Begin: sums_local[0] = sums_local[1] = sums_local[2] = 0; return;
    case StepOp::Copy:
      if (o.cast == DType::F32) {
        nn::Residual<float, Exec>::copy(cmat(F(o.src), Tr, cfg.hidden), mat(F(o.dst), Tr, cfg.hidden));
      } else if (prog.buffers.spec(o.dst.buf).dtype == o.cast) {  // narrow into a pipeline send ring
        detail::cast_out(F(o.src), resolve(o.dst), o.n, o.cast);
      } else {  // widen a pipeline receive ring into the act slot
        detail::cast_in(resolve(o.src), F(o.dst), o.n, o.cast);
      }
      return;
    case StepOp::Embed: embed_fwd_a(j, x, s); return;
    case StepOp::PosEmbed: embed_fwd_b(x, s); return;
    case StepOp::AttnNorm: layer_fwd_norm1(l, x, s, o.recompute); return;
    case StepOp::Attn:
      layer_fwd_attn(l, j, x, s);
      return;
    case StepOp::AttnRing: ring_fwd_step(l, x, o.step); return;
    case StepOp::AttnOut: ring_fwd_out(l, x, s); return;
    case StepOp::AttnRingBwd: ring_bwd_step(l, x, o.step); return;
    case StepOp::AttnQkvBwd: ring_bwd_qkv(l, x, s, g, a); return;
    case StepOp::MlpNorm: layer_fwd_norm2(l, x, s); return;
    case StepOp::Mlp: layer_fwd_mlp(l, x, s); return;
    case StepOp::Residual: layer_fwd_end(l, x); return;
    case StepOp::MoeRoute: moe_route_fwd(l, x, s); return;
    case StepOp::MoePlan: moe_recv_counts(l, x); return;
    case StepOp::MoeExperts: moe_experts_fwd(l, x, s); return;
    case StepOp::MoeCombine: moe_combine(l, x); return;
    case StepOp::FinalNorm: head_norm(x, s); return;
    case StepOp::Logits: head_a(s); return;
    case StepOp::SumExp: head_b(j); return;
    case StepOp::Loss: head_c(j, s, g, a); return;
    case StepOp::LossValue: head_loss_value(j); return;
    case StepOp::FinalNormBwd: head_d(x, s, g, a); return;
    case StepOp::MoeCombineBwd: moe_combine_bwd(l, x); return;
    case StepOp::MoeExpertsBwd: moe_experts_bwd(l, x, s, g, a); return;
    case StepOp::MoeRouterBwd: moe_router_bwd(l, x, s, g, a); return;
    case StepOp::MlpBwd: layer_bwd_mlp(l, x, s, g, a); return;
    case StepOp::MlpNormBwd: layer_bwd_norm(l, true, x, s, g, a); return;
    case StepOp::AttnCore:
      layer_attn_core(l, j, x);
      return;
    case StepOp::AttnBwd:
      layer_bwd_attn(l, j, x, s, g, a);
      return;
    case StepOp::AttnNormBwd: layer_bwd_norm(l, false, x, s, g, a); return;
    case StepOp::EmbedBwd: embed_bwd(j, x, g, a); return;
    case StepOp::GradNormLocal: norm_local(); return;
    case StepOp::AdamW: update(); return;
  }
  throw Error("run_op: unknown step op " + std::to_string(static_cast<int>(o.op)));
}

// ---- compute tasks ------------------------------------------------------------------------
// Tensor parallelism (Megatron): qkv, gate_up and lm_head hold output rows of the local
// heads / ffn columns / vocabulary slice; attn.out and mlp.down hold the matching input
// columns and produce partial sums (ybuf, dn) that a tensor collective completes. Without
// sequence parallelism the residual stream, the norms and their gains are replicated over
// the tensor axis and the collective is an all-reduce. With it, the residual stream (x,
// dx, x_in, x_mid, rstd) holds this rank's rows [t0, t0 + Tr) of the T tokens: norms write
// their rows into the full n1 / n2 / nf, which an all-gather completes, and the partial
// sums are reduce-scattered back to rows (yl, dnl); dx is all-gathered into dxfull before
// the row-parallel backward.

void Trainer::Impl::embed_fwd_a(int j, int act_slot, int ring) {
  const Param& e = P("embed.weight");
  const int64_t H = cfg.hidden;
  float* out = sp ? ybuf.data() : xs[static_cast<size_t>(act_slot)].data();
  nn::Embedding<float, Exec>::forward(inputs[static_cast<size_t>(j)], cmat(pptr(e, ring), V_l, H), v0,
                                      mat(out, tokens_mb, H));
  if (sp && tc == 0 && !llama)  // positions join the partial sums once
    nn::PositionEmbedding<float, Exec>::forward(cmat(pptr(P("pos_embed.weight"), ring), cfg.seq, H),
                                                mat(out, tokens_mb, H), cp, cc);
}

void Trainer::Impl::embed_fwd_b(int act_slot, int ring) {
  const Param& pe = P("pos_embed.weight");
  nn::PositionEmbedding<float, Exec>::forward(cmat(pptr(pe, ring), cfg.seq, cfg.hidden),
                                              mat(xs[static_cast<size_t>(act_slot)].data(), tokens_mb, cfg.hidden), cp,
                                              cc);
}

// rmsnorm of this rank's residual rows x [Tr, H] into `rows` [Tr, H] (rows [t0, t0 + Tr) of
// the full output, or under sequence parallelism the kept rows that an all-gather spreads)
void Trainer::Impl::norm_fwd(const Param& g, const float* x, float* rows, float* rstd, int ring) {
  const int64_t H = cfg.hidden;
  nn::RmsNorm<float, Exec>::forward(cmat(x, Tr, H), cvec(pptr(g, ring), H), mat(rows, Tr, H), vec(rstd, Tr));
  round16(rows, Tr * H);  // a matmul's input (the other rows: the ranks that made them)
}

// dx (+)= the rmsnorm backward of this rank's rows of dn (dnl under sp), gain gradient (+)=
void Trainer::Impl::norm_bwd(const Param& g, const float* x, const float* rstd, int act_slot, int ring, int gring,
                             bool acc, bool acc_dx) {
  const int64_t H = cfg.hidden;
  nn::RmsNorm<float, Exec>::backward(cmat(sp ? dnl.data() : dn.data(), Tr, H), cmat(x, Tr, H), cvec(pptr(g, ring), H),
                                     cvec(rstd, Tr), mat(dxs[static_cast<size_t>(act_slot)].data(), Tr, H),
                                     vec(gptr(g, gring), H), acc_dx, accum(g, acc));
}

// linear_bwd for the parameter w (its gather ring, gradient ring and accumulation rule)
void Trainer::Impl::linear_backward(const float* dy, const float* x, const Param& w, int ring, int gring, bool acc,
                                    int64_t rows, int64_t out, int64_t in, float* dx, bool acc_dx) {
  const float* wr = dx != nullptr ? weight16(w, ring, 0, out * in) : pptr(w, ring);
  linear_bwd(dy, x, wr, gptr(w, gring), rows, out, in, dx, acc_dx, accum(w, acc));
}

void Trainer::Impl::layer_fwd_norm1(int l, int act_slot, int ring, bool recompute) {
  const int64_t H = cfg.hidden;
  Acts& a = act(l, act_slot);
  if (!recompute)  // a re-run forward starts from the kept input
    nn::Residual<float, Exec>::copy(cmat(xs[static_cast<size_t>(act_slot)].data(), Tr, H), mat(a.x_in.data(), Tr, H));
  norm_fwd(lw(l, 0), a.x_in.data(), sp ? a.n1r.data() : a.n1.data() + t0 * cfg.hidden, a.rstd1.data(), ring);
}

// qkv = n1 · [q | kv]ᵀ for this rank's heads, then (llama) RoPE on the query and key heads;
// the gpt's stacked qkv weight is one matmul, the llama's q and kv weights write the column
// blocks [0, H_l) and [H_l, QKV_l) of the same activation
void Trainer::Impl::qkv_forward(int l, int act_slot, int ring) {
  using Lin = nn::Linear<float, Exec>;
  using Cols = Kokkos::pair<int64_t, int64_t>;
  const int64_t T = tokens_mb, H = cfg.hidden;
  Acts& a = act(l, act_slot);
  const auto n1 = cmat(a.n1.data(), T, H);
  const auto qkv = mat(a.qkv.data(), T, QKV_l);
  if (!llama) {
    Lin::forward(n1, cmat(weight16(lw(l, 1), ring, 0, QKV_l * H), QKV_l, H), qkv);
    return;
  }
  const int64_t KV = QKV_l - H_l;
  Lin::forward(n1, cmat(weight16(lw(l, 1), ring, 0, H_l * H), H_l, H), Kokkos::subview(qkv, Kokkos::ALL(), Cols(0, H_l)));
  Lin::forward(n1, cmat(weight16(kv_weight(l), ring, 0, KV * H), KV, H),
               Kokkos::subview(qkv, Kokkos::ALL(), Cols(H_l, QKV_l)));
  nn::Rope<float, Exec>::forward(qkv, rot_heads, seq_local, cmat(rope.data(), cfg.seq, cfg.head_dim()), cp, cc);
}

// the conjugate of qkv_forward on dqkv (in place: RoPE's inverse rotation, then the 16-bit
// rounding of a matmul operand): the weight gradients and dn = dqkv · [q | kv]
void Trainer::Impl::qkv_backward(int l, int act_slot, int ring, int gring, bool acc) {
  using Cols = Kokkos::pair<int64_t, int64_t>;
  const int64_t T = tokens_mb, H = cfg.hidden;
  Acts& a = act(l, act_slot);
  if (llama)
    nn::Rope<float, Exec>::backward(mat(dqkv.data(), T, QKV_l), rot_heads, seq_local,
                                    cmat(rope.data(), cfg.seq, cfg.head_dim()), cp, cc);
  round16(dqkv.data(), T * QKV_l);
  if (!llama) {
    linear_backward(dqkv.data(), a.n1.data(), lw(l, 1), ring, gring, acc, T, QKV_l, H, dn.data(), false);
    return;
  }
  const auto d = cmat(dqkv.data(), T, QKV_l);
  const auto n1 = cmat(a.n1.data(), T, H);
  const int64_t KV = QKV_l - H_l;
  struct Part {
    Param* w;
    Cols cols;
    int64_t rows;
  };
  const Part parts[2] = {{&lw(l, 1), Cols(0, H_l), H_l}, {&kv_weight(l), Cols(H_l, QKV_l), KV}};
  for (int i = 0; i < 2; ++i) {
    const Part& p = parts[i];
    const auto dy = Kokkos::subview(d, Kokkos::ALL(), p.cols);
    nn::Linear<float, Exec>::backward_input(dy, cmat(weight16(*p.w, ring, 0, p.rows * H), p.rows, H),
                                            mat(dn.data(), T, H), i > 0);
    nn::Linear<float, Exec>::backward_weight(dy, n1, mat(gptr(*p.w, gring), p.rows, H), accum(*p.w, acc));
  }
}

nn::AttnDropout Trainer::Impl::attn_dropout(int l, int j) const {
  if (prog.shape.evaluate || deck.model.attention_dropout <= 0) return nn::AttnDropout{};
  return nn::AttnDropout{deck.model.attention_dropout,
                         nn::attention_dropout_key(static_cast<uint64_t>(deck.train.seed), completed + 1, l),
                         slice.begin + j * mb_seqs, kvmap.a0};
}

void Trainer::Impl::layer_fwd_attn(int l, int j, int act_slot, int ring) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden, S = cfg.seq;
  const Param& wout = lw(l, 2);
  Acts& a = act(l, act_slot);
  qkv_forward(l, act_slot, ring);
  pack16(a.qkv.data(), a.qkv16, T * QKV_l);
  if (cp > 1) {  // ring attention: this rank's block first (AttnRing steps, then AttnOut)
    own_kv(l, act_slot, kv_ring[0].data());
    nn::RingAttention<float, Exec>::init(vec(ring_m.data(), mb_seqs * A_l * seq_local),
                                         vec(ring_l.data(), mb_seqs * A_l * seq_local), mat(a.att.data(), T, H_l));
    return;
  }
  VT::Ten3 probs(a.probs.data(), static_cast<size_t>(mb_seqs * A_l), static_cast<size_t>(S), static_cast<size_t>(S));
  Attention<float, Exec>::forward(cmat(a.qkv.data(), T, QKV_l), A_l, probs, mat(a.att.data(), T, H_l), prec, kvmap,
                                  attn_dropout(l, j), mat(dprobs.data(), S, S));
  pack16(a.probs.data(), a.probs16, mb_seqs * A_l * S * S);
  pack16(a.att.data(), a.att16, T * H_l);
  Linear<float, Exec>::forward(cmat(a.att.data(), T, H_l), cmat(weight16(wout, ring, 0, H * H_l), H, H_l),
                               mat(ybuf.data(), T, H));
}

// selective recomputation: the attention core again (probs, and att with the same values)
void Trainer::Impl::layer_attn_core(int l, int j, int act_slot) {
  const int64_t T = tokens_mb, S = cfg.seq;
  Acts& a = act(l, act_slot);
  unpack16(a.qkv16, a.qkv.data(), T * QKV_l);
  VT::Ten3 probs(a.probs.data(), static_cast<size_t>(mb_seqs * A_l), static_cast<size_t>(S), static_cast<size_t>(S));
  nn::Attention<float, Exec>::forward(cmat(a.qkv.data(), T, QKV_l), A_l, probs, mat(a.att.data(), T, H_l), prec, kvmap,
                                      attn_dropout(l, j), mat(dprobs.data(), S, S));
  pack16(a.probs.data(), a.probs16, mb_seqs * A_l * S * S);
  pack16(a.att.data(), a.att16, T * H_l);
}

void Trainer::Impl::layer_fwd_norm2(int l, int act_slot, int ring) {
  const int64_t H = cfg.hidden;
  Acts& a = act(l, act_slot);
  nn::Residual<float, Exec>::copy(cmat(a.x_in.data(), Tr, H), mat(a.x_mid.data(), Tr, H));
  nn::Residual<float, Exec>::add(mat(a.x_mid.data(), Tr, H), cmat(sp ? yl.data() : ybuf.data(), Tr, H));
  norm_fwd(lw(l, 3), a.x_mid.data(), sp ? a.n2r.data() : a.n2.data() + t0 * H, a.rstd2.data(), ring);
}

void Trainer::Impl::layer_fwd_mlp(int l, int act_slot, int ring) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden;
  const Param &wgu = lw(l, 4), &wdown = lw(l, 5);
  Acts& a = act(l, act_slot);
  Linear<float, Exec>::forward(cmat(a.n2.data(), T, H), cmat(weight16(wgu, ring, 0, 2 * F_l * H), 2 * F_l, H),
                               mat(a.gu.data(), T, 2 * F_l));
  pack16(a.gu.data(), a.gu16, T * 2 * F_l);
  SwiGlu<float, Exec>::forward(cmat(a.gu.data(), T, 2 * F_l), mat(a.h.data(), T, F_l));
  pack16(a.h.data(), a.h16, T * F_l);
  Linear<float, Exec>::forward(cmat(a.h.data(), T, F_l), cmat(weight16(wdown, ring, 0, H * F_l), H, F_l),
                               mat(ybuf.data(), T, H));
}

void Trainer::Impl::layer_fwd_end(int l, int act_slot) {
  const int64_t H = cfg.hidden;
  float* x = xs[static_cast<size_t>(act_slot)].data();
  nn::Residual<float, Exec>::copy(cmat(act(l, act_slot).x_mid.data(), Tr, H), mat(x, Tr, H));
  nn::Residual<float, Exec>::add(mat(x, Tr, H), cmat(sp ? yl.data() : ybuf.data(), Tr, H));
}

void Trainer::Impl::head_norm(int act_slot, int ring) {
  norm_fwd(P("final_norm.weight"), xs[static_cast<size_t>(act_slot)].data(), nf.data() + t0 * cfg.hidden,
           rstdf.data(), ring);
}

void Trainer::Impl::head_a(int ring) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden;
  const Param& lm = P(prog.shape.tied ? "embed.weight" : "lm_head.weight");
  Linear<float, Exec>::forward(cmat(nf.data(), T, H), cmat(weight16(lm, ring, 0, V_l * H), V_l, H),
                               mat(logits.data(), T, V_l));
  CrossEntropy<float, Exec>::local_max(cmat(logits.data(), T, V_l), vec(row_max.data(), T));
}

void Trainer::Impl::head_b(int j) {
  const int64_t T = tokens_mb;
  nn::CrossEntropy<float, Exec>::local_sumexp_target(cmat(logits.data(), T, V_l), cvec(row_max.data(), T),
                                                     targets[static_cast<size_t>(j)], v0, mat(stats.data(), T, 2));
}

void Trainer::Impl::head_c(int j, int ring, int gring, bool acc) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden;
  const Param& lm = P(prog.shape.tied ? "embed.weight" : "lm_head.weight");
  // f16: the loss gradient is multiplied by the loss scale (update() divides it out)
  // context parallel: this rank's tokens are 1/cp of its sequences', and the gradients are
  // averaged over batch + context, so the context ranks' shares are scaled to sum
  const double scale = loss_scale * cp / static_cast<double>(local_seqs * cfg.seq);
  sums_local[0] += CrossEntropy<float, Exec>::loss_and_grad(cmat(logits.data(), T, V_l), cvec(row_max.data(), T),
                                                            cmat(stats.data(), T, 2), targets[static_cast<size_t>(j)],
                                                            v0, scale, mat(logits.data(), T, V_l));
  round16(logits.data(), T * V_l);
  linear_backward(logits.data(), nf.data(), lm, ring, gring, acc, T, V_l, H, dn.data(), false);
}

// the cross-entropy of micro-batch j only (evaluation: its gradient lands in logits, unused)
void Trainer::Impl::head_loss_value(int j) {
  const int64_t T = tokens_mb;
  sums_local[0] += nn::CrossEntropy<float, Exec>::loss_and_grad(
      cmat(logits.data(), T, V_l), cvec(row_max.data(), T), cmat(stats.data(), T, 2), targets[static_cast<size_t>(j)],
      v0, 1.0, mat(logits.data(), T, V_l));
}

void Trainer::Impl::head_d(int act_slot, int ring, int gring, bool acc) {
  norm_bwd(P("final_norm.weight"), xs[static_cast<size_t>(act_slot)].data(), rstdf.data(), act_slot, ring, gring, acc,
           false);
}

void Trainer::Impl::layer_bwd_mlp(int l, int act_slot, int ring, int gring, bool acc) {
  const int64_t T = tokens_mb, H = cfg.hidden;
  Acts& a = act(l, act_slot);
  unpack16(a.h16, a.h.data(), T * F_l);
  unpack16(a.gu16, a.gu.data(), T * 2 * F_l);
  linear_backward(dy_rounded(dx_full(act_slot), T * H), a.h.data(), lw(l, 5), ring, gring, acc, T, H, F_l,
                  dh.data(), false);
  nn::SwiGlu<float, Exec>::backward(cmat(dh.data(), T, F_l), cmat(a.gu.data(), T, 2 * F_l), mat(dgu.data(), T, 2 * F_l));
  round16(dgu.data(), T * 2 * F_l);
  linear_backward(dgu.data(), a.n2.data(), lw(l, 4), ring, gring, acc, T, 2 * F_l, H, dn.data(), false);
}

void Trainer::Impl::layer_bwd_attn(int l, int j, int act_slot, int ring, int gring, bool acc) {
  const int64_t T = tokens_mb, H = cfg.hidden, S = cfg.seq;
  Acts& a = act(l, act_slot);
  unpack16(a.att16, a.att.data(), T * H_l);
  unpack16(a.qkv16, a.qkv.data(), T * QKV_l);
  if (cp > 1) {
    ring_bwd_begin(l, act_slot, ring, gring, acc);
    return;
  }
  unpack16(a.probs16, a.probs.data(), mb_seqs * A_l * S * S);
  linear_backward(dy_rounded(dx_full(act_slot), T * H), a.att.data(), lw(l, 2), ring, gring, acc, T, H, H_l,
                  datt.data(), false);
  round16(datt.data(), T * H_l);
  VT::CTen3 probs(a.probs.data(), static_cast<size_t>(mb_seqs * A_l), static_cast<size_t>(S), static_cast<size_t>(S));
  nn::Attention<float, Exec>::backward(cmat(datt.data(), T, H_l), cmat(a.qkv.data(), T, QKV_l), probs, A_l,
                                       mat(dprobs.data(), S, S), mat(dqkv.data(), T, QKV_l), false, prec, kvmap,
                                       attn_dropout(l, j));
  qkv_backward(l, act_slot, ring, gring, acc);
}

// ---- context parallelism: ring attention ------------------------------------------------------
// The compiled ring (compile/impl/emit_block.cpp) moves the key/value blocks: step r computes
// with the block of context rank cc − r in kv_ring[r % 2]; the backward's dK|dV of that block
// travels with it in dkv_ring[r % 2] and arrives home in dkv_home after the last step.

int64_t Trainer::Impl::token_row(int64_t t) const {
  return (t / seq_local) * cfg.seq + nn::context_position(t % seq_local, seq_local, cp, cc);
}

void Trainer::Impl::own_kv(int l, int act_slot, float* dst) {
  const int64_t W = QKV_l, off = H_l, n = QKV_l - H_l;
  const float* q = act(l, act_slot).qkv.data();
  Kokkos::parallel_for(
      "shardflow::train::own_kv", Kokkos::RangePolicy<Exec>(0, tokens_mb * n),
      KOKKOS_LAMBDA(int64_t i) { dst[i] = q[(i / n) * W + off + i % n]; });
}

void Trainer::Impl::ring_fwd_step(int l, int act_slot, int step) {
  const int64_t T = tokens_mb, stats = mb_seqs * A_l * seq_local;
  Acts& a = act(l, act_slot);
  const int k_rank = (cc - step + cp) % cp;
  nn::RingAttention<float, Exec>::forward_block(
      cmat(a.qkv.data(), T, QKV_l), A_l, cmat(kv_ring[step % 2].data(), T, QKV_l - H_l), kvmap, seq_local, cp, cc,
      k_rank, vec(ring_m.data(), stats), vec(ring_l.data(), stats), mat(a.att.data(), T, H_l),
      vec(ring_scratch.data(), static_cast<int64_t>(ring_scratch.extent(0))), prec);
}

void Trainer::Impl::ring_fwd_out(int l, int act_slot, int ring) {
  const int64_t T = tokens_mb, H = cfg.hidden, stats = mb_seqs * A_l * seq_local;
  Acts& a = act(l, act_slot);
  nn::RingAttention<float, Exec>::finish(cvec(ring_m.data(), stats), cvec(ring_l.data(), stats), A_l, seq_local,
                                         mat(a.att.data(), T, H_l), vec(a.lse.data(), stats));
  pack16(a.att.data(), a.att16, T * H_l);
  nn::Linear<float, Exec>::forward(cmat(a.att.data(), T, H_l), cmat(weight16(lw(l, 2), ring, 0, H * H_l), H, H_l),
                                   mat(ybuf.data(), T, H));
}

void Trainer::Impl::ring_bwd_begin(int l, int act_slot, int ring, int gring, bool acc) {
  const int64_t T = tokens_mb, H = cfg.hidden, stats = mb_seqs * A_l * seq_local;
  Acts& a = act(l, act_slot);
  linear_backward(dy_rounded(dx_full(act_slot), T * H), a.att.data(), lw(l, 2), ring, gring, acc, T, H, H_l,
                  datt.data(), false);
  round16(datt.data(), T * H_l);
  nn::RingAttention<float, Exec>::backward_prep(cmat(datt.data(), T, H_l), cmat(a.att.data(), T, H_l), A_l, seq_local,
                                                vec(ring_dvec.data(), stats));
  {  // dQ accumulates over the ring steps: zero its columns (the dK|dV columns are written
     // whole from dkv_home by ring_bwd_qkv)
    const int64_t W = QKV_l, q = H_l;
    float* d = dqkv.data();
    Kokkos::parallel_for(
        "shardflow::train::zero_dq", Kokkos::RangePolicy<Exec>(0, T),
        KOKKOS_LAMBDA(int64_t t) {
          for (int64_t j = 0; j < q; ++j) d[t * W + j] = 0.0f;
        });
  }
  own_kv(l, act_slot, kv_ring[0].data());
  Kokkos::deep_copy(dkv_ring[0], 0.0f);
}

void Trainer::Impl::ring_bwd_step(int l, int act_slot, int step) {
  const int64_t T = tokens_mb, KV = QKV_l - H_l, stats = mb_seqs * A_l * seq_local;
  Acts& a = act(l, act_slot);
  const int k_rank = (cc - step + cp) % cp;
  nn::RingAttention<float, Exec>::backward_block(
      cmat(datt.data(), T, H_l), cmat(a.qkv.data(), T, QKV_l), A_l, cmat(kv_ring[step % 2].data(), T, KV), kvmap,
      seq_local, cp, cc, k_rank, cvec(a.lse.data(), stats), cvec(ring_dvec.data(), stats),
      mat(dqkv.data(), T, QKV_l), mat(dkv_ring[step % 2].data(), T, KV),
      vec(ring_scratch.data(), static_cast<int64_t>(ring_scratch.extent(0))), prec);
}

void Trainer::Impl::ring_bwd_qkv(int l, int act_slot, int ring, int gring, bool acc) {
  const int64_t W = QKV_l, off = H_l, n = QKV_l - H_l;
  float* d = dqkv.data();
  const float* home = dkv_home.data();
  Kokkos::parallel_for(
      "shardflow::train::dkv_home", Kokkos::RangePolicy<Exec>(0, tokens_mb * n),
      KOKKOS_LAMBDA(int64_t i) { d[(i / n) * W + off + i % n] = home[i]; });
  qkv_backward(l, act_slot, ring, gring, acc);
}

// the attention norm (mlp = false) or the mlp norm: dx += its backward
void Trainer::Impl::layer_bwd_norm(int l, bool mlp, int act_slot, int ring, int gring, bool acc) {
  Acts& a = act(l, act_slot);
  norm_bwd(lw(l, mlp ? 3 : 0), (mlp ? a.x_mid : a.x_in).data(), (mlp ? a.rstd2 : a.rstd1).data(), act_slot, ring,
           gring, acc, true);
}

void Trainer::Impl::embed_bwd(int j, int act_slot, int gring, bool acc) {
  const int64_t T = tokens_mb, H = cfg.hidden;
  const Param& e = P("embed.weight");
  const float* dx = dx_full(act_slot);
  // tied: the head's gradient (this micro-batch's, written first) is already there
  nn::Embedding<float, Exec>::backward(inputs[static_cast<size_t>(j)], cmat(dx, T, H), v0, mat(gptr(e, gring), V_l, H),
                                       *escratch, accum(e, acc || prog.shape.tied));
  if (llama) return;  // RoPE has no parameters
  const Param& pe = P("pos_embed.weight");
  nn::PositionEmbedding<float, Exec>::backward(cmat(dx, T, H), mat(gptr(pe, gring), cfg.seq, H), accum(pe, acc), cp,
                                               cc);
}

// ---- mixture of experts ------------------------------------------------------------------
// After the mlp norm: router logits, the routing decisions (host), dispatch of the kept
// choices' rows ordered by expert (so by owning expert rank), all_to_allv to the experts,
// each local expert's SwiGLU FFN on its rows from every source, all_to_allv back, and the
// gated combine into ybuf, which joins the residual stream like the dense MLP's output.
// The backward runs the conjugates in reverse.
// With tensor parallelism (Megatron's MoE): every tensor rank holds the whole normalised
// input (all-gathered under sp), so the router and the routing decisions are the same on
// all of them; each expert's FFN is split like the dense MLP (gate_up rows and down columns
// of F: this rank's F_l), so the expert outputs, and the combine in ybuf, are partial sums
// that the tensor all-reduce (reduce-scatter under sp) completes, as for the dense MLP.
// Backward: dgate = dx · y is a partial sum too (all-reduced over tensor, T·k values), the
// experts' dX is partial and joins dn, which the tensor collective completes; the router's
// own input gradient joins dn on tensor rank 0 only.

void Trainer::Impl::moe_route_fwd(int l, int act_slot, int ring) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden, E = moe.experts, k = moe.top_k;
  MoeState& m = ms(l, act_slot);
  Acts& a = act(l, act_slot);
  Linear<float, Exec>::forward(cmat(a.n2.data(), T, H), cmat(weight16(lw(l, 4), ring, 0, E * H), E, H),
                               mat(m.logits.data(), T, E));
  auto hl = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), m.logits);
  m.route = moe_route(hl.data(), T, moe);
  sums_local[1] += m.route.aux;
  sums_local[2] += static_cast<double>(m.route.dropped);
  std::vector<int64_t> start(static_cast<size_t>(E + 1), 0);
  for (int64_t c = 0; c < T * k; ++c)
    if (m.route.kept[static_cast<size_t>(c)]) ++start[static_cast<size_t>(m.route.expert[static_cast<size_t>(c)] + 1)];
  std::fill(m.send_ec.begin(), m.send_ec.end(), 0);
  std::fill(m.send_rows.begin(), m.send_rows.end(), 0);
  for (int64_t e = 0; e < E; ++e) {
    const int r = prog.shape.expert_owner[static_cast<size_t>(e)];
    const int64_t n = start[static_cast<size_t>(e + 1)];
    m.send_ec[static_cast<size_t>(r * E + e)] = static_cast<int32_t>(n);
    m.send_rows[static_cast<size_t>(r)] += static_cast<size_t>(n);
  }
  for (int64_t e = 0; e < E; ++e) start[static_cast<size_t>(e + 1)] += start[static_cast<size_t>(e)];
  auto hs = Kokkos::create_mirror_view(m.choice_row);
  auto hg = Kokkos::create_mirror_view(m.gate);
  for (int64_t c = 0; c < T * k; ++c) {
    hg(c) = m.route.gate[static_cast<size_t>(c)];
    hs(c) = m.route.kept[static_cast<size_t>(c)] ? start[static_cast<size_t>(m.route.expert[static_cast<size_t>(c)])]++
                                                 : -1;
  }
  Kokkos::deep_copy(m.choice_row, hs);
  Kokkos::deep_copy(m.gate, hg);
  MoeRows<float, Exec>::dispatch(cmat(a.n2.data(), T, H), m.choice_row, k, mat(m.xsend.data(), T * k, H));
  if (ep == 1) {
    m.recv_ec = m.send_ec;
    moe_recv_counts(l, act_slot);
  }
}

void Trainer::Impl::moe_recv_counts(int l, int act_slot) {
  MoeState& m = ms(l, act_slot);
  const int64_t E = moe.experts;
  m.nrecv = 0;
  for (int r = 0; r < ep; ++r) {
    size_t n = 0;
    for (int64_t e = 0; e < E; ++e) n += static_cast<size_t>(m.recv_ec[static_cast<size_t>(r * E + e)]);
    m.recv_rows[static_cast<size_t>(r)] = n;
    m.nrecv += static_cast<int64_t>(n);
  }
  SHARDFLOW_REQUIRE(m.nrecv * cfg.hidden <= static_cast<int64_t>(m.xr.extent(0)), "MoE layer ", l, ": ", m.nrecv,
                    " rows received, more than the dispatch buffer holds");
}

void Trainer::Impl::moe_experts_fwd(int l, int act_slot, int ring) {
  using namespace nn;
  const int64_t H = cfg.hidden, F = F_l, E = moe.experts;
  MoeState& m = ms(l, act_slot);
  const Param &pgu = lw(l, 5), &pd = lw(l, 6);
  int64_t row = 0;
  for (int r = 0; r < ep; ++r)
    for (int64_t e = e0; e < e0 + E_l; ++e) {
      const int64_t n = m.recv_ec[static_cast<size_t>(r * E + e)];
      if (n == 0) continue;
      Linear<float, Exec>::forward(cmat(m.xr.data() + row * H, n, H),
                                   cmat(weight16(pgu, ring, (e - e0) * 2 * F * H, 2 * F * H), 2 * F, H),
                                   mat(m.gu.data() + row * 2 * F, n, 2 * F));
      round16(m.gu.data() + row * 2 * F, n * 2 * F);  // as a dense layer keeps it
      SwiGlu<float, Exec>::forward(cmat(m.gu.data() + row * 2 * F, n, 2 * F), mat(m.h.data() + row * F, n, F));
      round16(m.h.data() + row * F, n * F);
      Linear<float, Exec>::forward(cmat(m.h.data() + row * F, n, F),
                                   cmat(weight16(pd, ring, (e - e0) * H * F, H * F), H, F),
                                   mat(m.yr.data() + row * H, n, H));
      row += n;
    }
}

void Trainer::Impl::moe_combine(int l, int act_slot) {
  const int64_t T = tokens_mb, H = cfg.hidden, k = moe.top_k;
  MoeState& m = ms(l, act_slot);
  nn::MoeRows<float, Exec>::combine(cmat(m.ysend.data(), T * k, H), m.choice_row, cvec(m.gate.data(), T * k), k,
                                    mat(ybuf.data(), T, H), false);
}

void Trainer::Impl::moe_combine_bwd(int l, int act_slot) {
  const int64_t T = tokens_mb, H = cfg.hidden, k = moe.top_k;
  MoeState& m = ms(l, act_slot);
  const float* dx = dx_full(act_slot);
  nn::MoeRows<float, Exec>::gate_grad(cmat(dx, T, H), cmat(m.ysend.data(), T * k, H), m.choice_row, k,
                                      vec(moe_dgate.data(), T * k));
  nn::MoeRows<float, Exec>::combine_backward(cmat(dx, T, H), m.choice_row, cvec(m.gate.data(), T * k), k,
                                             mat(m.ysend.data(), T * k, H));
}

void Trainer::Impl::moe_experts_bwd(int l, int act_slot, int ring, int gring, bool acc) {
  using namespace nn;
  const int64_t H = cfg.hidden, F = F_l, E = moe.experts;
  MoeState& m = ms(l, act_slot);
  const Param &pgu = lw(l, 5), &pd = lw(l, 6);
  float* dwgu = gptr(pgu, gring);
  float* dwd = gptr(pd, gring);
  // experts that received no rows add nothing: start from zero, then always accumulate
  if (!accum(pgu, acc)) Kokkos::deep_copy(vec(dwgu, pgu.lnumel), 0.0f);
  if (!accum(pd, acc)) Kokkos::deep_copy(vec(dwd, pd.lnumel), 0.0f);
  int64_t row = 0;
  for (int r = 0; r < ep; ++r)
    for (int64_t e = e0; e < e0 + E_l; ++e) {
      const int64_t n = m.recv_ec[static_cast<size_t>(r * E + e)];
      if (n == 0) continue;
      float* dy = m.yr.data() + row * H;  // dy in, dX out
      round16(dy, n * H);
      linear_bwd(dy, m.h.data() + row * F, weight16(pd, ring, (e - e0) * H * F, H * F), dwd + (e - e0) * H * F, n, H,
                 F, moe_dh.data(), false, true);
      SwiGlu<float, Exec>::backward(cmat(moe_dh.data(), n, F), cmat(m.gu.data() + row * 2 * F, n, 2 * F),
                                    mat(moe_dgu.data(), n, 2 * F));
      round16(moe_dgu.data(), n * 2 * F);
      linear_bwd(moe_dgu.data(), m.xr.data() + row * H, weight16(pgu, ring, (e - e0) * 2 * F * H, 2 * F * H),
                 dwgu + (e - e0) * 2 * F * H, n, 2 * F, H, dy, false, true);
      row += n;
    }
}

void Trainer::Impl::moe_router_bwd(int l, int act_slot, int ring, int gring, bool acc) {
  const int64_t T = tokens_mb, H = cfg.hidden, E = moe.experts, k = moe.top_k;
  MoeState& m = ms(l, act_slot);
  const float* dxr = ep > 1 ? m.xsend.data() : m.yr.data();  // the experts' dX, back in dispatch order
  nn::MoeRows<float, Exec>::dispatch_backward(cmat(dxr, T * k, H), m.choice_row, k, mat(dn.data(), T, H), false);
  auto hdg = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), moe_dgate);
  auto hdl = Kokkos::create_mirror_view(moe_dlogits);
  moe_route_backward(m.route, hdg.data(), 1.0 / static_cast<double>(local_seqs), moe, hdl.data());
  Kokkos::deep_copy(moe_dlogits, hdl);
  round16(moe_dlogits.data(), T * E);
  // the router is replicated over tensor: its input gradient joins the partial dn once
  linear_backward(moe_dlogits.data(), act(l, act_slot).n2.data(), lw(l, 4), ring, gring, acc, T, E, H,
                  tc == 0 ? dn.data() : nullptr, true);
}

void Trainer::Impl::norm_local() {
  // Each element once: a tensor-replicated parameter counts on tensor coordinate 0 only, a
  // parameter replicated over the shard group on shard index 0 only.
  double sq = 0;
  for (auto& p : params) {
    if (!p.here) continue;
    if (p.expert && ep > 1) {
      // an expert's gradient sums the tokens of all ep batch slices of its expert group,
      // each scaled for its own slice's mean: 1/ep makes it the mean over the group
      FVec gv = p.grad;
      const float f = 1.0f / static_cast<float>(ep);
      float* gp = gv.data();
      Kokkos::parallel_for(
          "shardflow::train::expert_grad_scale", Kokkos::RangePolicy<Exec>(0, static_cast<int64_t>(gv.extent(0))),
          KOKKOS_LAMBDA(int64_t i) { gp[i] *= f; });
    }
    const float* g = p.grad.data();
    int64_t n = p.lnumel;
    if (p.zero_split) {
      n = p.shard_numel();
      if (zero == 1) {
        if (p.O > 1) {
          detail::pack_rows(p.grad.data(), p.R, p.r0, grad_pack.data(), p.nr, 0, p.O, p.nr, p.I, DType::F32);
          g = grad_pack.data();
        } else {
          g = p.grad.data() + p.r0 * p.I;
        }
      }  // ZeRO-2/3: p.grad is the shard
    } else if (shard_size > 1 && shard_index != 0) {
      continue;
    }
    if (p.dt < 0 && tc != 0) continue;
    if (!p.expert && ec != 0) continue;
    sq += optim::AdamW<float, Exec>::sum_of_squares(cvec(g, n));
  }
  sq_local = sq;
  sq_total = sq;
}

void Trainer::Impl::update() {
  // f16 dynamic loss scaling: the gradients are loss_scale times the true ones. A step whose
  // global norm is not finite (an overflow anywhere: sq_total is the same on every rank) is
  // skipped and the scale halves; loss_scale_window clean steps double it.
  double sq = sq_total;
  step_skipped = false;
  if (prec == DType::F16) {
    if (!std::isfinite(sq)) {
      step_skipped = true;
      ++skipped_steps;
      scale_clean = 0;
      loss_scale = std::max(1.0, loss_scale / 2);
      grad_norm = std::sqrt(sq);
      return;
    }
    sq /= loss_scale * loss_scale;
  }
  grad_norm = std::sqrt(sq);
  auto st = optim::make_step(opt, completed + 1, sq);
  if (prec == DType::F16) {
    st.grad_scale /= loss_scale;
    if (++scale_clean >= deck.train.loss_scale_window) {
      scale_clean = 0;
      loss_scale *= 2;
    }
  }
  for (auto& p : params) {
    if (!p.here) continue;
    if (p.zero_split && (zero == 1 || zero == 2)) {
      // this rank's rows of the full parameter, in place: O runs of nr·I elements (one run
      // when the ZeRO dim is the first); the gradient is the same rows of the full gradient
      // (ZeRO-1) or the contiguous shard (ZeRO-2), the moments are contiguous shards. The
      // update is elementwise, so runs update bitwise as one packed shard would.
      const int64_t run = p.nr * p.I;
      for (int64_t o = 0; o < p.O; ++o) {
        const int64_t at = (o * p.R + p.r0) * p.I, packed = o * run;
        const float* gg = zero == 1 ? p.grad.data() + at : p.grad.data() + packed;
        optim::AdamW<float, Exec>::update(vec(p.param.data() + at, run), cvec(gg, run), vec(p.m.data() + packed, run),
                                          vec(p.v.data() + packed, run), st, p.decay);
      }
      continue;
    }
    const int64_t n = p.zero_split ? p.shard_numel() : p.lnumel;
    optim::AdamW<float, Exec>::update(vec(p.param.data(), n), cvec(p.grad.data(), n), vec(p.m.data(), n),
                                      vec(p.v.data(), n), st, p.decay);
  }
}

}  // namespace shardflow::train
