#include "compile/step_shape.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "strategy/weight_sharding.hpp"
#include "mesh/axes.hpp"

namespace shardflow::compile {

namespace {

// The pipeline: this rank's chunks, its schedule and the act slots each chunk needs.
void shape_pipeline(const Deck& deck, const parallel::LayoutPlan& plan, StepShape& s, int mb_group) {
  const int L = s.layers;
  s.vstages = deck.strategy.virtual_stages;
  SHARDFLOW_REQUIRE_INPUT(s.vstages >= 1, "strategy.virtual_stages = ", s.vstages, " must be >= 1");
  if (s.vstages > 1) {  // interleaved 1F1B
    const std::string at = " (" + deck.where("strategy.virtual_stages") + ")";
    SHARDFLOW_REQUIRE_INPUT(s.pp > 1, "strategy.virtual_stages = ", s.vstages, " needs mesh.pipeline > 1", at);
    SHARDFLOW_REQUIRE_INPUT(deck.strategy.schedule == PipelineSchedule::OneFOneB, "strategy.virtual_stages = ",
                            s.vstages, " interleaves the 1f1b schedule, not ", schedule_name(deck.strategy.schedule),
                            at);
    SHARDFLOW_REQUIRE_INPUT(mb_group > 0 || s.micro % s.pp == 0, "strategy.virtual_stages = ", s.vstages,
                            ": train.micro_batches = ", s.micro, " must be a multiple of mesh.pipeline = ", s.pp, at);
    s.mb_group = mb_group;  // (a round of another size: the schedule checks it)
    SHARDFLOW_REQUIRE_INPUT(s.pp * s.vstages <= L, "strategy.virtual_stages = ", s.vstages, ": mesh.pipeline = ", s.pp,
                            " x ", s.vstages, " chunks but only model.layers = ", L, at);
  }
  s.first_stage = s.stage == 0;
  s.last_stage = s.stage == s.pp - 1;
  s.nchunks = plan.chunks();
  s.layer_chunk = plan.layer_chunk();
  std::vector<int> chunk_begin(static_cast<size_t>(s.nchunks) + 1, 0);
  for (int l = 0; l < L; ++l) ++chunk_begin[static_cast<size_t>(s.layer_chunk[static_cast<size_t>(l)]) + 1];
  for (int c = 0; c < s.nchunks; ++c) chunk_begin[static_cast<size_t>(c) + 1] += chunk_begin[static_cast<size_t>(c)];
  s.local_layer.assign(static_cast<size_t>(L), -1);
  int nlocal = 0;
  for (int vc = 0; vc < s.vstages; ++vc) {
    ChunkShape c;
    c.gc = vc * s.pp + s.stage;
    c.layer_begin = chunk_begin[static_cast<size_t>(c.gc)];
    c.layer_end = chunk_begin[static_cast<size_t>(c.gc) + 1];
    for (int l = c.layer_begin; l < c.layer_end; ++l) s.local_layer[static_cast<size_t>(l)] = nlocal++;
    s.chunks.push_back(c);
  }
  s.order = pipeline_schedule(s.schedule, s.pp, s.stage, static_cast<int>(s.micro), s.vstages, s.mb_group);
  const auto slots = in_flight(s.order, s.vstages);
  if (s.evaluate)  // the forwards only, in the schedule's order
    s.order.erase(std::remove_if(s.order.begin(), s.order.end(), [](const PipelineStep& st) { return !st.forward; }),
                  s.order.end());
  s.total_slots = 0;
  for (int vc = 0; vc < s.vstages; ++vc) {
    ChunkShape& c = s.chunks[static_cast<size_t>(vc)];
    c.slots = slots[static_cast<size_t>(vc)];
    c.slot_base = s.total_slots;
    s.total_slots += c.slots;
  }
}

// Every parameter's box on this rank (or only its stage's), its ZeRO rows and its place in
// the ZeRO-3 rings.
void shape_params(const parallel::LayoutPlan& plan, StepShape& s, bool stage_only) {
  const int L = s.layers;
  s.units.assign(static_cast<size_t>(L + 2), {});
  s.params.reserve(plan.params().size());
  s.index.reserve(plan.params().size());
  std::vector<int64_t> unit_numel(static_cast<size_t>(L + 2), 0);
  for (const auto& pl : plan.params()) {
    if (stage_only && pl.stage != s.stage) continue;
    const ParamInfo& info = pl.info;
    ParamShape p;
    p.name = info.name;
    p.shape = info.shape;
    p.view = info.view_shape;
    p.dt = pl.tensor_dim;
    p.lext = p.view;
    p.loff.assign(p.view.size(), 0);
    if (p.dt >= 0) {
      const auto d = static_cast<size_t>(p.dt);
      p.lext[d] = split_extent(p.view[d], s.tp, s.tc);
      p.loff[d] = split_offset(p.view[d], s.tp, s.tc);
    }
    p.decay = info.weight_decay;
    p.gain = info.kind == ParamKind::NormGain;
    p.tensor_partial = (p.gain && s.sp) || (info.kind == ParamKind::KeyValue && s.tp > 1 && p.dt < 0);
    p.expert = pl.is_expert_weight;
    {
      const ParamKind k = info.kind;
      const std::string gain_suffix = ".mlp_norm.weight";
      p.mlp_half = k == ParamKind::GateUp || k == ParamKind::Down || k == ParamKind::Router ||
                   k == ParamKind::ExpertGateUp || k == ParamKind::ExpertDown ||
                   (k == ParamKind::NormGain && p.name.size() > gain_suffix.size() &&
                    p.name.compare(p.name.size() - gain_suffix.size(), gain_suffix.size(), gain_suffix) == 0);
    }
    p.de = pl.expert_dim;
    if (p.de >= 0) {
      p.lext[0] = s.E_l;
      p.loff[0] = s.e0;
    }
    p.lnumel = numel(p.lext);
    p.unit = pl.unit;
    p.stage = pl.stage;
    p.here = p.stage == s.stage;
    p.dz = pl.zero_dim;
    p.zero_split = pl.zero_sharded();
    if (p.zero_split) {
      const auto d = static_cast<size_t>(p.dz);
      p.O = numel(p.lext, 0, d);
      p.R = p.lext[d];
      p.I = numel(p.lext, d + 1, p.lext.size());
      p.r0 = split_offset(p.R, s.shard_size, s.shard_index);
      p.nr = split_extent(p.R, s.shard_size, s.shard_index);
    } else {
      p.O = 1;
      p.R = p.lext.empty() ? 1 : p.lext[0];
      p.I = p.R > 0 ? p.lnumel / p.R : 0;
      p.r0 = 0;
      p.nr = p.R;
    }
    if (p.here && p.grad_shard_stored(s.zero)) {
      p.ring_offset = unit_numel[static_cast<size_t>(p.unit)];
      unit_numel[static_cast<size_t>(p.unit)] += p.lnumel;
    }
    s.index[p.name] = static_cast<int>(s.params.size());
    s.units[static_cast<size_t>(p.unit)].push_back(static_cast<int>(s.params.size()));
    s.params.push_back(std::move(p));
  }
  s.ring_numel = s.zero >= 2 ? *std::max_element(unit_numel.begin(), unit_numel.end()) : 0;
}

}  // namespace

StrategyOptions strategy_options(const Deck& deck) {
  StrategyOptions so;
  so.zero_stage = deck.strategy.zero_stage;
  so.fsdp_min_weight_size = deck.strategy.fsdp_min_weight_size;
  return so;
}

StepShape make_step_shape(const Deck& deck, const parallel::LayoutPlan& plan, int rank, StepMode mode,
                          ShapeParams params, int mb_group) {
  StepShape s;
  s.evaluate = mode == StepMode::Evaluate;
  const MeshShape& shape = plan.mesh();
  SHARDFLOW_REQUIRE_INPUT(rank >= 0 && rank < shape.size(), "rank ", rank, " is outside mesh ", shape.to_string(),
                          " of ", shape.size(), " devices");
  s.rank = rank;
  s.world = shape.size();
  s.mesh = shape;
  s.groups = plan.groups();
  const ModelConfig& mc = deck.model;
  s.vocab = mc.vocab;
  s.seq = mc.seq;
  s.hidden = mc.hidden;
  s.heads = mc.heads;
  s.head_dim = mc.head_dim();
  s.ffn = mc.ffn;
  s.llama = mc.is_llama();
  s.kv_heads = mc.kv_head_count();
  s.rope_theta = mc.rope_theta;
  s.tied = mc.tie_embeddings;
  s.layers = static_cast<int>(mc.layers);
  s.experts = mc.experts;
  s.attention_dropout = s.evaluate ? 0.0 : mc.attention_dropout;
  s.top_k = mc.top_k;
  s.moe_every = mc.moe_every;
  s.zero = deck.strategy.zero_stage;  // 0..3: the LayoutPlan (AxisGroups) refused anything else
  s.prefetch = deck.strategy.prefetch;
  SHARDFLOW_REQUIRE_INPUT(s.prefetch >= 0, "strategy.prefetch = ", s.prefetch, " must be >= 0 (",
                          deck.where("strategy.prefetch"), ")");
  s.gather_dtype = deck.strategy.gather_dtype;
  s.scatter_dtype = deck.strategy.grad_scatter_dtype;
  s.act_comm_dtype = deck.strategy.activation_comm_dtype;
  s.schedule = deck.strategy.schedule;
  s.micro = deck.train.micro_batches;
  SHARDFLOW_REQUIRE_INPUT(s.micro >= 1, "train.micro_batches = ", s.micro, " must be >= 1");

  const parallel::AxisGroups& g = s.groups;
  s.sample_size = shape.group_size(g.samples);
  s.dp_size = shape.group_size(g.batch);
  s.dpx_size = shape.group_size(g.batch_dense);
  s.shard_size = shape.group_size(g.zero);
  s.repl_size = shape.group_size(g.replica);
  s.replx_size = shape.group_size(g.replica_dense);
  if (!g.zero.empty()) s.shard_index = shape.group_index(rank, g.zero);
  s.tp = shape.axis_size_or_1(axis::tensor);
  if (s.tp > 1) s.tc = shape.coord(rank, axis::tensor);
  s.ep = shape.axis_size_or_1(axis::expert);
  if (s.ep > 1) s.ec = shape.coord(rank, axis::expert);
  if (mc.is_moe()) {
    s.E_l = split_extent(s.experts, s.ep, s.ec);
    s.e0 = split_offset(s.experts, s.ep, s.ec);
    for (int r = 0; r < s.ep; ++r)
      for (int64_t e = 0; e < split_extent(s.experts, s.ep, r); ++e) s.expert_owner.push_back(r);
  }
  s.pp = shape.axis_size_or_1(axis::pipeline);
  if (s.pp > 1) s.stage = shape.coord(rank, axis::pipeline);
  shape_pipeline(deck, plan, s, mb_group);

  s.A_l = split_extent(s.heads, s.tp, s.tc);
  s.H_l = s.A_l * s.head_dim;
  s.a0 = split_offset(s.heads, s.tp, s.tc);
  if (!s.llama || kv_heads_aligned(s.heads, s.kv_heads, s.tp)) {
    s.K_l = split_extent(s.kv_heads, s.tp, s.tc);
    s.k0 = split_offset(s.kv_heads, s.tp, s.tc);
  } else {
    s.K_l = s.kv_heads;
    s.k0 = 0;
  }
  s.F_l = split_extent(s.ffn, s.tp, s.tc);
  s.V_l = split_extent(s.vocab, s.tp, s.tc);
  s.v0 = split_offset(s.vocab, s.tp, s.tc);

  s.global_batch = deck.train.global_batch;
  const int64_t B = s.global_batch;
  SHARDFLOW_REQUIRE_INPUT(B % (s.sample_size * s.micro) == 0, "train.global_batch = ", B,
                          " is not divisible by the data-parallel size ", s.sample_size, " x train.micro_batches ",
                          s.micro, " (", deck.where("train.global_batch"), ")");
  s.local_seqs = B / s.sample_size;
  s.mb_seqs = s.local_seqs / s.micro;
  s.cp = shape.axis_size_or_1(axis::context);
  if (s.cp > 1) s.cc = shape.coord(rank, axis::context);
  SHARDFLOW_REQUIRE_INPUT(s.cp == 1 || s.seq % (2 * s.cp) == 0, "mesh.context = ", s.cp, " splits each sequence into 2 x ", s.cp,
                          " chunks, which model.seq = ", s.seq, " does not divide (", deck.where("mesh.context"), ")");
  SHARDFLOW_REQUIRE_INPUT(s.cp == 1 || s.experts == 0, "mesh.context = ", s.cp,
                          " with a mixture of experts (model.experts = ", s.experts,
                          ") is not supported: the load-balancing loss needs whole sequences");
  SHARDFLOW_REQUIRE_INPUT(s.cp == 1 || s.attention_dropout == 0, "mesh.context = ", s.cp,
                          " with model.attention_dropout = ", s.attention_dropout,
                          " is not supported: ring attention has no dropout (", deck.where("mesh.context"), ")");
  s.seq_local = s.seq / s.cp;
  SHARDFLOW_REQUIRE_INPUT(!s.tied || (s.pp == 1 && s.zero <= 1), "model.tie_embeddings = true needs mesh.pipeline = 1 "
                          "and strategy.zero_stage <= 1 (the mesh has pipeline = ", s.pp, ", zero_stage = ", s.zero,
                          "): the table serves the first and the last stage, and from ZeRO-2 on its gradient lives "
                          "only in the embeddings' gradient ring (", deck.where("model.tie_embeddings"), ")");
  s.tokens_mb = s.mb_seqs * s.seq_local;
  s.sp = deck.strategy.sequence_parallel && s.tp > 1;
  s.recompute = s.evaluate ? Recompute::None : deck.strategy.recompute;
  s.precision = deck.train.precision;
  SHARDFLOW_REQUIRE_INPUT(!s.sp || s.tokens_mb >= s.tp, "strategy.sequence_parallel: a micro-batch has ", s.tokens_mb,
                          " tokens, fewer than the ", s.tp, " tensor ranks that split them");
  s.Tr = s.sp ? split_extent(s.tokens_mb, s.tp, s.tc) : s.tokens_mb;
  s.t0 = s.sp ? split_offset(s.tokens_mb, s.tp, s.tc) : 0;
  if (params != ShapeParams::None) shape_params(plan, s, params == ShapeParams::Stage);
  return s;
}

void take_params(StepShape& to, StepShape&& from) {
  SHARDFLOW_REQUIRE(to.rank == from.rank && to.world == from.world && to.tc == from.tc && to.sp == from.sp &&
                        to.ec == from.ec && to.stage == from.stage && to.zero == from.zero &&
                        to.shard_index == from.shard_index && to.layers == from.layers,
                    "take_params: the shapes of rank ", to.rank, " and rank ", from.rank, " differ");
  to.params = std::move(from.params);
  to.index = std::move(from.index);
  to.units = std::move(from.units);
  to.ring_numel = from.ring_numel;
}

}  // namespace shardflow::compile
