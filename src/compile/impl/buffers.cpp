// The buffer plan of a rank's step: every array the trainer allocates, with its size and
// class, decided from the StepShape alone (so `shardflow compile` counts what `train` holds).
#include <algorithm>

#include "compile/step_program.hpp"
#include "core/error.hpp"

namespace shardflow::compile {

const char* buffer_class_name(BufferClass c) {
  switch (c) {
    case BufferClass::Params: return "params";
    case BufferClass::Grads: return "grads";
    case BufferClass::Optimizer: return "optimizer";
    case BufferClass::Transient: return "transient";
    case BufferClass::Activations: return "activations";
    case BufferClass::Inputs: return "inputs";
    case BufferClass::Scalars: return "scalars";
  }
  return "?";
}

int64_t BufferSpec::bytes() const { return numel * static_cast<int64_t>(dtype_size(dtype)); }

int BufferPlan::add(std::string name, int64_t numel, DType dtype, BufferClass cls) {
  specs.push_back({std::move(name), numel, dtype, cls});
  return static_cast<int>(specs.size()) - 1;
}

namespace {

void plan_params(const StepShape& s, BufferPlan& b) {
  const int zero = s.zero;
  int64_t pack = 0;
  for (const auto& p : s.params) {
    ParamBuffers pb;
    if (p.here) {
      const std::string& nm = p.name;
      const int64_t local = p.shard_stored(zero) ? p.shard_numel() : p.lnumel;
      pb.param = b.add(nm, local, DType::F32, BufferClass::Params);
      pb.grad = b.add(nm + ".grad", p.grad_shard_stored(zero) ? p.shard_numel() : p.lnumel, DType::F32,
                      BufferClass::Grads);
      const int64_t opt_n = p.zero_split ? p.shard_numel() : p.lnumel;
      pb.adam_m = b.add(nm + ".adam_m", opt_n, DType::F32, BufferClass::Optimizer);
      pb.adam_v = b.add(nm + ".adam_v", opt_n, DType::F32, BufferClass::Optimizer);
      // ZeRO-1/2 update their rows of the full parameter in place (a shard that is not
      // contiguous, dims before the ZeRO dim, runs by run) and gather from there
      if (p.zero_split && zero == 1 && p.O > 1) pack = std::max(pack, p.shard_numel());
    }
    b.params.push_back(pb);
  }
  if (pack > 0) b.grad_pack = b.add("grad_shard_pack", pack, DType::F32, BufferClass::Transient);
  if (zero >= 2) {
    const int64_t n = std::max<int64_t>(1, s.ring_numel);
    if (zero == 3)
      for (int r = 0; r <= s.prefetch; ++r)
        b.gather_ring.push_back(b.add("param_ring." + std::to_string(r), n, DType::F32, BufferClass::Transient));
    // ZeRO-2 and 3: the backward of a unit writes its full gradients here, and their
    // reduce-scatters add them into the gradient shards (two units in flight)
    for (int r = 0; r < 2; ++r)
      b.grad_ring.push_back(b.add("grad_ring." + std::to_string(r), n, DType::F32, BufferClass::Transient));
  }
}

void plan_acts(const StepShape& s, BufferPlan& b) {
  const int64_t T = s.tokens_mb, H = s.hidden, S = s.seq, Tr = s.Tr;
  auto act = [&](const char* n, int64_t c) { return b.add(n, c, DType::F32, BufferClass::Activations); };
  std::vector<std::pair<int, int>> local;  // (global layer, virtual stage) in local-layer order
  for (int vc = 0; vc < s.vstages; ++vc)
    for (int l = s.chunks[static_cast<size_t>(vc)].layer_begin; l < s.chunks[static_cast<size_t>(vc)].layer_end; ++l)
      local.emplace_back(l, vc);
  auto in_chunk = [&](int vc, int k) {
    const ChunkShape& c = s.chunks[static_cast<size_t>(vc)];
    return k >= c.slot_base && k < c.slot_base + c.slots;
  };
  // Full recomputation: a dense layer keeps only its input per act slot; everything else
  // lives in one scratch set that every dense layer's forward and re-run forward write and
  // its backward reads. Compute tasks run in emission order (one chain), and a layer's re-run
  // forward is emitted right before its backward, so no other layer writes the scratch in
  // between.
  ActBuffers scratch;
  // Selective recomputation: the attention probabilities (the largest activation, b·A·S² a
  // layer) are one buffer for all layers, recomputed before each attention backward.
  // Mixed precision: what a layer keeps per act slot for its backward (qkv, probs, att, gu,
  // h) is stored in the 16-bit type; its kernels compute in the f32 work set below and
  // round into it. The residual stream, the norm outputs (n1, n2: all-gathered under sp) and
  // the recomputation scratch stay f32 (their values are rounded where they feed a matmul).
  bool any16 = false;
  auto kept = [&](const char* n, int64_t c, bool per_slot) {
    if (s.precision == DType::F32 || !per_slot) return act(n, c);
    any16 = true;
    return b.add(n, c, s.precision, BufferClass::Activations);
  };
  // Context parallel: no probabilities are kept (the ring backward recomputes them from the
  // rows' log-sum-exp, which is kept instead).
  const bool ring = s.cp > 1;
  const int64_t stats = s.mb_seqs * s.A_l * s.seq_local;  // one value per (sequence, head, row)
  // Sequence parallel: a layer keeps the rows of its norm outputs that this rank made; the
  // all-gathered n1 and n2 are one pair of buffers for every layer and slot, filled right
  // before each reader (the forward's matmul, the backward's weight gradients).
  int sp_n1 = -1, sp_n2 = -1;
  auto norm_out = [&](const char* full, const char* rows, int& shared, int& kept_rows) {
    if (!s.sp) return act(full, T * H);
    if (shared < 0) shared = act(full, T * H);
    kept_rows = act(rows, Tr * H);
    return shared;
  };
  auto fill = [&](ActBuffers& a, bool own_probs, bool per_slot) {
    a.n1 = norm_out("n1", "n1_rows", sp_n1, a.n1_rows);
    a.rstd1 = act("rstd1", Tr);
    a.qkv = kept("qkv", T * s.qkv_cols(), per_slot);
    if (ring) {
      a.lse = act("lse", stats);
    } else if (own_probs) {
      a.probs = kept("probs", s.mb_seqs * s.A_l * S * S, per_slot);
    } else {
      if (scratch.probs < 0) scratch.probs = act("probs", s.mb_seqs * s.A_l * S * S);
      a.probs = scratch.probs;
    }
    a.att = kept("att", T * s.H_l, per_slot);
    a.x_mid = act("x_mid", Tr * H);
    a.n2 = norm_out("n2", "n2_rows", sp_n2, a.n2_rows);
    a.rstd2 = act("rstd2", Tr);
    a.gu = kept("gu", T * 2 * s.F_l, per_slot);
    a.h = kept("h", T * s.F_l, per_slot);
  };
  for (const auto& [l, vc] : local) {
    std::vector<ActBuffers> per(static_cast<size_t>(s.total_slots));
    const bool dense = !s.moe_layer(l);
    const bool shared = s.recompute == Recompute::Full && dense;
    for (int k = 0; k < s.total_slots; ++k) {
      if (!in_chunk(vc, k)) continue;
      ActBuffers& a = per[static_cast<size_t>(k)];
      if (shared) {
        if (scratch.n1 < 0) fill(scratch, true, false);
        a = scratch;
        a.x_in = act("x_in", Tr * H);
      } else {  // the order of the buffers without recomputation, as before it existed
        a.x_in = act("x_in", Tr * H);
        fill(a, s.recompute != Recompute::Selective, true);
      }
    }
    b.acts.push_back(std::move(per));
  }
  for (const auto& [l, vc] : local) {
    std::vector<MoeBuffers> per;
    if (s.moe_layer(l)) {
      const int64_t k = s.top_k, E = s.experts, N = T * k, Nmax = s.ep * N, F = s.F_l;
      per.resize(static_cast<size_t>(s.total_slots));
      for (int q = 0; q < s.total_slots; ++q) {
        if (!in_chunk(vc, q)) continue;
        MoeBuffers& m = per[static_cast<size_t>(q)];
        m.logits = act("router_logits", T * E);
        m.gate = act("gates", N);
        m.choice_row = b.add("moe_slot", N, DType::I64, BufferClass::Activations);
        m.x_send = act("moe_x_send", N * H);
        if (s.ep > 1) {
          m.x_recv = act("moe_x_recv", Nmax * H);
          m.y_recv = act("moe_y_recv", Nmax * H);
          m.y_send = act("moe_y_send", N * H);
        } else {  // one rank: the dispatch buffers are the experts' own
          m.x_recv = m.x_send;
          m.y_recv = act("moe_y", N * H);
          m.y_send = m.y_recv;
        }
        m.gu = act("moe_gu", Nmax * 2 * F);
        m.h = act("moe_h", Nmax * F);
      }
      if (b.moe_dgate < 0) {
        b.moe_dgate = act("moe_dgate", N);
        b.moe_dh = act("moe_dh", Nmax * F);
        b.moe_dgu = act("moe_dgu", Nmax * 2 * F);
        b.moe_dlogits = act("moe_dlogits", T * E);
      }
    }
    b.moes.push_back(std::move(per));
  }
  for (int vc = 0; vc < s.vstages; ++vc) {
    const ChunkShape& c = s.chunks[static_cast<size_t>(vc)];
    for (int k = 0; k < c.slots; ++k) {
      b.x.push_back(act("x", Tr * H));
      b.dx.push_back(act("dx", Tr * H));
      if (s.act_comm_dtype == DType::F32) {
        b.x_recv.push_back(c.gc > 0 ? act("x_recv", Tr * H) : -1);
        b.dx_recv.push_back(c.gc < s.nchunks - 1 ? act("dx_recv", Tr * H) : -1);
        continue;
      }
      // a 16-bit wire: x and dx travel through rings of that dtype on both sides
      auto wire = [&](const char* n, bool used) {
        return used ? b.add(n, Tr * H, s.act_comm_dtype, BufferClass::Activations) : -1;
      };
      b.x_recv.push_back(wire("x_recv", c.gc > 0));
      b.dx_recv.push_back(wire("dx_recv", c.gc < s.nchunks - 1));
      b.x_send.push_back(wire("x_send", c.gc < s.nchunks - 1));
      b.dx_send.push_back(wire("dx_send", c.gc > 0 && !s.evaluate));
    }
  }
  if (s.sp) {
    b.y_rows = act("y_rows", Tr * H);
    b.dn_rows = act("dn_rows", Tr * H);
    b.dx_full = act("dx_full", T * H);
  }
  b.y = act("y", T * H);
  b.dn = act("dn", T * H);
  b.dh = act("dh", T * s.F_l);
  b.dgu = act("dgu", T * 2 * s.F_l);
  b.datt = act("datt", T * s.H_l);
  b.dqkv = act("dqkv", T * s.qkv_cols());
  if (ring) {
    const int64_t kv = T * 2 * s.K_l * s.head_dim, C = s.seq_local / 2;
    for (int i = 0; i < 2; ++i) {
      b.kv_ring[i] = act("kv_ring", kv);
      b.dkv_ring[i] = act("dkv_ring", kv);
    }
    b.dkv_home = act("dkv_home", kv);
    b.ring_m = act("ring_max", stats);
    b.ring_l = act("ring_sum", stats);
    b.ring_dvec = act("ring_dvec", stats);
    b.ring_scratch = act("ring_scratch", 2 * C * C);
  } else {
    b.dprobs = act("dprobs", S * S);
  }
  if (any16) {  // the f32 work set of the 16-bit kept activations
    b.work.qkv = act("qkv_work", T * s.qkv_cols());
    if (!ring) b.work.probs = act("probs_work", s.mb_seqs * s.A_l * S * S);
    b.work.att = act("att_work", T * s.H_l);
    b.work.gu = act("gu_work", T * 2 * s.F_l);
    b.work.h = act("h_work", T * s.F_l);
  }
  if (s.precision != DType::F32) {
    // a matmul's weight operand rounded to 16 bits, one weight at a time: a ZeRO-3 weight is
    // rounded in its gather ring (a copy the step discards), any other one into this buffer
    int64_t w = 0;
    for (const auto& p : s.params)
      if (p.here && !p.shard_stored(s.zero)) w = std::max(w, p.lnumel);
    if (w > 0) b.w16 = b.add("weight_16bit", w, DType::F32, BufferClass::Transient);
  }
  if (s.llama) b.rope = act("rope_table", S * s.head_dim);  // cos | sin per position
  if (s.last_stage) {
    b.nf = act("nf", T * H);
    b.rstdf = act("rstdf", Tr);
    b.logits = act("logits", T * s.V_l);
    b.row_max = act("row_max", T);
    b.stats = act("stats", T * 2);
  }
  for (int64_t j = 0; j < s.micro; ++j) {
    b.inputs.push_back(b.add("inputs", T, DType::I32, BufferClass::Inputs));
    b.targets.push_back(b.add("targets", T, DType::I32, BufferClass::Inputs));
  }
  b.loss_local = b.add("loss_sums", 3, DType::F64, BufferClass::Scalars);
  b.loss_global = b.add("loss_sums_global", 3, DType::F64, BufferClass::Scalars);
  b.norm_local = b.add("grad_norm_sq", 1, DType::F64, BufferClass::Scalars);
  b.norm_total = b.add("grad_norm_sq_global", 1, DType::F64, BufferClass::Scalars);
}

}  // namespace

BufferPlan plan_buffers(const StepShape& s) {
  BufferPlan b;
  // (generously: four per parameter of the stage, up to 16 per local layer and act slot, the
  // rings and the inputs; growing the list moves every buffer made so far)
  size_t here = 0, layers = 0;
  for (const auto& p : s.params) here += p.here ? 1 : 0;
  for (int l : s.local_layer) layers += l >= 0 ? 1 : 0;
  const auto slots = static_cast<size_t>(std::max(1, s.total_slots));
  b.specs.reserve(4 * here + 16 * layers * slots + 8 * slots + 2 * static_cast<size_t>(s.micro) + 64);
  plan_params(s, b);
  plan_acts(s, b);
  return b;
}

}  // namespace shardflow::compile
