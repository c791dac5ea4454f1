// The block program of one use (MODEL.md): compute segments, and between them the region
// transitions of tensor, sequence and expert parallelism, each as its forward/backward
// conjugate pair:
//   tensor       column-parallel in, row-parallel out: the partial sums are all-reduced
//                (forward: attn.out, mlp.down, embedding; backward: the inputs' gradients dn).
//   sequence     the residual stream holds this rank's rows: a norm's rows are all-gathered
//                before the column-parallel block (backward: dx all-gathered before the
//                row-parallel backward), the partial sums reduce-scattered back to rows.
//   expert       dispatch rows to the experts' ranks and return them (all_to_allv, counts
//                first); backward sends dy the same way and dX back.
// Tensor parallelism (Megatron): qkv, gate_up and lm_head hold output rows of the local
// heads / ffn columns / vocabulary slice; attn.out and mlp.down hold the matching input
// columns. The cross-entropy over the vocabulary slices all-reduces the row maxima and
// (Σ exp, target logit).
#include "compile/impl/builder.hpp"
#include "mesh/axes.hpp"

namespace shardflow::compile::detail {

void StepBuilder::run(UseCtx& u, ComputeOp op, const char* part) {
  u.work.push_back(op);
  if (names_) u.work_name += (u.work_name.empty() ? "" : "+") + std::string(part);
}

// Compute is gathered into one segment until a collective needs what it wrote.
void StepBuilder::flush(UseCtx& u) {
  if (u.work.empty()) return;
  const int c = emit_compute(std::move(u.work), named([&] { return u.prefix + u.work_name + u.mbs; }));
  u.work.clear();
  u.work_name.clear();
  chain(c);
  for (int t : *u.pending) edge(t, c);
  u.pending->clear();
  u.segs.push_back(c);
}

// a collective t (already emitted) after the work so far (this use's last segment, else the
// step's last compute task); the next segment waits for it unless next_waits is false
void StepBuilder::comm_then(UseCtx& u, int t, bool next_waits) {
  flush(u);
  if (!u.segs.empty())
    edge(u.segs.back(), t);
  else
    edge(last_, t);
  if (next_waits) u.pending->push_back(t);
}

void StepBuilder::tp_all_reduce(UseCtx& u, BufRef buf, int64_t n, comm::ReduceOp op, DType dt,
                                const std::string& what) {
  const std::string w = named([&] { return what + u.mbs; });
  comm_then(u, emit_comm(all_reduce(s.groups.tensor, buf, n, op, dt, w), named([&] { return "all_reduce " + w; })));
}

int StepBuilder::tp_all_gather(UseCtx& u, BufRef rows, BufRef full, const std::string& what, bool next_waits) {
  const std::string w = named([&] { return what + u.mbs; });
  const int64_t T = s.tokens_mb, H = s.hidden;
  const int t = emit_comm(shard_gather(s.groups.tensor, 1, T, H, s.act_comm_dtype, rows, full, T * H, w),
                          named([&] { return "all_gather " + w; }));
  comm_then(u, t, next_waits);
  return t;
}

void StepBuilder::tp_reduce_scatter(UseCtx& u, BufRef full, BufRef rows, const std::string& what) {
  const std::string w = named([&] { return what + u.mbs; });
  const int64_t T = s.tokens_mb, H = s.hidden;
  comm_then(u, emit_comm(shard_scatter(s.groups.tensor, 1, T, H, s.act_comm_dtype, full, rows, false,
                                       comm::ReduceOp::Sum, T * H, w),
                         named([&] { return "reduce_scatter " + w; })));
}

// the partial sums of a row-parallel block: all-reduced, or reduce-scattered to this rank's
// rows under sequence parallelism
void StepBuilder::tp_sum(UseCtx& u, int full, int rows, const std::string& what) {
  if (s.sp)
    tp_reduce_scatter(u, {full}, {rows}, what);
  else if (s.tp > 1)
    tp_all_reduce(u, {full}, s.tokens_mb * s.hidden, comm::ReduceOp::Sum, s.act_comm_dtype, what);
}

// sequence parallel: the whole dx before a row-parallel backward
void StepBuilder::dx_gather(UseCtx& u, int xsl, const std::string& what) {
  if (s.sp) tp_all_gather(u, {b.dx[static_cast<size_t>(xsl)]}, {b.dx_full}, what);
}

void StepBuilder::ep_counts(UseCtx& u, int layer, int xsl, const std::string& what) {
  CommOp c;
  c.kind = comm::CollectiveKind::AllToAll;
  c.axes = s.groups.expert;
  const std::string w = named([&] { return what + u.mbs; });
  c.desc = {parallel::group_key(c.axes), "all_to_all", w, s.experts, "i32"};
  c.dtype = DType::I32;
  c.count = s.experts;
  c.moe_layer = layer;
  c.moe_slot = xsl;
  comm_then(u, emit_comm(std::move(c), named([&] { return "all_to_all " + w; })));
}

// rows of the dispatch order to the experts (out) or back (!out)
void StepBuilder::ep_rows(UseCtx& u, int layer, int xsl, bool out, int src, int dst, const std::string& what) {
  CommOp c;
  c.kind = comm::CollectiveKind::AllToAllv;
  c.axes = s.groups.expert;
  const std::string w = named([&] { return what + u.mbs; });
  c.desc = {parallel::group_key(c.axes), "all_to_allv", w, s.tokens_mb * s.top_k * s.hidden, "f32"};
  c.src = {src};
  c.dst = {dst};
  c.count = s.tokens_mb * s.top_k * s.hidden;
  c.moe_layer = layer;
  c.moe_slot = xsl;
  c.moe_out = out;
  comm_then(u, emit_comm(std::move(c), named([&] { return "all_to_allv " + w; })));
}

// ---- context parallelism: ring attention ------------------------------------------------------
// The key/value blocks travel to the next context rank (cc + 1) and arrive from the previous
// one, as compiled send/recv tasks on the `context` communicator. Two buffers alternate:
// step r computes on kv_ring[r % 2] while the block of step r + 1 arrives in the other one.
// A receive waits until the compute and the send that last read its buffer are done.

int StepBuilder::ring_message(bool send, int buf, const std::string& what) {
  CommOp c;
  c.kind = send ? comm::CollectiveKind::Send : comm::CollectiveKind::Recv;
  c.axes = s.groups.context;
  c.peer = send ? (s.cc + 1) % s.cp : (s.cc + s.cp - 1) % s.cp;
  c.count = s.tokens_mb * 2 * s.K_l * s.head_dim;
  c.desc = {parallel::group_key(c.axes), send ? "send" : "recv", what, c.count, "f32", c.peer};
  (send ? c.src : c.dst) = {buf};
  return emit_comm(std::move(c), named([&] { return std::string(send ? "send " : "recv ") + what; }));
}

// which of kv_ring[0..1], dkv_ring[0..1], dkv_home a buffer is (for ring_reader_)
namespace {
int ring_slot(const BufferPlan& b, int buf) {
  const int ids[5] = {b.kv_ring[0], b.kv_ring[1], b.dkv_ring[0], b.dkv_ring[1], b.dkv_home};
  for (int i = 0; i < 5; ++i)
    if (ids[i] == buf) return i;
  return 5;
}
}  // namespace

// One ring message: `from` to the next context rank once `ready` is done, and from the
// previous one into `into` once `prev` (the compute that last read it) and the last send of
// it are done. Returns the receive.
int StepBuilder::ring_pass(int from, int into, int ready, int prev, const std::string& what) {
  const int send = ring_message(true, from, what);
  edge(ready, send);
  const int recv = ring_message(false, into, what);
  edge(prev, recv);
  edge(ring_reader_[ring_slot(b, into)], recv);
  ring_reader_[ring_slot(b, from)] = send;
  return recv;
}

void StepBuilder::ring_forward(UseCtx& u, const std::function<ComputeOp(int)>& step_op, const std::string& what) {
  // the qkv segment writes this rank's own block into kv_ring[0]: not before the last send
  // that reads it (an earlier layer's or micro-batch's) has completed
  const int reader = ring_reader_[ring_slot(b, b.kv_ring[0])];
  if (reader != kNone) u.pending->push_back(reader);
  flush(u);
  int have = u.segs.back();  // the task after which step r's block is in its buffer
  int prev = have;           // the compute before step r
  for (int r = 0; r < s.cp; ++r) {
    const int cur = b.kv_ring[r % 2], nxt = b.kv_ring[(r + 1) % 2];
    int recv = kNone;
    if (r + 1 < s.cp) {
      recv = ring_pass(cur, nxt, have, prev, what + ".kv" + std::to_string(r + 1) + u.mbs);
    }
    const int c =
        emit_compute({step_op(r)}, named([&] { return u.prefix + what + ".ring" + std::to_string(r) + u.mbs; }));
    chain(c);
    edge(have, c);
    u.segs.push_back(c);
    prev = c;
    have = recv;
  }
}

void StepBuilder::ring_backward(UseCtx& u, const std::function<ComputeOp(int)>& step_op, const std::string& what) {
  // this segment writes the own block into kv_ring[0] and zeroes dkv_ring[0]: after the last
  // sends that read them
  for (int buf : {b.kv_ring[0], b.dkv_ring[0]}) {
    const int reader = ring_reader_[ring_slot(b, buf)];
    if (reader != kNone) u.pending->push_back(reader);
  }
  flush(u);
  int have_kv = u.segs.back(), have_dkv = have_kv, prev = have_kv;
  for (int r = 0; r < s.cp; ++r) {
    const int kcur = b.kv_ring[r % 2], knxt = b.kv_ring[(r + 1) % 2];
    const int dcur = b.dkv_ring[r % 2], dnxt = r + 1 < s.cp ? b.dkv_ring[(r + 1) % 2] : b.dkv_home;
    int kv_recv = kNone;
    if (r + 1 < s.cp) {  // the next block's keys and values, while this one computes
      kv_recv = ring_pass(kcur, knxt, have_kv, prev, what + ".kv" + std::to_string(r + 1) + u.mbs);
    }
    const int c =
        emit_compute({step_op(r)}, named([&] { return u.prefix + what + ".ring_bwd" + std::to_string(r) + u.mbs; }));
    chain(c);
    edge(have_kv, c);
    edge(have_dkv, c);
    u.segs.push_back(c);
    // the block's gradient so far goes on with the block (after the last step: home)
    const int recv = ring_pass(dcur, dnxt, c, prev, what + ".dkv" + std::to_string(r + 1) + u.mbs);
    prev = c;
    have_kv = kv_recv;
    have_dkv = recv;
  }
  u.pending->push_back(have_dkv);  // the next segment reads dkv_home
}

void StepBuilder::emit_use_compute(UseCtx& u, const Use& use, int xsl) {
  const int j = use.mb;
  const int ring = use.gather >= 0 ? use.gather % (s.prefetch + 1) : 0;
  const int gs = use.grad_ring;
  const bool acc = j > 0;
  const int64_t T = s.tokens_mb, H = s.hidden;
  const bool tp = s.tp > 1, ep = s.ep > 1;
  auto op = [&](StepOp o, int layer = -1) {
    ComputeOp c{o};
    c.layer = layer;
    c.mb = j;
    c.act_slot = xsl;
    c.ring = ring;
    c.grad_ring = gs;
    c.acc = acc;
    return c;
  };
  const int l = use.unit - 1;
  const std::string lp = named([&] { return "layers." + std::to_string(l); });
  // A layer's forward from its attention norm to its MLP norm; `again`: its re-run from the
  // kept input under full recomputation (the same ops and collectives, named apart).
  auto attention_to_mlp_norm = [&](bool again) {
    const ActBuffers& a = act(l, xsl);
    const std::string cp = again ? lp + ".recompute" : lp;
    ComputeOp norm1 = op(StepOp::AttnNorm, l);
    norm1.recompute = again;
    run(u, norm1, again ? "recompute.attn_norm" : "attn_norm");
    if (s.sp) tp_all_gather(u, {a.n1_rows}, {a.n1}, cp + ".attn_norm.out");
    run(u, op(StepOp::Attn, l), again ? "recompute.attn" : "attn");
    if (s.cp > 1) {
      ring_forward(
          u,
          [&](int r) {
            ComputeOp c = op(StepOp::AttnRing, l);
            c.step = r;
            return c;
          },
          cp + ".attn");
      run(u, op(StepOp::AttnOut, l), again ? "recompute.attn_out" : "attn_out");
    }
    tp_sum(u, b.y, b.y_rows, cp + ".attn.out");
    run(u, op(StepOp::MlpNorm, l), again ? "recompute.mlp_norm" : "mlp_norm");
    if (s.sp) tp_all_gather(u, {a.n2_rows}, {a.n2}, cp + ".mlp_norm.out");
  };
  switch (use.kind) {
    case Fe:
      run(u, op(StepOp::Embed), "embed");
      if (s.sp) {  // the positions joined the partial sums on tensor rank 0
        tp_reduce_scatter(u, {b.y}, {b.x[static_cast<size_t>(xsl)]}, "embed");
      } else {
        if (tp) tp_all_reduce(u, {b.x[static_cast<size_t>(xsl)]}, T * H, comm::ReduceOp::Sum, s.act_comm_dtype, "embed");
        if (!s.llama) run(u, op(StepOp::PosEmbed), "pos_embed");  // llama: RoPE, in attention
      }
      break;
    case Fl: {
      attention_to_mlp_norm(false);
      if (s.moe_layer(l)) {
        const MoeBuffers& m = moe(l, xsl);
        run(u, op(StepOp::MoeRoute, l), "route");
        if (ep) {
          ep_counts(u, l, xsl, lp + ".experts.counts");
          run(u, op(StepOp::MoePlan, l), "plan");
          ep_rows(u, l, xsl, true, m.x_send, m.x_recv, lp + ".experts.dispatch");
        }
        run(u, op(StepOp::MoeExperts, l), "experts");
        if (ep) ep_rows(u, l, xsl, false, m.y_recv, m.y_send, lp + ".experts.return");
        run(u, op(StepOp::MoeCombine, l), "combine");
        tp_sum(u, b.y, b.y_rows, lp + ".experts.out");
      } else {
        run(u, op(StepOp::Mlp, l), "mlp");
        tp_sum(u, b.y, b.y_rows, lp + ".mlp.down");
      }
      run(u, op(StepOp::Residual, l), "residual");
      break;
    }
    case Hd:
      run(u, op(StepOp::FinalNorm), "final_norm");
      if (s.sp) tp_all_gather(u, {b.nf, s.t0 * H}, {b.nf}, "final_norm.out");
      run(u, op(StepOp::Logits), "logits");
      if (tp) tp_all_reduce(u, {b.row_max}, T, comm::ReduceOp::Max, DType::F32, "loss.row_max");
      run(u, op(StepOp::SumExp), "sumexp");
      if (tp) tp_all_reduce(u, {b.stats}, 2 * T, comm::ReduceOp::Sum, DType::F32, "loss.stats");
      if (s.evaluate) {
        run(u, op(StepOp::LossValue), "loss");
        break;
      }
      run(u, op(StepOp::Loss), "loss");
      tp_sum(u, b.dn, b.dn_rows, "lm_head.dx");
      run(u, op(StepOp::FinalNormBwd), "final_norm_bwd");
      break;
    case Bl: {
      if (s.recompute == Recompute::Full && !s.moe_layer(l)) {
        // full recomputation: the layer's forward again, from its kept input, into the
        // scratch activations its backward reads; the row-parallel sums the backward needs
        // (attn.out, for the mlp norm) are summed again, mlp.down's (the layer's output) is not
        attention_to_mlp_norm(true);
        run(u, op(StepOp::Mlp, l), "recompute.mlp");
      }
      dx_gather(u, xsl, lp + ".dx");
      // sequence parallel: the norm outputs again, from the kept rows (full recomputation of a
      // dense layer has just gathered them). n2 first, for the MLP's weight gradients; n1's
      // gather overlaps the MLP backward, and only the attention backward waits for it.
      int n1_again = kNone;
      if (s.sp && !(s.recompute == Recompute::Full && !s.moe_layer(l))) {
        const ActBuffers& a = act(l, xsl);
        tp_all_gather(u, {a.n2_rows}, {a.n2}, lp + ".mlp_norm.out.again");
        n1_again = tp_all_gather(u, {a.n1_rows}, {a.n1}, lp + ".attn_norm.out.again", false);
      }
      if (s.moe_layer(l)) {
        const MoeBuffers& m = moe(l, xsl);
        run(u, op(StepOp::MoeCombineBwd, l), "combine");
        if (tp) tp_all_reduce(u, {b.moe_dgate}, T * s.top_k, comm::ReduceOp::Sum, DType::F32, lp + ".experts.dgate");
        if (ep) ep_rows(u, l, xsl, true, m.y_send, m.y_recv, lp + ".experts.dy");
        run(u, op(StepOp::MoeExpertsBwd, l), "experts");
        if (ep) ep_rows(u, l, xsl, false, m.y_recv, m.x_send, lp + ".experts.dx");
        run(u, op(StepOp::MoeRouterBwd, l), "router");
      } else {
        run(u, op(StepOp::MlpBwd, l), "mlp");
      }
      tp_sum(u, b.dn, b.dn_rows, lp + ".mlp_norm.dout");
      run(u, op(StepOp::MlpNormBwd, l), "mlp_norm");
      // the MLP half's gradients are final: their sync overlaps the attention backward (and
      // progresses at its task boundaries) instead of waiting for the whole layer
      if (syncs_mlp_half(use)) {
        flush(u);
        emit_grad_sync(u.use, u.segs.back(), u.mbs, GradPart::MlpHalf);
        u.mlp_synced = true;
      }
      dx_gather(u, xsl, lp + ".mlp.dx");
      if (n1_again != kNone) u.pending->push_back(n1_again);
      if (s.recompute == Recompute::Selective && s.cp == 1) run(u, op(StepOp::AttnCore, l), "recompute.attn_core");
      run(u, op(StepOp::AttnBwd, l), "attn");
      if (s.cp > 1) {
        ring_backward(
            u,
            [&](int r) {
              ComputeOp c = op(StepOp::AttnRingBwd, l);
              c.step = r;
              return c;
            },
            lp + ".attn");
        run(u, op(StepOp::AttnQkvBwd, l), "attn_qkv");
      }
      tp_sum(u, b.dn, b.dn_rows, lp + ".attn_norm.dout");
      run(u, op(StepOp::AttnNormBwd, l), "attn_norm");
      break;
    }
    case Be:
      dx_gather(u, xsl, "embed.dx");
      run(u, op(StepOp::EmbedBwd), "embed");
      break;
  }
}

}  // namespace shardflow::compile::detail
