// The step compiler's driver: the uses of the schedule, each group's tasks in order, and the
// end of the step (loss sum, gradient norm, AdamW). Emission primitives and the collective
// descriptors every emitter uses are here too.
#include <algorithm>
#include <map>

#include "compile/compiler.hpp"
#include "compile/impl/builder.hpp"
#include "core/error.hpp"
#include "mesh/axes.hpp"

namespace shardflow::compile {

int64_t CommOp::tensor_bytes() const {
  return desc.count * static_cast<int64_t>(dtype_size(kind == comm::CollectiveKind::AllToAll ? DType::I32 : dtype));
}

parallel::LayoutPlan layout_plan(const Deck& deck, const MeshShape& mesh) {
  return parallel::LayoutPlan(ModelDescription(deck.model), mesh, strategy_options(deck),
                              deck.strategy.virtual_stages);
}

StepProgram compile_step(const Deck& deck, const parallel::LayoutPlan& plan, int rank, StepMode mode,
                         CompileOptions options) {
  StepProgram prog;
  prog.shape = make_step_shape(deck, plan, rank, mode, options.params, options.mb_group);
  prog.buffers = plan_buffers(prog.shape);
  detail::StepBuilder(prog, options.names).build();
  pool_staging(prog);
  return prog;
}

int64_t StepProgram::staging_total() const {
  int64_t t = 0;
  for (int64_t b : staging_slots) t += b;
  return t;
}

// One staging buffer per (communicator, all-gather or reduce-scatter): the staged shard
// collectives of a pool are chained in emission order (the previous one completes before the
// next starts). Edges run forward in emission order and each communicator's collectives are
// issued in that order on every rank, so the step stays acyclic and deadlock-free.
void pool_staging(StepProgram& prog) {
  // (communicator key, kind) -> (last task, slot); a handful of pools, searched in order
  std::vector<std::pair<std::pair<std::string, int>, std::pair<int, int>>> pools;
  for (int i = 0; i < static_cast<int>(prog.tasks.size()); ++i) {
    CommOp& c = prog.tasks[static_cast<size_t>(i)].comm;
    if (!prog.tasks[static_cast<size_t>(i)].is_comm || c.staging_bytes == 0) continue;
    SHARDFLOW_REQUIRE(c.kind == comm::CollectiveKind::AllGather || c.kind == comm::CollectiveKind::ReduceScatter ||
                          c.kind == comm::CollectiveKind::AllReduce,
                      "step compiler: only shard collectives and cast all-reduces stage, not task ", i);
    // (desc.comm is parallel::group_key(c.axes), made with the operation)
    auto it = std::find_if(pools.begin(), pools.end(), [&](const auto& pl) {
      return pl.first.second == static_cast<int>(c.kind) && pl.first.first == c.desc.comm;
    });
    if (it == pools.end()) {
      pools.push_back({{c.desc.comm, static_cast<int>(c.kind)}, {i, static_cast<int>(prog.staging_slots.size())}});
      it = pools.end() - 1;
      prog.staging_slots.push_back(0);
    } else {
      prog.edges.emplace_back(it->second.first, i);
      it->second.first = i;
    }
    c.staging_slot = it->second.second;
    int64_t& slot = prog.staging_slots[static_cast<size_t>(c.staging_slot)];
    slot = std::max(slot, c.staging_bytes);
  }
}

namespace detail {

namespace {
// the pack/cast buffers of a shard all-gather or reduce-scatter over n ranks
// (train/impl/shard_collectives.hpp): none when the f32 data can move in place
int64_t shard_staging(int64_t outer, int64_t rows, int64_t inner, DType dt, int64_t n, bool in_place) {
  if (in_place) return 0;
  const int64_t block = outer * ((rows + n - 1) / n) * inner;
  return block * (n + 1) * static_cast<int64_t>(dtype_size(dt));
}
}  // namespace

// (each task made in place at the end of the list: a TaskSpec is a few hundred bytes)
int StepBuilder::emit_compute(std::vector<ComputeOp> ops, std::string name) {
  TaskSpec& t = prog_.tasks.emplace_back();
  if (names_) t.name = std::move(name);  // (the hot paths make none: named())
  t.ops = std::move(ops);
  t.group = group_;
  return static_cast<int>(prog_.tasks.size()) - 1;
}

int StepBuilder::emit_comm(CommOp op, std::string name) {
  SHARDFLOW_REQUIRE(!op.axes.empty(), "step compiler: collective '", name, "' has no communicator axes");
  TaskSpec& t = prog_.tasks.emplace_back();
  if (names_) t.name = std::move(name);
  t.is_comm = true;
  t.group = group_;
  t.comm = std::move(op);
  if (!names_) t.comm.desc.tensor.clear();
  return static_cast<int>(prog_.tasks.size()) - 1;
}

CommOp StepBuilder::all_reduce(const parallel::Axes& axes, BufRef buf, int64_t n, comm::ReduceOp op, DType dt,
                               const std::string& what, BufRef out) {
  CommOp c;
  c.kind = comm::CollectiveKind::AllReduce;
  c.axes = axes;
  c.desc = {parallel::group_key(axes), "all_reduce", what, n, dtype_name(dt)};
  c.op = op;
  c.dtype = dt;
  c.src = buf;
  c.dst = out.valid() ? out : buf;
  c.count = n;
  // f32 and f64 reduce in place; a 16-bit wire (of f32 data) casts into staging, reduces
  // there and casts back
  if (dt == DType::BF16 || dt == DType::F16) c.staging_bytes = n * static_cast<int64_t>(dtype_size(dt));
  return c;
}

// A shard all-gather (shard -> full) or reduce-scatter (full -> shard) of a tensor seen as
// [outer, rows, inner] split on rows over `axes` (train/impl/shard_collectives.hpp); the f32
// data moves in place when n divides rows, outer is 1 and the buffers neither alias (gather)
// nor accumulate (scatter), else through staging buffers.
CommOp StepBuilder::shard_collective(comm::CollectiveKind kind, const parallel::Axes& axes, int64_t outer,
                                     int64_t rows, int64_t inner, DType dt, BufRef src, BufRef dst, bool accumulate,
                                     comm::ReduceOp op, int64_t count, const std::string& what) {
  const bool gather = kind == comm::CollectiveKind::AllGather;
  CommOp c;
  c.kind = kind;
  c.axes = axes;
  c.desc = {parallel::group_key(axes), gather ? "all_gather" : "reduce_scatter", what, count, dtype_name(dt)};
  c.op = op;
  c.dtype = dt;
  c.src = src;
  c.dst = dst;
  c.outer = outer;
  c.rows = rows;
  c.inner = inner;
  c.accumulate = accumulate;
  const int64_t n = s.mesh.group_size(axes);
  const bool blocked = gather ? src.buf == dst.buf : accumulate;
  c.staging_bytes = shard_staging(outer, rows, inner, dt, n, dt == DType::F32 && rows % n == 0 && outer == 1 && !blocked);
  return c;
}

// The uses of parameters, in timeline order: F = [Fe] Fl.. [Hd], B = Bl.. [Be]. Every use
// but Be gathers (ZeRO-3); backward uses alternate between the two grad-ring slots.
void StepBuilder::plan_uses() {
  const int L = s.layers;
  for (const auto& g : s.order) {
    const size_t first = uses_.size();
    const ChunkShape& ch = s.chunks[static_cast<size_t>(g.chunk)];
    if (g.forward) {
      if (ch.gc == 0) uses_.push_back({Fe, 0, g.micro_batch});
      for (int l = ch.layer_begin; l < ch.layer_end; ++l) uses_.push_back({Fl, l + 1, g.micro_batch});
      if (ch.gc == s.nchunks - 1) uses_.push_back({Hd, L + 1, g.micro_batch});
    } else {
      for (int l = ch.layer_end - 1; l >= ch.layer_begin; --l) uses_.push_back({Bl, l + 1, g.micro_batch});
      if (ch.gc == 0) uses_.push_back({Be, 0, g.micro_batch});
    }
    group_uses_.emplace_back(first, uses_.size());
  }
  int nback = 0;
  for (size_t k = 0; k < uses_.size(); ++k) {
    if (uses_[k].kind != Be) {
      uses_[k].gather = static_cast<int>(gather_use_.size());
      gather_use_.push_back(static_cast<int>(k));
    }
    if (is_bwd(uses_[k].kind)) uses_[k].grad_ring = nback++ % 2;
  }
  first_of_use_.assign(uses_.size(), kNone);
  last_of_use_.assign(uses_.size(), kNone);
  gathers_of_.assign(gather_use_.size(), {});
  grad_comm_of_use_.assign(uses_.size(), {});
  last_scatter_.assign(s.params.size(), kNone);
}

void StepBuilder::build() {
  plan_uses();
  // the tasks per use, per group (its messages) and per parameter: at most about 24 per use,
  // and 6 more per context rank (ring steps), on the decks of the simulator's checks and
  // searches (tensor, sequence and context parallel, ZeRO-3, recomputation); growing the list
  // moves every task made so far (the search compiles thousands of programs)
  const size_t guess = uses_.size() * (s.cp > 1 ? 24 + 6 * static_cast<size_t>(s.cp) : 26) + s.order.size() * 4 +
                       s.params.size() * 4 + 64;
  prog_.tasks.reserve(guess);
  prog_.edges.reserve(3 * guess);
  chain(emit_compute({ComputeOp{StepOp::Begin}}, "step.begin"));
  if (s.zero == 3) emit_gathers_upto(s.prefetch);
  pipeline_begin();
  for (size_t gi = 0; gi < s.order.size(); ++gi) {
    group_ = static_cast<int>(gi);
    emit_group(gi);
  }
  group_ = static_cast<int>(s.order.size());
  emit_loss_norm_update();
}

void StepBuilder::emit_group(size_t gi) {
  const PipelineStep grp = s.order[gi];
  const int j = grp.micro_batch;
  const ChunkShape& ch = s.chunks[static_cast<size_t>(grp.chunk)];
  const int K = ch.slots;
  const int xsl = s.slot_of(grp.chunk, j);
  const std::string mbs = (s.vstages > 1 ? ".v" + std::to_string(grp.chunk) : "") + ".mb" + std::to_string(j);
  const int L = s.layers;
  if (grp.forward ? ch.gc > 0 : ch.gc < s.nchunks - 1) emit_recv_copy(gi);
  bool group_first = true;
  std::vector<int> pending;  // collectives the next compute segment (or the send) waits for
  pending.reserve(8);
  for (size_t k = group_uses_[gi].first; k < group_uses_[gi].second; ++k) {
    const Use u = uses_[k];
    if (s.zero == 3 && u.gather >= 0) emit_gathers_upto(u.gather + s.prefetch);
    UseCtx ctx;
    ctx.segs.reserve(16);
    ctx.prefix = named([&] {
      const std::string ls = u.unit >= 1 && u.unit <= L ? std::to_string(u.unit - 1) : "";
      return u.kind == Fl   ? "fwd.layer" + ls + "."
             : u.kind == Bl ? "bwd.layer" + ls + "."
             : u.kind == Hd ? "head."
             : u.kind == Fe ? "fwd."
                            : "bwd.";
    });
    ctx.mbs = mbs;
    ctx.pending = &pending;
    ctx.use = k;
    emit_use_compute(ctx, u, xsl);
    flush(ctx);
    const int c0 = ctx.segs.front(), c = ctx.segs.back();
    first_of_use_[k] = c0;
    last_of_use_[k] = c;
    if (group_first) {
      group_first = false;
      // the act slot's buffers are written again only after the sends that read them are done:
      // the embedding writes x on the first stage, the head writes dx on the last stage
      if (j >= K && grp.forward) {
        if (ch.gc == 0) edge(send_x_[gidx(grp.chunk, j - K)], c0);
        if (ch.gc == s.nchunks - 1) edge(send_dx_[gidx(grp.chunk, j - K)], c0);
      }
    }
    emit_use_waits(k, c0);
    if (is_bwd(u.kind) && !s.evaluate) emit_grad_sync(k, c, mbs, ctx.mlp_synced ? GradPart::Rest : GradPart::All);
  }
  if (grp.forward ? ch.gc < s.nchunks - 1 : ch.gc > 0) emit_send(gi, pending);
}

// The loss summed over the batch slices (and from the last stage to every stage), the
// global gradient norm over shards, tensor slices and stages, then AdamW.
void StepBuilder::emit_loss_norm_update() {
  const parallel::AxisGroups& g = s.groups;
  int loss_sum = kNone;
  if (!g.loss.empty()) {
    loss_sum = emit_comm(all_reduce(g.loss, {b.loss_local}, 3, comm::ReduceOp::Sum, DType::F64, "loss", {b.loss_global}),
                         "all_reduce loss");
    edge(last_, loss_sum);
  }
  if (s.evaluate) return;  // no gradients, no update
  const int norm = emit_compute({ComputeOp{StepOp::GradNormLocal}}, "grad_norm.local");
  chain(norm);
  for (int t : grad_sync_) edge(t, norm);
  int norm_ready = norm;
  if (!g.norm.empty() && s.mesh.group_size(g.norm) > 1) {
    const int t = emit_comm(
        all_reduce(g.norm, {b.norm_local}, 1, comm::ReduceOp::Sum, DType::F64, "grad_norm_sq", {b.norm_total}),
        "all_reduce grad_norm_sq");
    edge(norm, t);
    norm_ready = t;
  }
  const int upd = emit_compute({ComputeOp{StepOp::AdamW}}, "adamw");
  chain(upd);
  edge(norm_ready, upd);
  if (s.zero == 1 || s.zero == 2) emit_zero12_gathers(upd);
  edge(loss_sum, upd);
}

}  // namespace detail
}  // namespace shardflow::compile
