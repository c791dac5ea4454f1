// ZeRO and gradient sync: ZeRO-3 gathers of each use's parameters into the gather ring,
// prefetch uses ahead; after a backward use, each parameter's gradient sync (ZeRO-2/3:
// reduce-scatter of the grad ring into the gradient shard per micro-batch, so the full
// gradient is never held; otherwise a data-parallel all-reduce after the last
// micro-batch; HSDP's all-reduce of the shard over the replicas); ZeRO-1/2's parameter
// all-gather after the update.
#include "compile/impl/builder.hpp"

namespace shardflow::compile::detail {

bool StepBuilder::unit_has_sharded(int unit) const {
  for (int pi : s.units[static_cast<size_t>(unit)])
    if (s.params[static_cast<size_t>(pi)].zero_split) return true;
  return false;
}

void StepBuilder::emit_gathers_upto(int upto) {
  const int nslots = s.prefetch + 1;
  for (; next_gather_ <= upto && next_gather_ < static_cast<int>(gather_use_.size()); ++next_gather_) {
    const int g = next_gather_;
    const Use& u = uses_[static_cast<size_t>(gather_use_[static_cast<size_t>(g)])];
    if (!unit_has_sharded(u.unit)) continue;
    const int ring = g % nslots;
    // The previous gather into this ring buffer fetched the same unit (e.g. the last layer's
    // forward, then the head, then its backward): the parameters do not change within a
    // step, so the buffer still holds them. Its tasks preceded that earlier use, which
    // precedes this one; the next gather into the buffer waits for this use as usual.
    if (g >= nslots && uses_[static_cast<size_t>(gather_use_[static_cast<size_t>(g - nslots)])].unit == u.unit) continue;
    for (int pi : s.units[static_cast<size_t>(u.unit)]) {
      const ParamShape& p = s.params[static_cast<size_t>(pi)];
      if (!p.zero_split) continue;
      const int t = emit_comm(
          shard_gather(s.groups.zero, p.O, p.R, p.I, s.gather_dtype, {b.params[static_cast<size_t>(pi)].param},
                       {b.gather_ring[static_cast<size_t>(ring)], p.ring_offset}, p.lnumel,
                       named([&] { return p.name + "@use" + std::to_string(g); })),
          named([&] { return "gather " + p.name + " #" + std::to_string(g); }));
      // the buffer is free once the use that last held it has run
      if (g >= nslots) edge(last_of_use_[static_cast<size_t>(gather_use_[static_cast<size_t>(g - nslots)])], t);
      gathers_of_[static_cast<size_t>(g)].push_back(t);
    }
  }
}

// What use k's first segment waits for besides the chain: its parameters' gathers, and for
// a backward use the reduce-scatters of the use two before it that read its grad-ring ring.
void StepBuilder::emit_use_waits(size_t k, int first_segment) {
  const Use& u = uses_[k];
  if (s.zero < 2) return;
  if (s.zero == 3 && u.gather >= 0)
    for (int g : gathers_of_[static_cast<size_t>(u.gather)]) edge(g, first_segment);
  if (!is_bwd(u.kind)) return;
  for (size_t q = k; q-- > 0;) {
    const Use& w = uses_[q];
    if (is_bwd(w.kind) && w.grad_ring == u.grad_ring) {
      for (int t : grad_comm_of_use_[q]) edge(t, first_segment);
      break;
    }
  }
}

bool StepBuilder::syncs_grad(const Use& u, const ParamShape& p) const {
  if (s.evaluate) return false;
  const bool last_mb = u.mb == s.micro - 1;
  const int pdp_size = p.expert ? s.dpx_size : s.dp_size;
  return p.grad_shard_stored(s.zero) || (p.tensor_partial && last_mb) || (last_mb && pdp_size > 1);
}

bool StepBuilder::syncs_mlp_half(const Use& u) const {
  for (int pi : s.units[static_cast<size_t>(u.unit)]) {
    const ParamShape& p = s.params[static_cast<size_t>(pi)];
    if (p.mlp_half && syncs_grad(u, p)) return true;
  }
  return false;
}

void StepBuilder::emit_grad_sync(size_t k, int last_segment, const std::string& mbs, GradPart part) {
  const Use u = uses_[k];
  const bool acc = u.mb > 0;
  const bool last_mb = u.mb == s.micro - 1;
  const parallel::AxisGroups& g = s.groups;
  for (int pi : s.units[static_cast<size_t>(u.unit)]) {
    const ParamShape& p = s.params[static_cast<size_t>(pi)];
    if (part != GradPart::All && p.mlp_half != (part == GradPart::MlpHalf)) continue;
    if (!syncs_grad(u, p)) continue;  // (the one test of whether anything below is emitted)
    const ParamBuffers& pb = b.params[static_cast<size_t>(pi)];
    int ready = last_segment;
    // expert weights are synchronised over the data-parallel axes other than expert
    const parallel::Axes& pdp = p.expert ? g.batch_dense : g.batch;
    const parallel::Axes& prp = p.expert ? g.replica_dense : g.replica;
    const int pdp_size = p.expert ? s.dpx_size : s.dp_size, prp_size = p.expert ? s.replx_size : s.repl_size;
    // the gradient shard is complete after the reduce-scatter t, and its mean over the
    // replicas of the shard group (HSDP) when there are any
    auto shard_done = [&](int t, int shard) {
      if (prp_size > 1) {
        const int a = emit_comm(all_reduce(prp, {shard}, p.shard_numel(), comm::ReduceOp::Mean, DType::F32,
                                           named([&] { return p.name + ".grad_shard"; })),
                                named([&] { return "all_reduce " + p.name + ".grad_shard"; }));
        edge(t, a);
        grad_sync_.push_back(a);
      } else {
        grad_sync_.push_back(t);
      }
    };
    const bool ring = p.grad_shard_stored(s.zero);
    // sequence parallel: a norm gain's gradient sums over this rank's rows only; a key/value
    // weight replicated over tensor: over this rank's query heads only
    if (p.tensor_partial && (ring || last_mb)) {
      const BufRef grad = ring ? BufRef{b.grad_ring[static_cast<size_t>(u.grad_ring)], p.ring_offset} : BufRef{pb.grad};
      const std::string what = named([&] { return p.name + ".grad_rows" + mbs; });
      ready = emit_comm(all_reduce(g.tensor, grad, p.lnumel, comm::ReduceOp::Sum, DType::F32, what),
                        named([&] { return "all_reduce " + what; }));
      edge(last_segment, ready);
      if (ring)
        grad_comm_of_use_[k].push_back(ready);
      else if (pdp_size == 1)
        grad_sync_.push_back(ready);
    }
    if (ring) {
      const int t =
          emit_comm(shard_scatter(g.zero, p.O, p.R, p.I, s.scatter_dtype,
                                  {b.grad_ring[static_cast<size_t>(u.grad_ring)], p.ring_offset}, {pb.grad}, acc,
                                  comm::ReduceOp::Mean, p.lnumel, named([&] { return p.name + ".grad" + mbs; })),
                    named([&] { return "reduce_scatter " + p.name + mbs; }));
      edge(ready, t);
      // two reduce-scatters into one shard add when they complete: in issue order
      int& prev = last_scatter_[static_cast<size_t>(pi)];
      edge(prev, t);
      prev = t;
      grad_comm_of_use_[k].push_back(t);
      if (last_mb) shard_done(t, pb.grad);
      continue;
    }
    if (!last_mb || pdp_size == 1) continue;
    const int a = emit_comm(
        all_reduce(pdp, {pb.grad}, p.lnumel, comm::ReduceOp::Mean, DType::F32, named([&] { return p.name + ".grad"; })),
        named([&] { return "all_reduce " + p.name + ".grad"; }));
    edge(ready, a);
    grad_sync_.push_back(a);
  }
}

void StepBuilder::emit_zero12_gathers(int update) {
  for (size_t pi = 0; pi < s.params.size(); ++pi) {
    const ParamShape& p = s.params[pi];
    if (!p.zero_split || !p.here) continue;
    const ParamBuffers& pb = b.params[pi];
    // the shard is this rank's rows of the parameter itself (updated in place)
    const BufRef shard{pb.param, p.r0 * p.I};
    const int t = emit_comm(shard_gather(s.groups.zero, p.O, p.R, p.I, DType::F32, shard, {pb.param}, p.lnumel, p.name),
                            "gather " + p.name);
    edge(update, t);
  }
}

}  // namespace shardflow::compile::detail
