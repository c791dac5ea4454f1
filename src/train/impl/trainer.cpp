#include "train/trainer.hpp"

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <map>

#include "comm/plan.hpp"
#include "comm/request.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "graph/verify.hpp"
#include "model/model_description.hpp"
#include "nn/gpt.hpp"
#include "nn/init.hpp"
#include "nn/kernels.hpp"
#include "nn/moe.hpp"
#include "optim/adamw.hpp"
#include "compile/schedule.hpp"
#include "mesh/axes.hpp"
#include "parallel/layout_plan.hpp"
#include "train/impl/shard_collectives.hpp"

namespace shardflow::train {

namespace {
using Exec = Kokkos::DefaultExecutionSpace;
using VT = nn::ViewTypes<float, Exec>;
using FVec = Kokkos::View<float*>;
using TVec = Kokkos::View<int32_t*>;

VT::Mat mat(float* p, int64_t r, int64_t c) { return VT::Mat(p, static_cast<size_t>(r), static_cast<size_t>(c)); }
VT::CMat cmat(const float* p, int64_t r, int64_t c) {
  return VT::CMat(p, static_cast<size_t>(r), static_cast<size_t>(c));
}
VT::Vec vec(float* p, int64_t n) { return VT::Vec(p, static_cast<size_t>(n)); }
VT::CVec cvec(const float* p, int64_t n) { return VT::CVec(p, static_cast<size_t>(n)); }

std::function<bool()> as_poller(comm::Request r) {
  auto req = std::make_shared<comm::Request>(std::move(r));
  return [req] { return req->test(); };
}

/// y = x · wᵀ backward: dx (+)= dy · w (skipped when dx is null), dw (+)= dyᵀ · x, for dy
/// [rows, out], x [rows, in], w and dw [out, in].
void linear_bwd(const float* dy, const float* x, const float* w, float* dw, int64_t rows, int64_t out, int64_t in,
                float* dx, bool acc_dx, bool acc_w) {
  if (dx != nullptr)
    nn::Linear<float, Exec>::backward_input(cmat(dy, rows, out), cmat(w, out, in), mat(dx, rows, in), acc_dx);
  nn::Linear<float, Exec>::backward_weight(cmat(dy, rows, out), cmat(x, rows, in), mat(dw, out, in), acc_w);
}

int64_t view_bytes(const FVec& v) { return static_cast<int64_t>(v.extent(0) * sizeof(float)); }

int64_t prod(const Shape& s, size_t b, size_t e) {
  int64_t n = 1;
  for (size_t d = b; d < e; ++d) n *= s[d];
  return n;
}

/// Copies between a row-major tensor of `shape` and the row-major data of one of its
/// boxes (host memory): to_box: box = tensor[b]; else tensor[b] = box.
void box_copy(const float* src, const Shape& shape, const Box& b, float* dst, bool to_box) {
  const int64_t n = b.numel();
  if (n == 0) return;
  const Shape st = row_major_strides(shape);
  const size_t nd = shape.size();
  std::vector<int64_t> idx(nd, 0);
  for (int64_t k = 0; k < n; ++k) {
    int64_t off = 0;
    for (size_t d = 0; d < nd; ++d) off += (b.offset[d] + idx[d]) * st[d];
    if (to_box)
      dst[k] = src[off];
    else
      dst[off] = src[k];
    for (size_t d = nd; d-- > 0;) {
      if (++idx[d] < b.extent[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace

struct Trainer::Impl {
  // ---- configuration --------------------------------------------------------------
  Deck deck;
  const Mesh* mesh;
  comm::CommSet* comms;
  nn::GptConfig cfg;
  ModelDescription desc;
  // where every parameter, gradient and optimizer state lives (the only layout decider)
  std::unique_ptr<parallel::LayoutPlan> plan;
  optim::AdamWConfig opt;
  int zero = 0;
  std::vector<std::string> dp_axes, shard_axes, repl_axes, norm_axes, loss_axes;
  comm::Communicator* dp_comm = nullptr;
  comm::Communicator* shard_comm = nullptr;
  comm::Communicator* repl_comm = nullptr;
  comm::Communicator* tp_comm = nullptr;
  comm::Communicator* pp_comm = nullptr;
  comm::Communicator* norm_comm = nullptr;
  comm::Communicator* loss_comm = nullptr;
  int dp_size = 1, shard_size = 1, repl_size = 1, shard_index = 0;
  int tp = 1, tc = 0;                  // tensor-parallel size and this rank's coordinate
  int pp = 1, stage = 0;               // pipeline stages and this rank's stage
  bool first_stage = true, last_stage = true;  // stage 0 (embeddings), stage p − 1 (head, loss)
  // Pipeline chunks: the layers are assigned to p·v chunks (v = strategy.virtual_stages);
  // chunk c lives on stage c mod p as this stage's virtual stage c / p. A chunk holds the
  // activations of `slots` micro-batches at once, in slots [slot_base, slot_base + slots)
  // of the per-rank slot arrays (xs, dxs, the receive rings, the layers' activations).
  struct Chunk {
    int gc = 0;                          // global chunk index
    int layer_begin = 0, layer_end = 0;  // its layers [begin, end)
    int slots = 1, slot_base = 0;
  };
  int vstages = 1, nchunks = 1;  // virtual stages per rank, chunks in the pipeline (p·v)
  std::vector<Chunk> chunks;     // this rank's, by virtual stage
  std::vector<int> layer_chunk;  // global layer -> global chunk
  std::vector<int> local_layer;  // global layer -> index into acts / moes (-1: elsewhere)
  int total_slots = 1;
  // One group of the schedule: the forward or backward of micro-batch mb through chunk vc.
  struct Group {
    bool fwd;
    int vc;
    int mb;
  };
  std::vector<Group> order;  // this stage's schedule
  std::vector<Group> schedule(int pipeline_stage) const;
  int slot_of(int vc, int mb) const {
    const Chunk& c = chunks[static_cast<size_t>(vc)];
    return c.slot_base + mb % c.slots;
  }
  int64_t A_l = 0, H_l = 0, F_l = 0, V_l = 0, v0 = 0;  // local heads, head columns, ffn, vocab slice
  bool sp = false;                                     // sequence parallel over the tensor axis
  int ep = 1, ec = 0;                                  // expert-parallel size and coordinate
  int64_t E_l = 0, e0 = 0;                             // this rank's experts [e0, e0 + E_l)
  std::vector<int> expert_owner;                       // expert -> expert coordinate
  comm::Communicator* ep_comm = nullptr;
  nn::MoeConfig moe;
  // expert weights are not replicated over the expert axis: their data-parallel groups
  std::vector<std::string> dpx_axes, replx_axes;
  comm::Communicator* dpx_comm = nullptr;
  comm::Communicator* replx_comm = nullptr;
  int dpx_size = 1, replx_size = 1;
  int64_t Tr = 0, t0 = 0;  // residual-stream rows this rank holds: [t0, t0 + Tr) of the micro-batch's T
  int64_t micro = 1, mb_seqs = 1, local_seqs = 1, tokens_mb = 1;
  data::Slice slice;
  std::unique_ptr<data::DataLoader> loader;

  // ---- parameters -------------------------------------------------------------------
  // Each parameter is held as its tensor-parallel box of the view shape (ModelDescription),
  // stored row-major over the box; ZeRO splits one more view dimension `dz` of that box,
  // seen as [O, R, I] (O: extents before dz, R: dz, I: extents after).
  struct Param {
    std::string name;
    Shape shape, view;
    int dt = -1;       // view dim split by the tensor axis (-1: replicated over tensor)
    Shape lext, loff;  // tensor-parallel box of the view
    int64_t lnumel = 0;
    bool decay = false;
    bool gain = false;    // norm gain: its gradient is a partial sum over tensor ranks under sp
    bool expert = false;  // an expert weight [E, ...], split over the expert axis on view dim 0
    int de = -1;          // view dim split by the expert axis
    int unit = 0, stage = 0;
    bool here = true;  // this rank's stage holds it
    bool sharded = false;
    int dz = -1;
    int64_t O = 1, R = 1, I = 1, r0 = 0, nr = 0;
    FVec param, grad, gshard, m, v, pshard, gtmp;
    int64_t slot_off = -1;
    int64_t shard_numel() const { return O * nr * I; }
  };
  std::vector<Param> params;
  std::map<std::string, int> index;
  std::vector<std::vector<int>> units;  // unit -> param indices
  int64_t slot_numel = 0;
  std::vector<FVec> pslots, gslots;

  // ---- activations --------------------------------------------------------------------
  struct Acts {
    FVec x_in, n1, rstd1, qkv, probs, att, x_mid, n2, rstd2, gu, h;
  };
  std::vector<std::vector<Acts>> acts;  // [local layer][slot]
  // An MoE layer's routing and dispatch state for one micro-batch in flight. Dispatch rows
  // are ordered by expert (so by owning rank), then by choice a = t·k + j.
  struct MoeState {
    nn::MoeRouting route;
    FVec logits, gate;                         // [T, E], [T·k]
    Kokkos::View<int64_t*> slot;               // [T·k] dispatch row of each choice, -1 dropped
    std::vector<int32_t> send_ec, recv_ec;     // [ep, E] rows per (peer, expert) sent / received
    std::vector<size_t> send_rows, recv_rows;  // per peer
    FVec xsend, ysend;                         // [T·k, H] rows sent out / combined back (dy in backward)
    FVec xr, yr, gu, h;                        // received rows [N, H], expert activations, outputs (dX)
    int64_t nrecv = 0;
  };
  std::vector<std::vector<MoeState>> moes;       // [local layer][slot]; empty for dense layers
  FVec moe_dgate, moe_dh, moe_dgu, moe_dlogits;  // MoE backward scratch
  std::vector<FVec> xs, dxs;                     // residual stream and its gradient, per slot (Tr rows)
  std::vector<FVec> rxs, rdxs;                   // pipeline receive rings: x from the previous stage, dx from the next
  FVec yl, dnl, dxfull;                          // sequence parallel: reduce-scattered rows, gathered dx
  FVec ybuf, dn, dh, dgu, datt, dqkv, dprobs, nf, rstdf, logits, row_max, stats;
  std::vector<TVec> inputs, targets;
  std::unique_ptr<nn::Embedding<float, Exec>::Scratch> escratch;

  // ---- step state ------------------------------------------------------------------------
  int64_t completed = 0;
  // summed over the batch: [cross-entropy, MoE load-balancing loss, dropped MoE choices]
  double sums_local[3] = {0, 0, 0}, sums_global[3] = {0, 0, 0};
  double sq_local = 0, sq_total = 0, grad_norm = 0;
  graph::TaskGraph graph{"train_step"};
  graph::Executor executor;
  std::vector<std::unique_ptr<detail::ShardGather>> gathers;
  std::vector<std::unique_ptr<detail::ShardReduceScatter>> scatters;
  int64_t staging = 0;

  Impl(const Deck& d, const Mesh& m, comm::CommSet& c);
  void setup_groups();
  void setup_params();
  void setup_acts();
  void build_graph();
  void init_params();

  float* pptr(const Param& p, int slot) {
    return (zero == 3 && p.sharded) ? pslots[static_cast<size_t>(slot)].data() + p.slot_off : p.param.data();
  }
  float* gptr(const Param& p, int gslot) {
    return (zero == 3 && p.sharded) ? gslots[static_cast<size_t>(gslot)].data() + p.slot_off : p.grad.data();
  }
  bool accum(const Param& p, bool acc) const { return acc && !(zero == 3 && p.sharded); }
  Param& P(const std::string& n) { return params[static_cast<size_t>(index.at(n))]; }
  Param& U(int unit, int k) {
    return params[static_cast<size_t>(units[static_cast<size_t>(unit)][static_cast<size_t>(k)])];
  }
  Acts& act(int l, int slot) {
    return acts[static_cast<size_t>(local_layer[static_cast<size_t>(l)])][static_cast<size_t>(slot)];
  }
  float* shard_param_ptr(Param& p) { return p.O > 1 ? p.pshard.data() : p.param.data() + p.r0 * p.I; }
  Layout param_layout(const Param& p, bool optimizer_state) const;

  // compute (segments separated by the tensor-parallel all-reduces)
  void embed_fwd_a(int j, int xs_slot, int slot);
  void embed_fwd_b(int xs_slot, int slot);
  void norm_fwd(const Param& g, const float* x, float* out, float* rstd, int slot);
  void norm_bwd(const Param& g, const float* x, const float* rstd, int xs_slot, int slot, int gslot, bool acc,
                bool acc_dx);
  void linear_backward(const float* dy, const float* x, const Param& w, int slot, int gslot, bool acc, int64_t rows,
                       int64_t out, int64_t in, float* dx, bool acc_dx);
  void layer_fwd_norm1(int l, int xs_slot, int slot);
  void layer_fwd_attn(int l, int xs_slot, int slot);
  void layer_fwd_norm2(int l, int xs_slot, int slot);
  void layer_fwd_mlp(int l, int xs_slot, int slot);
  void layer_fwd_end(int l, int xs_slot);
  void head_norm(int xs_slot, int slot);
  void head_a(int slot);
  void head_b(int j);
  void head_c(int j, int slot, int gslot, bool acc);
  void head_d(int xs_slot, int slot, int gslot, bool acc);
  void layer_bwd_mlp(int l, int xs_slot, int slot, int gslot, bool acc);
  void layer_bwd_attn(int l, int xs_slot, int slot, int gslot, bool acc);
  void layer_bwd_norm(int l, bool mlp, int xs_slot, int slot, int gslot, bool acc);
  void embed_bwd(int j, int xs_slot, int gslot, bool acc);
  void norm_local();
  void update();
  bool is_moe_layer(int l) const { return deck.model.is_moe_layer(l); }
  MoeState& ms(int l, int slot) {
    return moes[static_cast<size_t>(local_layer[static_cast<size_t>(l)])][static_cast<size_t>(slot)];
  }
  void moe_route_fwd(int l, int xs_slot, int slot);
  void moe_recv_counts(int l, int xs_slot);
  void moe_experts_fwd(int l, int xs_slot, int slot);
  void moe_combine(int l, int xs_slot);
  void moe_combine_bwd(int l, int xs_slot);
  const float* dx_full(int xs_slot) const {  // the whole micro-batch's dx (all-gathered under sp)
    return sp ? dxfull.data() : dxs[static_cast<size_t>(xs_slot)].data();
  }
  void moe_experts_bwd(int l, int xs_slot, int slot, int gslot, bool acc);
  void moe_router_bwd(int l, int xs_slot, int slot, int gslot, bool acc);
};

Trainer::Impl::Impl(const Deck& d, const Mesh& m, comm::CommSet& c) : deck(d), mesh(&m), comms(&c), desc(d.model) {
  cfg.vocab = deck.model.vocab;
  cfg.seq = deck.model.seq;
  cfg.hidden = deck.model.hidden;
  cfg.heads = deck.model.heads;
  cfg.ffn = deck.model.ffn;
  cfg.layers = deck.model.layers;
  cfg.validate();
  opt.lr = deck.train.lr;
  opt.warmup = deck.train.warmup;
  opt.validate();
  zero = deck.strategy.zero_stage;
  SHARDFLOW_REQUIRE_INPUT(zero >= 0 && zero <= 3, "strategy.zero_stage = ", zero, " must be 0, 1, 2 or 3 (",
                          deck.where("strategy.zero_stage"), ")");
  SHARDFLOW_REQUIRE_INPUT(
      !(zero == 0 && m.shape().axis_size_or_1(axis::fsdp) > 1), "mesh.fsdp = ", m.shape().axis_size_or_1(axis::fsdp),
      " shards the model, which needs strategy.zero_stage >= 1 (it is 0; ", deck.where("strategy.zero_stage"), ")");
  SHARDFLOW_REQUIRE_INPUT(deck.strategy.prefetch >= 0, "strategy.prefetch = ", deck.strategy.prefetch, " must be >= 0");
  setup_groups();
  setup_params();
  setup_acts();
  loader = std::make_unique<data::DataLoader>(data::Corpus::load(deck.train.data),
                                              static_cast<uint64_t>(deck.train.seed), deck.train.global_batch, cfg.seq);
  init_params();
  build_graph();
  graph.validate();
  graph::verify(graph, m);
}

void Trainer::Impl::setup_groups() {
  const auto& shape = mesh->shape();
  const int me = mesh->rank();
  const int L = static_cast<int>(cfg.layers);
  pp = shape.axis_size_or_1(axis::pipeline);
  micro = deck.train.micro_batches;
  SHARDFLOW_REQUIRE_INPUT(micro >= 1, "train.micro_batches = ", micro, " must be >= 1");
  vstages = deck.strategy.virtual_stages;
  SHARDFLOW_REQUIRE_INPUT(vstages >= 1, "strategy.virtual_stages = ", vstages, " must be >= 1");
  if (vstages > 1) {  // interleaved 1F1B
    const std::string at = " (" + deck.where("strategy.virtual_stages") + ")";
    SHARDFLOW_REQUIRE_INPUT(pp > 1, "strategy.virtual_stages = ", vstages, " needs mesh.pipeline > 1", at);
    SHARDFLOW_REQUIRE_INPUT(deck.strategy.schedule == PipelineSchedule::OneFOneB, "strategy.virtual_stages = ",
                            vstages, " interleaves the 1f1b schedule, not ", schedule_name(deck.strategy.schedule),
                            at);
    SHARDFLOW_REQUIRE_INPUT(micro % pp == 0, "strategy.virtual_stages = ", vstages, ": train.micro_batches = ", micro,
                            " must be a multiple of mesh.pipeline = ", pp, at);
    SHARDFLOW_REQUIRE_INPUT(pp * vstages <= L, "strategy.virtual_stages = ", vstages, ": mesh.pipeline = ", pp, " x ",
                            vstages, " chunks but only model.layers = ", L, at);
  }
  StrategyOptions so;
  so.zero_stage = zero;
  so.fsdp_min_weight_size = deck.strategy.fsdp_min_weight_size;
  plan = std::make_unique<parallel::LayoutPlan>(desc, shape, so, vstages);
  const parallel::AxisGroups& groups = plan->groups();
  dp_axes = groups.batch;
  dpx_axes = groups.batch_dense;
  shard_axes = groups.zero;
  repl_axes = groups.replica;
  replx_axes = groups.replica_dense;
  norm_axes = groups.norm;
  loss_axes = groups.loss;
  dp_size = shape.group_size(dp_axes);
  dpx_size = shape.group_size(dpx_axes);
  if (!dpx_axes.empty()) dpx_comm = &comms->group(dpx_axes);
  replx_size = shape.group_size(replx_axes);
  if (!replx_axes.empty()) replx_comm = &comms->group(replx_axes);
  shard_size = shape.group_size(shard_axes);
  repl_size = shape.group_size(repl_axes);
  if (!shard_axes.empty()) shard_index = shape.group_index(me, shard_axes);
  if (!dp_axes.empty()) dp_comm = &comms->group(dp_axes);
  if (!shard_axes.empty()) shard_comm = &comms->group(shard_axes);
  if (!repl_axes.empty()) repl_comm = &comms->group(repl_axes);
  tp = shape.axis_size_or_1(axis::tensor);
  if (tp > 1) {
    tp_comm = &comms->axis(axis::tensor);
    tc = shape.coord(me, axis::tensor);
  }
  ep = shape.axis_size_or_1(axis::expert);
  if (ep > 1) {
    ep_comm = &comms->axis(axis::expert);
    ec = shape.coord(me, axis::expert);
  }
  if (deck.model.is_moe()) {
    const int64_t E = deck.model.experts;
    E_l = split_extent(E, ep, ec);
    e0 = split_offset(E, ep, ec);
    for (int r = 0; r < ep; ++r)
      for (int64_t e = 0; e < split_extent(E, ep, r); ++e) expert_owner.push_back(r);
    moe.experts = E;
    moe.top_k = deck.model.top_k;
    moe.seq = cfg.seq;
    moe.capacity_factor = deck.model.capacity_factor;
    moe.aux_coef = deck.model.aux_loss_coef;
  }
  if (pp > 1) {
    pp_comm = &comms->axis(axis::pipeline);
    stage = shape.coord(me, axis::pipeline);
  }
  // the gradient norm: every element counted once over shards, tensor slices and stages
  if (!norm_axes.empty() && shape.group_size(norm_axes) > 1) norm_comm = &comms->group(norm_axes);
  // the loss: summed over the batch slices, from the last stage
  if (!loss_axes.empty()) loss_comm = &comms->group(loss_axes);

  first_stage = stage == 0;
  last_stage = stage == pp - 1;
  nchunks = plan->chunks();
  layer_chunk = plan->layer_chunk();
  std::vector<int> chunk_begin(static_cast<size_t>(nchunks) + 1, 0);
  for (int l = 0; l < L; ++l) ++chunk_begin[static_cast<size_t>(layer_chunk[static_cast<size_t>(l)]) + 1];
  for (int c = 0; c < nchunks; ++c) chunk_begin[static_cast<size_t>(c) + 1] += chunk_begin[static_cast<size_t>(c)];
  local_layer.assign(static_cast<size_t>(L), -1);
  int nlocal = 0;
  for (int vc = 0; vc < vstages; ++vc) {
    Chunk c;
    c.gc = vc * pp + stage;
    c.layer_begin = chunk_begin[static_cast<size_t>(c.gc)];
    c.layer_end = chunk_begin[static_cast<size_t>(c.gc) + 1];
    for (int l = c.layer_begin; l < c.layer_end; ++l) local_layer[static_cast<size_t>(l)] = nlocal++;
    chunks.push_back(c);
  }
  // slots: the most micro-batches of a chunk between their forward and their backward
  order = schedule(stage);
  {
    std::vector<compile::PipelineStep> steps;
    for (const auto& g : order) steps.push_back({g.fwd, g.vc, g.mb});
    const auto slots = compile::in_flight(steps, vstages);
    for (int vc = 0; vc < vstages; ++vc) chunks[static_cast<size_t>(vc)].slots = slots[static_cast<size_t>(vc)];
  }
  total_slots = 0;
  for (auto& c : chunks) {
    c.slot_base = total_slots;
    total_slots += c.slots;
  }

  const int64_t A = cfg.heads, D = cfg.head_dim();
  A_l = split_extent(A, tp, tc);
  H_l = A_l * D;
  F_l = split_extent(cfg.ffn, tp, tc);
  V_l = split_extent(cfg.vocab, tp, tc);
  v0 = split_offset(cfg.vocab, tp, tc);

  const int64_t B = deck.train.global_batch;
  SHARDFLOW_REQUIRE_INPUT(B % (dp_size * micro) == 0, "train.global_batch = ", B,
                          " is not divisible by the data-parallel size ", dp_size, " x train.micro_batches ", micro,
                          " (", deck.where("train.global_batch"), ")");
  local_seqs = B / dp_size;
  mb_seqs = local_seqs / micro;
  tokens_mb = mb_seqs * cfg.seq;
  sp = deck.strategy.sequence_parallel && tp > 1;
  SHARDFLOW_REQUIRE_INPUT(!sp || tokens_mb >= tp, "strategy.sequence_parallel: a micro-batch has ", tokens_mb,
                          " tokens, fewer than the ", tp, " tensor ranks that split them");
  Tr = sp ? split_extent(tokens_mb, tp, tc) : tokens_mb;
  t0 = sp ? split_offset(tokens_mb, tp, tc) : 0;
  slice = data::replica_slice(B, dp_size, dp_axes.empty() ? 0 : shape.group_index(me, mesh->canonical_axes(dp_axes)));
}

// The groups a pipeline stage runs, in order (any stage's: receivers post their receives in
// the order the sender sends): compile::pipeline_schedule (src/compile/schedule.hpp).
std::vector<Trainer::Impl::Group> Trainer::Impl::schedule(int s) const {
  std::vector<Group> out;
  for (const auto& st : compile::pipeline_schedule(deck.strategy.schedule, pp, s, static_cast<int>(micro), vstages))
    out.push_back({st.forward, st.chunk, st.micro_batch});
  return out;
}

void Trainer::Impl::setup_params() {
  const int L = static_cast<int>(cfg.layers);
  units.assign(static_cast<size_t>(L + 2), {});
  std::vector<int64_t> unit_numel(static_cast<size_t>(L + 2), 0);
  for (const auto& pl : plan->params()) {
    const ParamInfo& info = pl.info;
    Param p;
    p.name = info.name;
    p.shape = info.shape;
    p.view = info.view_shape;
    p.dt = pl.tensor_dim;
    p.lext = p.view;
    p.loff.assign(p.view.size(), 0);
    if (p.dt >= 0) {
      const auto d = static_cast<size_t>(p.dt);
      p.lext[d] = split_extent(p.view[d], tp, tc);
      p.loff[d] = split_offset(p.view[d], tp, tc);
    }
    p.decay = info.weight_decay;
    p.gain = info.kind == ParamKind::NormGain;
    p.expert = pl.is_expert_weight;
    p.de = pl.expert_dim;
    if (p.de >= 0) {
      p.lext[0] = E_l;
      p.loff[0] = e0;
    }
    p.lnumel = numel(p.lext);
    p.unit = pl.unit;
    p.stage = pl.stage;
    p.here = p.stage == stage;
    p.dz = pl.zero_dim;
    p.sharded = pl.zero_sharded();
    if (p.sharded) {
      const auto d = static_cast<size_t>(p.dz);
      p.O = prod(p.lext, 0, d);
      p.R = p.lext[d];
      p.I = prod(p.lext, d + 1, p.lext.size());
      p.r0 = split_offset(p.R, shard_size, shard_index);
      p.nr = split_extent(p.R, shard_size, shard_index);
    } else {
      p.O = 1;
      p.R = p.lext.empty() ? 1 : p.lext[0];
      p.I = p.R > 0 ? p.lnumel / p.R : 0;
      p.r0 = 0;
      p.nr = p.R;
    }
    if (p.here) {
      const std::string nm = p.name;
      const bool shard_store = zero == 3 && p.sharded;
      const auto local = static_cast<size_t>(shard_store ? p.shard_numel() : p.lnumel);
      p.param = FVec(nm, local);
      p.grad = FVec(nm + ".grad", local);
      if (zero == 2 && p.sharded) p.gshard = FVec(nm + ".grad_shard", static_cast<size_t>(p.shard_numel()));
      const auto opt_n = static_cast<size_t>(p.sharded ? p.shard_numel() : p.lnumel);
      p.m = FVec(nm + ".adam_m", opt_n);
      p.v = FVec(nm + ".adam_v", opt_n);
      if (p.sharded && zero <= 2 && p.O > 1) p.pshard = FVec(nm + ".param_shard", static_cast<size_t>(p.shard_numel()));
      if (p.sharded && zero == 1 && p.O > 1) p.gtmp = FVec(nm + ".grad_shard", static_cast<size_t>(p.shard_numel()));
      if (shard_store) {
        p.slot_off = unit_numel[static_cast<size_t>(p.unit)];
        unit_numel[static_cast<size_t>(p.unit)] += p.lnumel;
      }
    }
    index[p.name] = static_cast<int>(params.size());
    units[static_cast<size_t>(p.unit)].push_back(static_cast<int>(params.size()));
    params.push_back(std::move(p));
  }
  if (zero == 3) {
    slot_numel = *std::max_element(unit_numel.begin(), unit_numel.end());
    for (int s = 0; s <= deck.strategy.prefetch; ++s)
      pslots.emplace_back("shardflow::train::param_slot", static_cast<size_t>(std::max<int64_t>(1, slot_numel)));
    for (int s = 0; s < 2; ++s)
      gslots.emplace_back("shardflow::train::grad_slot", static_cast<size_t>(std::max<int64_t>(1, slot_numel)));
  }
}

void Trainer::Impl::setup_acts() {
  const int64_t T = tokens_mb, H = cfg.hidden, S = cfg.seq;
  auto mk = [](const char* n, int64_t c) { return FVec(std::string(n), static_cast<size_t>(c)); };
  // per local layer, total_slots entries of which the layer's chunk allocates its own range
  std::vector<std::pair<int, int>> local;  // (global layer, chunk) in local order
  for (int vc = 0; vc < vstages; ++vc)
    for (int l = chunks[static_cast<size_t>(vc)].layer_begin; l < chunks[static_cast<size_t>(vc)].layer_end; ++l)
      local.emplace_back(l, vc);
  auto in_chunk = [&](int vc, int s) {
    const Chunk& c = chunks[static_cast<size_t>(vc)];
    return s >= c.slot_base && s < c.slot_base + c.slots;
  };
  for (const auto& [l, vc] : local) {
    std::vector<Acts> per(static_cast<size_t>(total_slots));
    for (int s = 0; s < total_slots; ++s) {
      if (!in_chunk(vc, s)) continue;
      Acts& a = per[static_cast<size_t>(s)];
      a.x_in = mk("x_in", Tr * H);
      a.n1 = mk("n1", T * H);
      a.rstd1 = mk("rstd1", Tr);
      a.qkv = mk("qkv", T * 3 * H_l);
      a.probs = mk("probs", mb_seqs * A_l * S * S);
      a.att = mk("att", T * H_l);
      a.x_mid = mk("x_mid", Tr * H);
      a.n2 = mk("n2", T * H);
      a.rstd2 = mk("rstd2", Tr);
      a.gu = mk("gu", T * 2 * F_l);
      a.h = mk("h", T * F_l);
    }
    acts.push_back(per);
  }
  for (const auto& [l, vc] : local) {
    std::vector<MoeState> per;
    if (is_moe_layer(l)) {
      const int64_t k = moe.top_k, E = moe.experts, N = T * k, Nmax = ep * N, F = F_l;
      per.resize(static_cast<size_t>(total_slots));
      for (int s = 0; s < total_slots; ++s) {
        if (!in_chunk(vc, s)) continue;
        MoeState& m = per[static_cast<size_t>(s)];
        m.logits = mk("router_logits", T * E);
        m.gate = mk("gates", N);
        m.slot = Kokkos::View<int64_t*>("moe_slot", static_cast<size_t>(N));
        m.send_ec.assign(static_cast<size_t>(ep * E), 0);
        m.recv_ec.assign(static_cast<size_t>(ep * E), 0);
        m.send_rows.assign(static_cast<size_t>(ep), 0);
        m.recv_rows.assign(static_cast<size_t>(ep), 0);
        m.xsend = mk("moe_x_send", N * H);
        if (ep > 1) {
          m.xr = mk("moe_x_recv", Nmax * H);
          m.yr = mk("moe_y_recv", Nmax * H);
          m.ysend = mk("moe_y_send", N * H);
        } else {  // one rank: the dispatch buffers are the experts' own
          m.xr = m.xsend;
          m.yr = mk("moe_y", N * H);
          m.ysend = m.yr;
        }
        m.gu = mk("moe_gu", Nmax * 2 * F);
        m.h = mk("moe_h", Nmax * F);
      }
      if (moe_dgate.extent(0) == 0) {
        moe_dgate = mk("moe_dgate", N);
        moe_dh = mk("moe_dh", Nmax * F);
        moe_dgu = mk("moe_dgu", Nmax * 2 * F);
        moe_dlogits = mk("moe_dlogits", T * E);
      }
    }
    moes.push_back(per);
  }
  for (int vc = 0; vc < vstages; ++vc) {
    const Chunk& c = chunks[static_cast<size_t>(vc)];
    for (int s = 0; s < c.slots; ++s) {
      xs.push_back(mk("x", Tr * H));
      dxs.push_back(mk("dx", Tr * H));
      // receive rings: x from the previous chunk, dx from the next one
      rxs.push_back(c.gc > 0 ? mk("x_recv", Tr * H) : FVec());
      rdxs.push_back(c.gc < nchunks - 1 ? mk("dx_recv", Tr * H) : FVec());
    }
  }
  if (sp) {
    yl = mk("y_rows", Tr * H);
    dnl = mk("dn_rows", Tr * H);
    dxfull = mk("dx_full", T * H);
  }
  ybuf = mk("y", T * H);
  dn = mk("dn", T * H);
  dh = mk("dh", T * F_l);
  dgu = mk("dgu", T * 2 * F_l);
  datt = mk("datt", T * H_l);
  dqkv = mk("dqkv", T * 3 * H_l);
  dprobs = mk("dprobs", S * S);
  if (last_stage) {
    nf = mk("nf", T * H);
    rstdf = mk("rstdf", Tr);
    logits = mk("logits", T * V_l);
    row_max = mk("row_max", T);
    stats = mk("stats", T * 2);
  }
  for (int64_t j = 0; j < micro; ++j) {
    inputs.emplace_back("inputs", static_cast<size_t>(T));
    targets.emplace_back("targets", static_cast<size_t>(T));
  }
  if (first_stage) escratch = std::make_unique<nn::Embedding<float, Exec>::Scratch>(V_l, T);
}

void Trainer::Impl::init_params() {
  for (auto& p : params) {
    if (!p.here) continue;
    // the whole tensor from the seed (mesh-independent), then this rank's box of the view
    FVec full("shardflow::train::init", static_cast<size_t>(numel(p.shape)));
    nn::Init<float, Exec>::fill(vec(full.data(), numel(p.shape)), static_cast<uint64_t>(deck.train.seed), p.name,
                                p.shape);
    auto hfull = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), full);
    Box box{p.loff, p.lext};
    if (zero == 3 && p.sharded) {
      box.offset[static_cast<size_t>(p.dz)] += p.r0;
      box.extent[static_cast<size_t>(p.dz)] = p.nr;
    }
    auto hp = Kokkos::create_mirror_view(p.param);
    box_copy(hfull.data(), p.view, box, hp.data(), true);
    Kokkos::deep_copy(p.param, hp);
  }
}

Layout Trainer::Impl::param_layout(const Param& p, bool optimizer_state) const {
  return plan->layout(plan->param(p.name), optimizer_state ? TensorRole::OptimizerState : TensorRole::Param);
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

void Trainer::Impl::embed_fwd_a(int j, int xs_slot, int slot) {
  const Param& e = P("embed.weight");
  const int64_t H = cfg.hidden;
  float* out = sp ? ybuf.data() : xs[static_cast<size_t>(xs_slot)].data();
  nn::Embedding<float, Exec>::forward(inputs[static_cast<size_t>(j)], cmat(pptr(e, slot), V_l, H), v0,
                                      mat(out, tokens_mb, H));
  if (sp && tc == 0)  // positions join the partial sums once
    nn::PositionEmbedding<float, Exec>::forward(cmat(pptr(P("pos_embed.weight"), slot), cfg.seq, H),
                                                mat(out, tokens_mb, H));
}

void Trainer::Impl::embed_fwd_b(int xs_slot, int slot) {
  const Param& pe = P("pos_embed.weight");
  nn::PositionEmbedding<float, Exec>::forward(cmat(pptr(pe, slot), cfg.seq, cfg.hidden),
                                              mat(xs[static_cast<size_t>(xs_slot)].data(), tokens_mb, cfg.hidden));
}

// rmsnorm of this rank's residual rows x [Tr, H] into rows [t0, t0 + Tr) of `out` [T, H]
void Trainer::Impl::norm_fwd(const Param& g, const float* x, float* out, float* rstd, int slot) {
  const int64_t H = cfg.hidden;
  nn::RmsNorm<float, Exec>::forward(cmat(x, Tr, H), cvec(pptr(g, slot), H), mat(out + t0 * H, Tr, H), vec(rstd, Tr));
}

// dx (+)= the rmsnorm backward of this rank's rows of dn (dnl under sp), gain gradient (+)=
void Trainer::Impl::norm_bwd(const Param& g, const float* x, const float* rstd, int xs_slot, int slot, int gslot,
                             bool acc, bool acc_dx) {
  const int64_t H = cfg.hidden;
  nn::RmsNorm<float, Exec>::backward(cmat(sp ? dnl.data() : dn.data(), Tr, H), cmat(x, Tr, H), cvec(pptr(g, slot), H),
                                     cvec(rstd, Tr), mat(dxs[static_cast<size_t>(xs_slot)].data(), Tr, H),
                                     vec(gptr(g, gslot), H), acc_dx, accum(g, acc));
}

// linear_bwd for the parameter w (its gather slot, gradient slot and accumulation rule)
void Trainer::Impl::linear_backward(const float* dy, const float* x, const Param& w, int slot, int gslot, bool acc,
                                    int64_t rows, int64_t out, int64_t in, float* dx, bool acc_dx) {
  linear_bwd(dy, x, pptr(w, slot), gptr(w, gslot), rows, out, in, dx, acc_dx, accum(w, acc));
}

void Trainer::Impl::layer_fwd_norm1(int l, int xs_slot, int slot) {
  const int64_t H = cfg.hidden;
  Acts& a = act(l, xs_slot);
  nn::Residual<float, Exec>::copy(cmat(xs[static_cast<size_t>(xs_slot)].data(), Tr, H), mat(a.x_in.data(), Tr, H));
  norm_fwd(U(l + 1, 0), a.x_in.data(), a.n1.data(), a.rstd1.data(), slot);
}

void Trainer::Impl::layer_fwd_attn(int l, int xs_slot, int slot) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden, S = cfg.seq;
  const Param &wqkv = U(l + 1, 1), &wout = U(l + 1, 2);
  Acts& a = act(l, xs_slot);
  Linear<float, Exec>::forward(cmat(a.n1.data(), T, H), cmat(pptr(wqkv, slot), 3 * H_l, H),
                               mat(a.qkv.data(), T, 3 * H_l));
  VT::Ten3 probs(a.probs.data(), static_cast<size_t>(mb_seqs * A_l), static_cast<size_t>(S), static_cast<size_t>(S));
  Attention<float, Exec>::forward(cmat(a.qkv.data(), T, 3 * H_l), A_l, probs, mat(a.att.data(), T, H_l));
  Linear<float, Exec>::forward(cmat(a.att.data(), T, H_l), cmat(pptr(wout, slot), H, H_l), mat(ybuf.data(), T, H));
}

void Trainer::Impl::layer_fwd_norm2(int l, int xs_slot, int slot) {
  const int64_t H = cfg.hidden;
  Acts& a = act(l, xs_slot);
  nn::Residual<float, Exec>::copy(cmat(a.x_in.data(), Tr, H), mat(a.x_mid.data(), Tr, H));
  nn::Residual<float, Exec>::add(mat(a.x_mid.data(), Tr, H), cmat(sp ? yl.data() : ybuf.data(), Tr, H));
  norm_fwd(U(l + 1, 3), a.x_mid.data(), a.n2.data(), a.rstd2.data(), slot);
}

void Trainer::Impl::layer_fwd_mlp(int l, int xs_slot, int slot) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden;
  const Param &wgu = U(l + 1, 4), &wdown = U(l + 1, 5);
  Acts& a = act(l, xs_slot);
  Linear<float, Exec>::forward(cmat(a.n2.data(), T, H), cmat(pptr(wgu, slot), 2 * F_l, H),
                               mat(a.gu.data(), T, 2 * F_l));
  SwiGlu<float, Exec>::forward(cmat(a.gu.data(), T, 2 * F_l), mat(a.h.data(), T, F_l));
  Linear<float, Exec>::forward(cmat(a.h.data(), T, F_l), cmat(pptr(wdown, slot), H, F_l), mat(ybuf.data(), T, H));
}

void Trainer::Impl::layer_fwd_end(int l, int xs_slot) {
  const int64_t H = cfg.hidden;
  float* x = xs[static_cast<size_t>(xs_slot)].data();
  nn::Residual<float, Exec>::copy(cmat(act(l, xs_slot).x_mid.data(), Tr, H), mat(x, Tr, H));
  nn::Residual<float, Exec>::add(mat(x, Tr, H), cmat(sp ? yl.data() : ybuf.data(), Tr, H));
}

void Trainer::Impl::head_norm(int xs_slot, int slot) {
  norm_fwd(P("final_norm.weight"), xs[static_cast<size_t>(xs_slot)].data(), nf.data(), rstdf.data(), slot);
}

void Trainer::Impl::head_a(int slot) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden;
  const Param& lm = P("lm_head.weight");
  Linear<float, Exec>::forward(cmat(nf.data(), T, H), cmat(pptr(lm, slot), V_l, H), mat(logits.data(), T, V_l));
  CrossEntropy<float, Exec>::local_max(cmat(logits.data(), T, V_l), vec(row_max.data(), T));
}

void Trainer::Impl::head_b(int j) {
  const int64_t T = tokens_mb;
  nn::CrossEntropy<float, Exec>::local_sumexp_target(cmat(logits.data(), T, V_l), cvec(row_max.data(), T),
                                                     targets[static_cast<size_t>(j)], v0, mat(stats.data(), T, 2));
}

void Trainer::Impl::head_c(int j, int slot, int gslot, bool acc) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden;
  const Param& lm = P("lm_head.weight");
  const double scale = 1.0 / static_cast<double>(local_seqs * cfg.seq);
  sums_local[0] += CrossEntropy<float, Exec>::loss_and_grad(cmat(logits.data(), T, V_l), cvec(row_max.data(), T),
                                                            cmat(stats.data(), T, 2), targets[static_cast<size_t>(j)],
                                                            v0, scale, mat(logits.data(), T, V_l));
  linear_backward(logits.data(), nf.data(), lm, slot, gslot, acc, T, V_l, H, dn.data(), false);
}

void Trainer::Impl::head_d(int xs_slot, int slot, int gslot, bool acc) {
  norm_bwd(P("final_norm.weight"), xs[static_cast<size_t>(xs_slot)].data(), rstdf.data(), xs_slot, slot, gslot, acc,
           false);
}

void Trainer::Impl::layer_bwd_mlp(int l, int xs_slot, int slot, int gslot, bool acc) {
  const int64_t T = tokens_mb, H = cfg.hidden;
  Acts& a = act(l, xs_slot);
  linear_backward(dx_full(xs_slot), a.h.data(), U(l + 1, 5), slot, gslot, acc, T, H, F_l, dh.data(), false);
  nn::SwiGlu<float, Exec>::backward(cmat(dh.data(), T, F_l), cmat(a.gu.data(), T, 2 * F_l), mat(dgu.data(), T, 2 * F_l));
  linear_backward(dgu.data(), a.n2.data(), U(l + 1, 4), slot, gslot, acc, T, 2 * F_l, H, dn.data(), false);
}

void Trainer::Impl::layer_bwd_attn(int l, int xs_slot, int slot, int gslot, bool acc) {
  const int64_t T = tokens_mb, H = cfg.hidden, S = cfg.seq;
  Acts& a = act(l, xs_slot);
  linear_backward(dx_full(xs_slot), a.att.data(), U(l + 1, 2), slot, gslot, acc, T, H, H_l, datt.data(), false);
  VT::CTen3 probs(a.probs.data(), static_cast<size_t>(mb_seqs * A_l), static_cast<size_t>(S), static_cast<size_t>(S));
  nn::Attention<float, Exec>::backward(cmat(datt.data(), T, H_l), cmat(a.qkv.data(), T, 3 * H_l), probs, A_l,
                                       mat(dprobs.data(), S, S), mat(dqkv.data(), T, 3 * H_l));
  linear_backward(dqkv.data(), a.n1.data(), U(l + 1, 1), slot, gslot, acc, T, 3 * H_l, H, dn.data(), false);
}

// the attention norm (mlp = false) or the mlp norm: dx += its backward
void Trainer::Impl::layer_bwd_norm(int l, bool mlp, int xs_slot, int slot, int gslot, bool acc) {
  Acts& a = act(l, xs_slot);
  norm_bwd(U(l + 1, mlp ? 3 : 0), (mlp ? a.x_mid : a.x_in).data(), (mlp ? a.rstd2 : a.rstd1).data(), xs_slot, slot,
           gslot, acc, true);
}

void Trainer::Impl::embed_bwd(int j, int xs_slot, int gslot, bool acc) {
  const int64_t T = tokens_mb, H = cfg.hidden;
  const Param& e = P("embed.weight");
  const Param& pe = P("pos_embed.weight");
  const float* dx = dx_full(xs_slot);
  nn::Embedding<float, Exec>::backward(inputs[static_cast<size_t>(j)], cmat(dx, T, H), v0, mat(gptr(e, gslot), V_l, H),
                                       *escratch, accum(e, acc));
  nn::PositionEmbedding<float, Exec>::backward(cmat(dx, T, H), mat(gptr(pe, gslot), cfg.seq, H), accum(pe, acc));
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

void Trainer::Impl::moe_route_fwd(int l, int xs_slot, int slot) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden, E = moe.experts, k = moe.top_k;
  MoeState& m = ms(l, xs_slot);
  Acts& a = act(l, xs_slot);
  Linear<float, Exec>::forward(cmat(a.n2.data(), T, H), cmat(pptr(U(l + 1, 4), slot), E, H),
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
    const int r = expert_owner[static_cast<size_t>(e)];
    const int64_t n = start[static_cast<size_t>(e + 1)];
    m.send_ec[static_cast<size_t>(r * E + e)] = static_cast<int32_t>(n);
    m.send_rows[static_cast<size_t>(r)] += static_cast<size_t>(n);
  }
  for (int64_t e = 0; e < E; ++e) start[static_cast<size_t>(e + 1)] += start[static_cast<size_t>(e)];
  auto hs = Kokkos::create_mirror_view(m.slot);
  auto hg = Kokkos::create_mirror_view(m.gate);
  for (int64_t c = 0; c < T * k; ++c) {
    hg(c) = m.route.gate[static_cast<size_t>(c)];
    hs(c) = m.route.kept[static_cast<size_t>(c)] ? start[static_cast<size_t>(m.route.expert[static_cast<size_t>(c)])]++
                                                 : -1;
  }
  Kokkos::deep_copy(m.slot, hs);
  Kokkos::deep_copy(m.gate, hg);
  MoeRows<float, Exec>::dispatch(cmat(a.n2.data(), T, H), m.slot, k, mat(m.xsend.data(), T * k, H));
  if (ep == 1) {
    m.recv_ec = m.send_ec;
    moe_recv_counts(l, xs_slot);
  }
}

void Trainer::Impl::moe_recv_counts(int l, int xs_slot) {
  MoeState& m = ms(l, xs_slot);
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

void Trainer::Impl::moe_experts_fwd(int l, int xs_slot, int slot) {
  using namespace nn;
  const int64_t H = cfg.hidden, F = F_l, E = moe.experts;
  MoeState& m = ms(l, xs_slot);
  const float* wgu = pptr(U(l + 1, 5), slot);
  const float* wd = pptr(U(l + 1, 6), slot);
  int64_t row = 0;
  for (int r = 0; r < ep; ++r)
    for (int64_t e = e0; e < e0 + E_l; ++e) {
      const int64_t n = m.recv_ec[static_cast<size_t>(r * E + e)];
      if (n == 0) continue;
      Linear<float, Exec>::forward(cmat(m.xr.data() + row * H, n, H), cmat(wgu + (e - e0) * 2 * F * H, 2 * F, H),
                                   mat(m.gu.data() + row * 2 * F, n, 2 * F));
      SwiGlu<float, Exec>::forward(cmat(m.gu.data() + row * 2 * F, n, 2 * F), mat(m.h.data() + row * F, n, F));
      Linear<float, Exec>::forward(cmat(m.h.data() + row * F, n, F), cmat(wd + (e - e0) * H * F, H, F),
                                   mat(m.yr.data() + row * H, n, H));
      row += n;
    }
}

void Trainer::Impl::moe_combine(int l, int xs_slot) {
  const int64_t T = tokens_mb, H = cfg.hidden, k = moe.top_k;
  MoeState& m = ms(l, xs_slot);
  nn::MoeRows<float, Exec>::combine(cmat(m.ysend.data(), T * k, H), m.slot, cvec(m.gate.data(), T * k), k,
                                    mat(ybuf.data(), T, H), false);
}

void Trainer::Impl::moe_combine_bwd(int l, int xs_slot) {
  const int64_t T = tokens_mb, H = cfg.hidden, k = moe.top_k;
  MoeState& m = ms(l, xs_slot);
  const float* dx = dx_full(xs_slot);
  nn::MoeRows<float, Exec>::gate_grad(cmat(dx, T, H), cmat(m.ysend.data(), T * k, H), m.slot, k,
                                      vec(moe_dgate.data(), T * k));
  nn::MoeRows<float, Exec>::combine_backward(cmat(dx, T, H), m.slot, cvec(m.gate.data(), T * k), k,
                                             mat(m.ysend.data(), T * k, H));
}

void Trainer::Impl::moe_experts_bwd(int l, int xs_slot, int slot, int gslot, bool acc) {
  using namespace nn;
  const int64_t H = cfg.hidden, F = F_l, E = moe.experts;
  MoeState& m = ms(l, xs_slot);
  const Param &pgu = U(l + 1, 5), &pd = U(l + 1, 6);
  const float* wgu = pptr(pgu, slot);
  const float* wd = pptr(pd, slot);
  float* dwgu = gptr(pgu, gslot);
  float* dwd = gptr(pd, gslot);
  // experts that received no rows add nothing: start from zero, then always accumulate
  if (!accum(pgu, acc)) Kokkos::deep_copy(vec(dwgu, pgu.lnumel), 0.0f);
  if (!accum(pd, acc)) Kokkos::deep_copy(vec(dwd, pd.lnumel), 0.0f);
  int64_t row = 0;
  for (int r = 0; r < ep; ++r)
    for (int64_t e = e0; e < e0 + E_l; ++e) {
      const int64_t n = m.recv_ec[static_cast<size_t>(r * E + e)];
      if (n == 0) continue;
      float* dy = m.yr.data() + row * H;  // dy in, dX out
      linear_bwd(dy, m.h.data() + row * F, wd + (e - e0) * H * F, dwd + (e - e0) * H * F, n, H, F, moe_dh.data(),
                 false, true);
      SwiGlu<float, Exec>::backward(cmat(moe_dh.data(), n, F), cmat(m.gu.data() + row * 2 * F, n, 2 * F),
                                    mat(moe_dgu.data(), n, 2 * F));
      linear_bwd(moe_dgu.data(), m.xr.data() + row * H, wgu + (e - e0) * 2 * F * H, dwgu + (e - e0) * 2 * F * H, n,
                 2 * F, H, dy, false, true);
      row += n;
    }
}

void Trainer::Impl::moe_router_bwd(int l, int xs_slot, int slot, int gslot, bool acc) {
  const int64_t T = tokens_mb, H = cfg.hidden, E = moe.experts, k = moe.top_k;
  MoeState& m = ms(l, xs_slot);
  const float* dxr = ep > 1 ? m.xsend.data() : m.yr.data();  // the experts' dX, back in dispatch order
  nn::MoeRows<float, Exec>::dispatch_backward(cmat(dxr, T * k, H), m.slot, k, mat(dn.data(), T, H), false);
  auto hdg = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), moe_dgate);
  auto hdl = Kokkos::create_mirror_view(moe_dlogits);
  moe_route_backward(m.route, hdg.data(), 1.0 / static_cast<double>(local_seqs), moe, hdl.data());
  Kokkos::deep_copy(moe_dlogits, hdl);
  // the router is replicated over tensor: its input gradient joins the partial dn once
  linear_backward(moe_dlogits.data(), act(l, xs_slot).n2.data(), U(l + 1, 4), slot, gslot, acc, T, E, H,
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
      FVec gv = zero == 2 && p.sharded ? p.gshard : p.grad;
      const float f = 1.0f / static_cast<float>(ep);
      float* gp = gv.data();
      Kokkos::parallel_for(
          "shardflow::train::expert_grad_scale", Kokkos::RangePolicy<Exec>(0, static_cast<int64_t>(gv.extent(0))),
          KOKKOS_LAMBDA(int64_t i) { gp[i] *= f; });
    }
    const float* g = p.grad.data();
    int64_t n = p.lnumel;
    if (p.sharded) {
      n = p.shard_numel();
      if (zero == 1) {
        if (p.O > 1) {
          detail::pack_rows(p.grad.data(), p.R, p.r0, p.gtmp.data(), p.nr, 0, p.O, p.nr, p.I, DType::F32);
          g = p.gtmp.data();
        } else {
          g = p.grad.data() + p.r0 * p.I;
        }
      } else if (zero == 2) {
        g = p.gshard.data();
      }
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
  grad_norm = std::sqrt(sq_total);
  const auto st = optim::make_step(opt, completed + 1, sq_total);
  for (auto& p : params) {
    if (!p.here) continue;
    float* pp_ = p.param.data();
    const float* gg = p.grad.data();
    int64_t n = p.lnumel;
    if (p.sharded) {
      n = p.shard_numel();
      if (zero == 1 || zero == 2) {
        if (p.O > 1) detail::pack_rows(p.param.data(), p.R, p.r0, p.pshard.data(), p.nr, 0, p.O, p.nr, p.I, DType::F32);
        pp_ = shard_param_ptr(p);
        if (zero == 1)
          gg = p.O > 1 ? p.gtmp.data() : p.grad.data() + p.r0 * p.I;
        else
          gg = p.gshard.data();
      }
    }
    optim::AdamW<float, Exec>::update(vec(pp_, n), cvec(gg, n), vec(p.m.data(), n), vec(p.v.data(), n), st, p.decay);
  }
}

// ---- the compiler ----------------------------------------------------------------------------

void Trainer::Impl::build_graph() {
  using graph::Task;
  const int L = static_cast<int>(cfg.layers);
  const int P_ = deck.strategy.prefetch;
  const int nslots = P_ + 1;
  const DType gdt = deck.strategy.gather_dtype, sdt = deck.strategy.grad_scatter_dtype;
  const std::string dp_key = dp_axes.empty() ? "" : graph::comm_key(*mesh, dp_axes);
  const std::string sh_key = shard_axes.empty() ? "" : graph::comm_key(*mesh, shard_axes);
  const std::string rp_key = repl_axes.empty() ? "" : graph::comm_key(*mesh, repl_axes);
  const std::string dpx_key = dpx_axes.empty() ? "" : graph::comm_key(*mesh, dpx_axes);
  const std::string rpx_key = replx_axes.empty() ? "" : graph::comm_key(*mesh, replx_axes);
  const std::string ep_key = ep > 1 ? graph::comm_key(*mesh, {axis::expert}) : "";
  const std::string tp_key = tp > 1 ? graph::comm_key(*mesh, {axis::tensor}) : "";
  const std::string pp_key = pp > 1 ? graph::comm_key(*mesh, {axis::pipeline}) : "";
  const int64_t T = tokens_mb, H = cfg.hidden;

  Task last;
  auto chain = [&](Task t) {
    if (last.valid()) last.precede(t);
    last = t;
  };

  const int m = static_cast<int>(micro);

  // The uses of parameters, in timeline order: F = [Fe] Fl.. [Hd], B = Bl.. [Be].
  enum Kind { Fe, Fl, Hd, Bl, Be };
  struct Use {
    Kind kind;
    int unit;
    int mb;
    int gather = -1;  // index into the gather list (stage 3), -1 when no parameters are needed
    int gslot = 0;
  };
  std::vector<Use> uses;
  std::vector<std::pair<size_t, size_t>> group_uses;
  for (const auto& g : order) {
    const size_t b = uses.size();
    const Chunk& ch = chunks[static_cast<size_t>(g.vc)];
    if (g.fwd) {
      if (ch.gc == 0) uses.push_back({Fe, 0, g.mb});
      for (int l = ch.layer_begin; l < ch.layer_end; ++l) uses.push_back({Fl, l + 1, g.mb});
      if (ch.gc == nchunks - 1) uses.push_back({Hd, L + 1, g.mb});
    } else {
      for (int l = ch.layer_end - 1; l >= ch.layer_begin; --l) uses.push_back({Bl, l + 1, g.mb});
      if (ch.gc == 0) uses.push_back({Be, 0, g.mb});
    }
    group_uses.emplace_back(b, uses.size());
  }
  auto is_bwd = [](Kind k) { return k == Hd || k == Bl || k == Be; };
  std::vector<int> gather_use;  // gather index -> use index
  int nback = 0;
  for (size_t k = 0; k < uses.size(); ++k) {
    if (uses[k].kind != Be) {
      uses[k].gather = static_cast<int>(gather_use.size());
      gather_use.push_back(static_cast<int>(k));
    }
    if (is_bwd(uses[k].kind)) uses[k].gslot = nback++ % 2;
  }
  std::vector<Task> first_of_use(uses.size()), last_of_use(uses.size());
  std::vector<std::vector<Task>> gathers_of(gather_use.size());
  std::vector<std::vector<Task>> grad_comm_of_use(uses.size());  // stage-3 reduce-scatters (slot readers)
  std::vector<Task> grad_sync;                                   // everything the optimizer waits for
  // ZeRO-3: a parameter's per-micro-batch reduce-scatters add into the same shard when they
  // complete, so each waits for the previous one (completion order is not issue order)
  std::vector<Task> last_scatter(params.size());
  int next_gather = 0;

  auto has_sharded = [&](int unit) {
    for (int pi : units[static_cast<size_t>(unit)])
      if (params[static_cast<size_t>(pi)].sharded) return true;
    return false;
  };
  auto emplace_gathers_upto = [&](int upto) {
    for (; next_gather <= upto && next_gather < static_cast<int>(gather_use.size()); ++next_gather) {
      const int g = next_gather;
      const Use& u = uses[static_cast<size_t>(gather_use[static_cast<size_t>(g)])];
      if (!has_sharded(u.unit)) continue;
      const int slot = g % nslots;
      // The previous gather into this slot fetched the same unit (e.g. the last layer's
      // forward, then the head, then its backward): the parameters do not change within a
      // step, so the slot still holds them. Its tasks preceded that earlier use, which
      // precedes this one; the next gather into the slot waits for this use as usual.
      if (g >= nslots && uses[static_cast<size_t>(gather_use[static_cast<size_t>(g - nslots)])].unit == u.unit)
        continue;
      for (int pi : units[static_cast<size_t>(u.unit)]) {
        Param& p = params[static_cast<size_t>(pi)];
        if (!p.sharded) continue;
        gathers.push_back(std::make_unique<detail::ShardGather>(*shard_comm, p.O, p.R, p.I, gdt, p.param.data(),
                                                                pslots[static_cast<size_t>(slot)].data() + p.slot_off));
        auto* op = gathers.back().get();
        staging += op->staging_bytes();
        Task t =
            graph.emplace_comm({sh_key, "all_gather", p.name + "@use" + std::to_string(g), p.lnumel, dtype_name(gdt)},
                               [op] { return op->start(); });
        t.name("gather " + p.name + " #" + std::to_string(g));
        // the slot is free once the use that last held it has run
        if (g >= nslots) last_of_use[static_cast<size_t>(gather_use[static_cast<size_t>(g - nslots)])].precede(t);
        gathers_of[static_cast<size_t>(g)].push_back(t);
      }
    }
  };

  auto all_reduce_task = [&](comm::Communicator* c, const std::string& key, float* buf, int64_t n,
                             const std::string& what) {
    Task t = graph.emplace_comm({key, "all_reduce", what, n, "f32"}, [c, buf, n] {
      return as_poller(c->all_reduce(buf, buf, static_cast<size_t>(n), DType::F32, comm::ReduceOp::Mean));
    });
    t.name("all_reduce " + what);
    return t;
  };
  // Tensor-parallel all-reduce (sum or max) between two compute segments of a use.
  auto tp_reduce = [&](float* buf, int64_t n, comm::ReduceOp op, const std::string& what) {
    auto* c = tp_comm;
    Task t = graph.emplace_comm({tp_key, "all_reduce", what, n, "f32"}, [c, buf, n, op] {
      return as_poller(c->all_reduce(buf, buf, static_cast<size_t>(n), DType::F32, op));
    });
    t.name("all_reduce " + what);
    return t;
  };

  Task start = graph.emplace([this] { sums_local[0] = sums_local[1] = sums_local[2] = 0; }).name("step.begin");
  chain(start);
  if (zero == 3) emplace_gathers_upto(P_);

  // Pipeline receives land in rings (rx: x from the previous chunk, rdx: dx from the next),
  // one slot per activation slot, and are posted as soon as their slot is free: the receive
  // of micro-batch j of a chunk with K slots waits only for the copy that moved micro-batch
  // j − K out of the slot, so it is issued right after that copy, K groups of the chunk
  // ahead of its consumer, and the transfer overlaps the compute in between. Receives from
  // one peer are posted in the order the peer sends (point-to-point order; with p = 2 both
  // neighbours are one rank), each as soon as its slot and its predecessors allow. A
  // receive depends on compute only, never on another transfer.
  const int prev_stage = (stage - 1 + pp) % pp, next_stage = (stage + 1) % pp;
  auto gidx = [m](int vc, int mb) { return static_cast<size_t>(vc * m + mb); };
  // what a pipeline message carries: x or dx of micro-batch mb for (global) chunk dest
  auto msg_name = [this](bool fwd, int dest, int mb) {
    return std::string(fwd ? "x" : "dx") + (vstages > 1 ? ".c" + std::to_string(dest) : "") + ".mb" +
           std::to_string(mb);
  };
  std::vector<Task> send_x(static_cast<size_t>(vstages * m)), send_dx(send_x.size());
  std::vector<Task> recv_x(send_x.size()), recv_dx(send_x.size());  // posted receives
  std::vector<Task> copied_x(send_x.size()), copied_dx(send_x.size());  // copies out of the rings
  struct Msg {
    bool fwd;  // x (into a forward group) or dx (into a backward group)
    int vc, mb;
  };
  std::map<int, std::vector<Msg>> inbox;  // peer stage -> what it sends this stage, in its order
  std::map<int, size_t> posted;           // peer stage -> messages posted so far
  if (pp > 1)
    for (int q : {prev_stage, next_stage}) {
      if (inbox.count(q)) continue;
      auto& box = inbox[q];
      posted[q] = 0;
      for (const Group& g : schedule(q)) {
        const int gq = g.vc * pp + q;  // the sender's chunk
        if (g.fwd && gq < nchunks - 1 && (gq + 1) % pp == stage) box.push_back({true, (gq + 1) / pp, g.mb});
        if (!g.fwd && gq > 0 && (gq - 1) % pp == stage) box.push_back({false, (gq - 1) / pp, g.mb});
      }
    }
  // posts what the copy `after` (none at the start) lets through; each receive posted here
  // waits for that copy (the one that emptied its slot, or a later one)
  auto post_ready = [&](Task after) {
    for (auto& [q, box] : inbox) {
      size_t& k = posted[q];
      for (; k < box.size(); ++k) {
        const Msg& msg = box[k];
        const int K = chunks[static_cast<size_t>(msg.vc)].slots;
        // the copy that empties the slot: not emplaced yet, so later messages from q wait too
        if (msg.mb >= K && !(msg.fwd ? copied_x : copied_dx)[gidx(msg.vc, msg.mb - K)].valid()) break;
        auto* c = pp_comm;
        float* ring = (msg.fwd ? rxs : rdxs)[static_cast<size_t>(slot_of(msg.vc, msg.mb))].data();
        const std::string what = msg_name(msg.fwd, msg.vc * pp + stage, msg.mb);
        const int peer = q;
        Task t = graph.emplace_comm({pp_key, "recv", what, Tr * H, "f32", peer}, [c, ring, peer, n = Tr * H] {
          return as_poller(c->recv(ring, static_cast<size_t>(n), DType::F32, peer));
        });
        t.name("recv " + what);
        if (after.valid()) after.precede(t);
        (msg.fwd ? recv_x : recv_dx)[gidx(msg.vc, msg.mb)] = t;
      }
    }
  };
  post_ready(Task());
  for (size_t gi = 0; gi < order.size(); ++gi) {
    const Group grp = order[gi];
    const int j = grp.mb;
    const Chunk& ch = chunks[static_cast<size_t>(grp.vc)];
    const int K = ch.slots;
    const int xsl = slot_of(grp.vc, j);
    const std::string mbs = (vstages > 1 ? ".v" + std::to_string(grp.vc) : "") + ".mb" + std::to_string(j);
    float* xbuf = xs[static_cast<size_t>(xsl)].data();
    float* dxbuf = dxs[static_cast<size_t>(xsl)].data();
    // pipeline: move the received input from its ring slot into the group's buffer (once the
    // send that read the buffer for micro-batch j − K is done), then post the receives that
    // the freed ring slot lets through
    if (grp.fwd ? ch.gc > 0 : ch.gc < nchunks - 1) {
      Task rv = (grp.fwd ? recv_x : recv_dx)[gidx(grp.vc, j)];
      SHARDFLOW_REQUIRE(rv.valid(), "pipeline schedule: stage ", stage, " needs ", grp.fwd ? "x" : "dx", mbs,
                        " before its receive can be posted (the sender's order and this stage's slots disagree)");
      const float* ring = (grp.fwd ? rxs : rdxs)[static_cast<size_t>(xsl)].data();
      float* dst = grp.fwd ? xbuf : dxbuf;
      Task cp = graph.emplace([this, ring, dst] {
                       nn::Residual<float, Exec>::copy(cmat(ring, Tr, cfg.hidden), mat(dst, Tr, cfg.hidden));
                     }).name((grp.fwd ? "recv.x" : "recv.dx") + mbs);
      chain(cp);
      rv.precede(cp);
      if (j >= K) {
        Task prev_send = (grp.fwd ? send_x : send_dx)[gidx(grp.vc, j - K)];
        if (prev_send.valid()) prev_send.precede(cp);
      }
      (grp.fwd ? copied_x : copied_dx)[gidx(grp.vc, j)] = cp;
      post_ready(cp);
    }
    bool group_first = true;
    std::vector<Task> pending;  // collectives the next compute segment (or the send) waits for
    for (size_t k = group_uses[gi].first; k < group_uses[gi].second; ++k) {
      const Use u = uses[k];
      const bool acc = j > 0;
      const int slot = u.gather >= 0 ? u.gather % nslots : 0;
      const int gs = u.gslot;
      if (zero == 3 && u.gather >= 0) emplace_gathers_upto(u.gather + P_);
      const std::string ls = u.unit >= 1 && u.unit <= L ? std::to_string(u.unit - 1) : "";
      const std::string lp = "layers." + ls;
      const std::string prefix = u.kind == Fl ? "fwd.layer" + ls + "." : u.kind == Bl ? "bwd.layer" + ls + "."
                                 : u.kind == Hd                        ? "head."
                                 : u.kind == Fe                        ? "fwd."
                                                                       : "bwd.";
      std::vector<Task> segs;  // compute segments of this use, collectives between
      // Compute is gathered into one segment until a collective needs what it wrote.
      std::vector<graph::ComputeFn> work;
      std::string work_name;
      auto run = [&](graph::ComputeFn fn, const std::string& part) {
        work.push_back(std::move(fn));
        work_name += (work_name.empty() ? "" : "+") + part;
      };
      auto flush = [&] {
        if (work.empty()) return;
        Task c = graph.emplace([fns = std::move(work)] {
                        for (const auto& f : fns) f();
                      }).name(prefix + work_name + mbs);
        work.clear();
        work_name.clear();
        chain(c);
        for (auto& t : pending) t.precede(c);
        pending.clear();
        segs.push_back(c);
      };
      // a collective after the work so far (this use's last segment, else the step's last
      // compute task and this group's receive)
      auto comm_then = [&](Task t) {
        flush();
        if (!segs.empty()) {
          segs.back().precede(t);
        } else if (last.valid()) {
          last.precede(t);
        }
        pending.push_back(t);
      };
      auto ar = [&](float* buf, int64_t n, comm::ReduceOp op, const std::string& what) {
        comm_then(tp_reduce(buf, n, op, what + mbs));
      };
      auto ag = [&](const float* rows, float* full, const std::string& what) {  // rows [Tr, H] -> full [T, H]
        gathers.push_back(std::make_unique<detail::ShardGather>(*tp_comm, 1, T, H, DType::F32, rows, full));
        auto* op = gathers.back().get();
        staging += op->staging_bytes();
        Task t = graph.emplace_comm({tp_key, "all_gather", what + mbs, T * H, "f32"}, [op] { return op->start(); });
        t.name("all_gather " + what + mbs);
        comm_then(t);
      };
      auto rs = [&](const float* full, float* rows, const std::string& what) {  // partial [T, H] -> summed rows
        scatters.push_back(std::make_unique<detail::ShardReduceScatter>(*tp_comm, 1, T, H, DType::F32, full, rows,
                                                                        false, comm::ReduceOp::Sum));
        auto* op = scatters.back().get();
        staging += op->staging_bytes();
        Task t = graph.emplace_comm({tp_key, "reduce_scatter", what + mbs, T * H, "f32"}, [op] { return op->start(); });
        t.name("reduce_scatter " + what + mbs);
        comm_then(t);
      };
      auto ep_counts = [&](MoeState* mst, const std::string& what) {
        auto* c = ep_comm;
        const int64_t E = moe.experts;
        Task t = graph.emplace_comm({ep_key, "all_to_all", what + mbs, E, "i32"}, [c, mst, E] {
          return as_poller(c->all_to_all(mst->send_ec.data(), mst->recv_ec.data(), static_cast<size_t>(E), DType::I32));
        });
        t.name("all_to_all " + what + mbs);
        comm_then(t);
      };
      // rows of the dispatch order to the experts (out) or back (!out)
      auto ep_a2a = [&](MoeState* mst, bool out, const float* send, float* rbuf, const std::string& what) {
        auto* c = ep_comm;
        const int n = ep;
        Task t = graph.emplace_comm(
            {ep_key, "all_to_allv", what + mbs, T * moe.top_k * H, "f32"}, [c, mst, out, send, rbuf, n, H] {
              std::vector<size_t> sc(static_cast<size_t>(n)), rc(static_cast<size_t>(n));
              for (size_t r = 0; r < static_cast<size_t>(n); ++r) {
                sc[r] = (out ? mst->send_rows[r] : mst->recv_rows[r]) * static_cast<size_t>(H);
                rc[r] = (out ? mst->recv_rows[r] : mst->send_rows[r]) * static_cast<size_t>(H);
              }
              return as_poller(c->all_to_allv(send, rbuf, comm::CollectivePlan::all_to_allv(DType::F32, sc, rc)));
            });
        t.name("all_to_allv " + what + mbs);
        comm_then(t);
      };
      // the partial sums of a row-parallel block: all-reduced, or reduce-scattered to this
      // rank's rows under sequence parallelism
      auto tp_sum = [&](float* full, float* rows, const std::string& what) {
        if (sp)
          rs(full, rows, what);
        else if (tp > 1)
          ar(full, T * H, comm::ReduceOp::Sum, what);
      };
      auto dx_gather = [&](const std::string& what) {  // sp: the whole dx before a row-parallel backward
        if (sp) ag(dxbuf, dxfull.data(), what);
      };
      switch (u.kind) {
        case Fe:
          run([this, j, xsl, slot] { embed_fwd_a(j, xsl, slot); }, "embed");
          if (sp) {  // the positions joined the partial sums on tensor rank 0
            rs(ybuf.data(), xbuf, "embed");
          } else {
            if (tp > 1) ar(xbuf, T * H, comm::ReduceOp::Sum, "embed");
            run([this, xsl, slot] { embed_fwd_b(xsl, slot); }, "pos_embed");
          }
          break;
        case Fl: {
          const int l = u.unit - 1;
          Acts& a = act(l, xsl);
          run([this, l, xsl, slot] { layer_fwd_norm1(l, xsl, slot); }, "attn_norm");
          if (sp) ag(a.n1.data() + t0 * H, a.n1.data(), lp + ".attn_norm.out");
          run([this, l, xsl, slot] { layer_fwd_attn(l, xsl, slot); }, "attn");
          tp_sum(ybuf.data(), yl.data(), lp + ".attn.out");
          run([this, l, xsl, slot] { layer_fwd_norm2(l, xsl, slot); }, "mlp_norm");
          if (sp) ag(a.n2.data() + t0 * H, a.n2.data(), lp + ".mlp_norm.out");
          if (is_moe_layer(l)) {
            MoeState* mst = &ms(l, xsl);
            run([this, l, xsl, slot] { moe_route_fwd(l, xsl, slot); }, "route");
            if (ep > 1) {
              ep_counts(mst, lp + ".experts.counts");
              run([this, l, xsl] { moe_recv_counts(l, xsl); }, "plan");
              ep_a2a(mst, true, mst->xsend.data(), mst->xr.data(), lp + ".experts.dispatch");
            }
            run([this, l, xsl, slot] { moe_experts_fwd(l, xsl, slot); }, "experts");
            if (ep > 1) ep_a2a(mst, false, mst->yr.data(), mst->ysend.data(), lp + ".experts.return");
            run([this, l, xsl] { moe_combine(l, xsl); }, "combine");
            tp_sum(ybuf.data(), yl.data(), lp + ".experts.out");
          } else {
            run([this, l, xsl, slot] { layer_fwd_mlp(l, xsl, slot); }, "mlp");
            tp_sum(ybuf.data(), yl.data(), lp + ".mlp.down");
          }
          run([this, l, xsl] { layer_fwd_end(l, xsl); }, "residual");
          break;
        }
        case Hd:
          run([this, xsl, slot] { head_norm(xsl, slot); }, "final_norm");
          if (sp) ag(nf.data() + t0 * H, nf.data(), "final_norm.out");
          run([this, slot] { head_a(slot); }, "logits");
          if (tp > 1) ar(row_max.data(), T, comm::ReduceOp::Max, "loss.row_max");
          run([this, j] { head_b(j); }, "sumexp");
          if (tp > 1) ar(stats.data(), 2 * T, comm::ReduceOp::Sum, "loss.stats");
          run([this, j, slot, gs, acc] { head_c(j, slot, gs, acc); }, "loss");
          tp_sum(dn.data(), dnl.data(), "lm_head.dx");
          run([this, xsl, slot, gs, acc] { head_d(xsl, slot, gs, acc); }, "final_norm_bwd");
          break;
        case Bl: {
          const int l = u.unit - 1;
          dx_gather(lp + ".dx");
          if (is_moe_layer(l)) {
            MoeState* mst = &ms(l, xsl);
            run([this, l, xsl] { moe_combine_bwd(l, xsl); }, "combine");
            if (tp > 1) ar(moe_dgate.data(), T * moe.top_k, comm::ReduceOp::Sum, lp + ".experts.dgate");
            if (ep > 1) ep_a2a(mst, true, mst->ysend.data(), mst->yr.data(), lp + ".experts.dy");
            run([this, l, xsl, slot, gs, acc] { moe_experts_bwd(l, xsl, slot, gs, acc); }, "experts");
            if (ep > 1) ep_a2a(mst, false, mst->yr.data(), mst->xsend.data(), lp + ".experts.dx");
            run([this, l, xsl, slot, gs, acc] { moe_router_bwd(l, xsl, slot, gs, acc); }, "router");
          } else {
            run([this, l, xsl, slot, gs, acc] { layer_bwd_mlp(l, xsl, slot, gs, acc); }, "mlp");
          }
          tp_sum(dn.data(), dnl.data(), lp + ".mlp_norm.dout");
          run([this, l, xsl, slot, gs, acc] { layer_bwd_norm(l, true, xsl, slot, gs, acc); }, "mlp_norm");
          dx_gather(lp + ".mlp.dx");
          run([this, l, xsl, slot, gs, acc] { layer_bwd_attn(l, xsl, slot, gs, acc); }, "attn");
          tp_sum(dn.data(), dnl.data(), lp + ".attn_norm.dout");
          run([this, l, xsl, slot, gs, acc] { layer_bwd_norm(l, false, xsl, slot, gs, acc); }, "attn_norm");
          break;
        }
        case Be:
          dx_gather("embed.dx");
          run([this, j, xsl, gs, acc] { embed_bwd(j, xsl, gs, acc); }, "embed");
          break;
      }
      flush();
      first_of_use[k] = segs.front();
      last_of_use[k] = segs.back();
      Task c0 = segs.front(), c = segs.back();
      if (group_first) {
        group_first = false;
        // the slot's buffers are written again only after the sends that read them are done:
        // the embedding writes x on the first stage, the head writes dx on the last stage
        if (j >= K && grp.fwd) {
          if (ch.gc == 0 && send_x[gidx(grp.vc, j - K)].valid()) send_x[gidx(grp.vc, j - K)].precede(c0);
          if (ch.gc == nchunks - 1 && send_dx[gidx(grp.vc, j - K)].valid()) send_dx[gidx(grp.vc, j - K)].precede(c0);
        }
      }
      if (zero == 3 && u.gather >= 0)
        for (auto& g : gathers_of[static_cast<size_t>(u.gather)]) g.precede(c0);
      // a backward use reuses the grad slot of the backward use two before it
      if (zero == 3 && is_bwd(u.kind)) {
        for (size_t q = k; q-- > 0;) {
          const Use& w = uses[q];
          if (is_bwd(w.kind) && w.gslot == u.gslot) {
            for (auto& t : grad_comm_of_use[q]) t.precede(c0);
            break;
          }
        }
      }
      if (!is_bwd(u.kind)) continue;
      const bool last_mb = j == micro - 1;
      for (int pi : units[static_cast<size_t>(u.unit)]) {
        Param& p = params[static_cast<size_t>(pi)];
        Task ready = c;
        // expert weights are synchronised over the data-parallel axes other than expert
        comm::Communicator* pdp = p.expert ? dpx_comm : dp_comm;
        comm::Communicator* prp = p.expert ? replx_comm : repl_comm;
        const int pdp_size = p.expert ? dpx_size : dp_size, prp_size = p.expert ? replx_size : repl_size;
        const std::string& pdp_key = p.expert ? dpx_key : dp_key;
        const std::string& prp_key = p.expert ? rpx_key : rp_key;
        // the gradient shard is complete after the reduce-scatter t, and its mean over the
        // replicas of the shard group (HSDP) when there are any
        auto shard_done = [&](Task t, float* shard) {
          if (prp_size > 1) {
            Task a = all_reduce_task(prp, prp_key, shard, p.shard_numel(), p.name + ".grad_shard");
            t.precede(a);
            grad_sync.push_back(a);
          } else {
            grad_sync.push_back(t);
          }
        };
        // sequence parallel: a norm gain's gradient sums over this rank's rows only
        if (sp && p.gain && ((zero == 3 && p.sharded) || last_mb)) {
          float* g = zero == 3 && p.sharded ? gslots[static_cast<size_t>(u.gslot)].data() + p.slot_off : p.grad.data();
          ready = tp_reduce(g, p.lnumel, comm::ReduceOp::Sum, p.name + ".grad_rows" + mbs);
          c.precede(ready);
          if (zero == 3 && p.sharded)
            grad_comm_of_use[k].push_back(ready);
          else if (pdp_size == 1)
            grad_sync.push_back(ready);
        }
        if (zero == 3 && p.sharded) {
          scatters.push_back(std::make_unique<detail::ShardReduceScatter>(
              *shard_comm, p.O, p.R, p.I, sdt, gslots[static_cast<size_t>(u.gslot)].data() + p.slot_off, p.grad.data(),
              acc));
          auto* op = scatters.back().get();
          staging += op->staging_bytes();
          Task t = graph.emplace_comm({sh_key, "reduce_scatter", p.name + ".grad" + mbs, p.lnumel, dtype_name(sdt)},
                                      [op] { return op->start(); });
          t.name("reduce_scatter " + p.name + mbs);
          ready.precede(t);
          Task& prev = last_scatter[static_cast<size_t>(pi)];
          if (prev.valid()) prev.precede(t);
          prev = t;
          grad_comm_of_use[k].push_back(t);
          if (last_mb) shard_done(t, p.grad.data());
          continue;
        }
        if (!last_mb || pdp_size == 1) continue;
        if (zero == 2 && p.sharded) {
          scatters.push_back(std::make_unique<detail::ShardReduceScatter>(*shard_comm, p.O, p.R, p.I, sdt,
                                                                          p.grad.data(), p.gshard.data(), false));
          auto* op = scatters.back().get();
          staging += op->staging_bytes();
          Task t = graph.emplace_comm({sh_key, "reduce_scatter", p.name + ".grad", p.lnumel, dtype_name(sdt)},
                                      [op] { return op->start(); });
          t.name("reduce_scatter " + p.name);
          ready.precede(t);
          shard_done(t, p.gshard.data());
        } else {
          Task a = all_reduce_task(pdp, pdp_key, p.grad.data(), p.lnumel, p.name + ".grad");
          ready.precede(a);
          grad_sync.push_back(a);
        }
      }
    }
    // pipeline: pass this group's output on (x to the next chunk's stage, dx to the previous)
    if (grp.fwd ? ch.gc < nchunks - 1 : ch.gc > 0) {
      auto* c = pp_comm;
      const int peer = grp.fwd ? next_stage : prev_stage;
      const float* out = grp.fwd ? xbuf : dxbuf;
      const std::string what = msg_name(grp.fwd, grp.fwd ? ch.gc + 1 : ch.gc - 1, j);
      Task s = graph.emplace_comm({pp_key, "send", what, Tr * H, "f32", peer}, [c, out, peer, n = Tr * H] {
        return as_poller(c->send(out, static_cast<size_t>(n), DType::F32, peer));
      });
      s.name("send " + what);
      last.precede(s);
      for (auto& t : pending) t.precede(s);
      (grp.fwd ? send_x : send_dx)[gidx(grp.vc, j)] = s;
    }
  }

  // Loss: the global sum over the batch slices (and from the last stage to every stage).
  Task loss_sum;
  if (loss_comm != nullptr) {
    const std::string key = graph::comm_key(*mesh, loss_axes);
    loss_sum = graph.emplace_comm({key, "all_reduce", "loss", 3, "f64"}, [this] {
      return as_poller(loss_comm->all_reduce(sums_local, sums_global, 3, DType::F64, comm::ReduceOp::Sum));
    });
    loss_sum.name("all_reduce loss");
    last.precede(loss_sum);
  }

  // Global gradient norm over shards, tensor slices and stages.
  Task norm = graph.emplace([this] { norm_local(); }).name("grad_norm.local");
  chain(norm);
  for (auto& t : grad_sync) t.precede(norm);
  Task norm_ready = norm;
  if (norm_comm != nullptr) {
    const std::string key = graph::comm_key(*mesh, norm_axes);
    Task t = graph.emplace_comm({key, "all_reduce", "grad_norm_sq", 1, "f64"}, [this] {
      return as_poller(norm_comm->all_reduce(&sq_local, &sq_total, 1, DType::F64, comm::ReduceOp::Sum));
    });
    t.name("all_reduce grad_norm_sq");
    norm.precede(t);
    norm_ready = t;
  }
  Task upd = graph.emplace([this] { update(); }).name("adamw");
  chain(upd);
  norm_ready.precede(upd);
  if (zero == 1 || zero == 2) {
    for (auto& p : params) {
      if (!p.sharded || !p.here) continue;
      gathers.push_back(std::make_unique<detail::ShardGather>(*shard_comm, p.O, p.R, p.I, DType::F32,
                                                              shard_param_ptr(p), p.param.data()));
      auto* op = gathers.back().get();
      staging += op->staging_bytes();
      Task t = graph.emplace_comm({sh_key, "all_gather", p.name, p.lnumel, "f32"}, [op] { return op->start(); });
      t.name("gather " + p.name);
      upd.precede(t);
    }
  }
  if (loss_sum.valid()) loss_sum.precede(upd);
}

// ---- Trainer ---------------------------------------------------------------------------------

Trainer::Trainer(const Deck& deck, const Mesh& mesh, comm::CommSet& comms)
    : impl_(std::make_unique<Impl>(deck, mesh, comms)) {}
Trainer::~Trainer() = default;

StepStats Trainer::train_step() {
  auto& I = *impl_;
  const int64_t step = I.completed + 1;
  for (int64_t j = 0; j < I.micro; ++j) {
    auto b = I.loader->slice(step, I.slice.begin + j * I.mb_seqs, I.mb_seqs);
    auto hi = Kokkos::create_mirror_view(I.inputs[static_cast<size_t>(j)]);
    auto ht = Kokkos::create_mirror_view(I.targets[static_cast<size_t>(j)]);
    for (int64_t t = 0; t < I.tokens_mb; ++t) {
      hi(t) = b.inputs[static_cast<size_t>(t)];
      ht(t) = b.targets[static_cast<size_t>(t)];
    }
    Kokkos::deep_copy(I.inputs[static_cast<size_t>(j)], hi);
    Kokkos::deep_copy(I.targets[static_cast<size_t>(j)], ht);
  }
  auto rs = I.executor.run(I.graph);
  if (I.loss_comm == nullptr) std::copy(I.sums_local, I.sums_local + 3, I.sums_global);
  I.completed = step;
  StepStats s;
  s.step = step;
  s.aux_loss = I.sums_global[1] / static_cast<double>(I.deck.train.global_batch);
  s.dropped = static_cast<int64_t>(I.sums_global[2]);
  s.loss = I.sums_global[0] / static_cast<double>(I.deck.train.global_batch * I.cfg.seq) + s.aux_loss;
  s.step_time_s = rs.total_s;
  s.compute_s = rs.compute_s;
  s.comm_wait_s = rs.comm_wait_s;
  s.tokens_per_s = static_cast<double>(I.deck.train.global_batch * I.cfg.seq) / std::max(rs.total_s, 1e-12);
  s.grad_norm = I.grad_norm;
  return s;
}

int64_t Trainer::step() const { return impl_->completed; }
void Trainer::set_step(int64_t c) { impl_->completed = c; }

std::vector<std::string> Trainer::parameter_names() const {
  std::vector<std::string> n;
  for (const auto& p : impl_->params) n.push_back(p.name);
  return n;
}

std::vector<float> Trainer::gather_parameter(const std::string& name) {
  auto& I = *impl_;
  auto it = I.index.find(name);
  SHARDFLOW_REQUIRE(it != I.index.end(), "no parameter named '", name, "'");
  auto& p = I.params[static_cast<size_t>(it->second)];
  const Layout lay = I.param_layout(p, false);
  const int world = I.mesh->shape().size();
  int64_t most = 1;
  for (int r = 0; r < world; ++r) most = std::max(most, lay.local_numel(r));
  // every rank contributes its box (padded to the largest), then assembles the whole tensor
  std::vector<float> send(static_cast<size_t>(most), 0.0f), recv(static_cast<size_t>(most * world));
  const int64_t mine = lay.local_numel(I.mesh->rank());
  if (mine > 0) {
    auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), p.param);
    std::copy(h.data(), h.data() + mine, send.begin());
  }
  auto req = I.comms->world().all_gather(send.data(), recv.data(), static_cast<size_t>(most), DType::F32);
  req.wait();
  std::vector<float> out(static_cast<size_t>(numel(p.shape)));
  for (int r = 0; r < world; ++r)
    if (lay.local_numel(r) > 0)
      box_copy(recv.data() + static_cast<size_t>(r) * static_cast<size_t>(most), lay.global_shape(), lay.box(r),
               out.data(), false);
  return out;
}

std::vector<StateTensor> Trainer::state_tensors() {
  auto& I = *impl_;
  std::vector<StateTensor> out;
  const int me = I.mesh->rank();
  for (auto& p : I.params) {
    Layout opt_layout = I.param_layout(p, true);
    Layout par_layout = I.param_layout(p, false);
    out.push_back({p.name, par_layout, p.here ? p.param.data() : nullptr, par_layout.local_numel(me)});
    out.push_back({p.name + ".adam_m", opt_layout, p.here ? p.m.data() : nullptr, opt_layout.local_numel(me)});
    out.push_back({p.name + ".adam_v", opt_layout, p.here ? p.v.data() : nullptr, opt_layout.local_numel(me)});
  }
  return out;
}

graph::TaskGraph& Trainer::graph() { return impl_->graph; }
graph::Executor& Trainer::executor() { return impl_->executor; }

MemoryStats Trainer::memory() const {
  const auto& I = *impl_;
  MemoryStats m;
  for (const auto& p : I.params) {
    m.params += view_bytes(p.param) + view_bytes(p.pshard);
    m.grads += view_bytes(p.grad) + view_bytes(p.gshard) + view_bytes(p.gtmp);
    m.optimizer += view_bytes(p.m) + view_bytes(p.v);
  }
  for (const auto& s : I.pslots) m.transient += view_bytes(s);
  for (const auto& s : I.gslots) m.transient += view_bytes(s);
  m.transient += I.staging;
  for (const auto& per : I.acts)
    for (const auto& a : per)
      for (const FVec* v : {&a.x_in, &a.n1, &a.rstd1, &a.qkv, &a.probs, &a.att, &a.x_mid, &a.n2, &a.rstd2, &a.gu, &a.h})
        m.activations += view_bytes(*v);
  for (const auto& per : I.moes)
    for (const auto& s : per) {
      for (const FVec* v : {&s.logits, &s.gate, &s.xsend, &s.gu, &s.h, &s.yr}) m.activations += view_bytes(*v);
      if (I.ep > 1)
        for (const FVec* v : {&s.xr, &s.ysend}) m.activations += view_bytes(*v);
      m.activations += static_cast<int64_t>(s.slot.extent(0) * sizeof(int64_t));
    }
  for (const FVec* v : {&I.moe_dgate, &I.moe_dh, &I.moe_dgu, &I.moe_dlogits}) m.activations += view_bytes(*v);
  for (const auto& v : I.xs) m.activations += view_bytes(v);
  for (const auto& v : I.dxs) m.activations += view_bytes(v);
  for (const auto& v : I.rxs) m.activations += view_bytes(v);
  for (const auto& v : I.rdxs) m.activations += view_bytes(v);
  for (const FVec* v : {&I.yl, &I.dnl, &I.dxfull, &I.ybuf, &I.dn, &I.dh, &I.dgu, &I.datt, &I.dqkv, &I.dprobs, &I.nf,
                        &I.rstdf, &I.logits, &I.row_max, &I.stats})
    m.activations += view_bytes(*v);
  return m;
}

double Trainer::model_flops_per_step() const {
  return nn::gpt_model_flops(impl_->cfg, impl_->deck.train.global_batch * impl_->cfg.seq);
}

}  // namespace shardflow::train
