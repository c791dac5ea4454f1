#include "train/trainer.hpp"

#include <sys/resource.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <map>

#include "comm/plan.hpp"
#include "comm/request.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "graph/verify.hpp"
#include "nn/gpt.hpp"
#include "nn/init.hpp"
#include "nn/kernels.hpp"
#include "optim/adamw.hpp"
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

int64_t view_bytes(const FVec& v) { return static_cast<int64_t>(v.extent(0) * sizeof(float)); }

}  // namespace

struct Trainer::Impl {
  // ---- configuration --------------------------------------------------------------
  Deck deck;
  const Mesh* mesh;
  comm::CommSet* comms;
  nn::GptConfig cfg;
  optim::AdamWConfig opt;
  int zero = 0;
  std::vector<std::string> dp_axes, shard_axes, repl_axes;
  comm::Communicator* dp_comm = nullptr;
  comm::Communicator* shard_comm = nullptr;
  comm::Communicator* repl_comm = nullptr;
  int dp_size = 1, shard_size = 1, repl_size = 1;
  int64_t micro = 1, mb_seqs = 1, local_seqs = 1, tokens_mb = 1;
  data::Slice slice;
  std::unique_ptr<data::DataLoader> loader;

  // ---- parameters -------------------------------------------------------------------
  struct Param {
    std::string name;
    Shape shape;
    int64_t rows = 0, cols = 0, numel = 0;
    bool decay = false;
    int unit = 0;
    bool sharded = false;
    int64_t row0 = 0, nrows = 0;
    FVec param, grad, gshard, m, v;
    int64_t slot_off = -1;
    int64_t shard_numel() const { return nrows * cols; }
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
  std::vector<Acts> acts;
  FVec x, dx, dn, dh, dgu, datt, dqkv, dprobs, nf, rstdf, logits, row_max, stats;
  std::vector<TVec> inputs, targets;
  std::unique_ptr<nn::Embedding<float, Exec>::Scratch> escratch;

  // ---- step state ------------------------------------------------------------------------
  int64_t completed = 0;
  double loss_local = 0, loss_global = 0;
  double sq_sharded_local = 0, sq_sharded = 0, sq_repl = 0, grad_norm = 0;
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

  // pointers to a unit's parameters / gradients for a use
  float* pptr(const Param& p, int slot) { return (zero == 3 && p.sharded) ? pslots[slot].data() + p.slot_off : p.param.data(); }
  float* gptr(const Param& p, int gslot) { return (zero == 3 && p.sharded) ? gslots[gslot].data() + p.slot_off : p.grad.data(); }
  const Param& P(const std::string& n) const { return params[static_cast<size_t>(index.at(n))]; }
  Param& P(const std::string& n) { return params[static_cast<size_t>(index.at(n))]; }

  // compute
  void embed_fwd(int j, int slot);
  void layer_fwd(int l, int slot);
  void head(int j, int slot, int gslot, bool acc);
  void layer_bwd(int l, int slot, int gslot, bool acc);
  void embed_bwd(int j, int gslot, bool acc);
  void norm_and_update();
};

Trainer::Impl::Impl(const Deck& d, const Mesh& m, comm::CommSet& c) : deck(d), mesh(&m), comms(&c) {
  cfg.vocab = deck.model.vocab;
  cfg.seq = deck.model.seq;
  cfg.hidden = deck.model.hidden;
  cfg.heads = deck.model.heads;
  cfg.ffn = deck.model.ffn;
  cfg.layers = deck.model.layers;
  cfg.validate();
  SHARDFLOW_REQUIRE_INPUT(!deck.model.is_moe(), "model.experts = ", deck.model.experts,
                          ": mixture-of-experts layers are not supported by this training step yet");
  for (const char* axis : {"tensor", "pipeline", "expert"})
    SHARDFLOW_REQUIRE_INPUT(m.shape().axis_size_or_1(axis) == 1, "mesh.", axis, " = ",
                            m.shape().axis_size_or_1(axis), ": this training step supports the data and fsdp axes");
  opt.lr = deck.train.lr;
  opt.warmup = deck.train.warmup;
  opt.validate();
  zero = deck.strategy.zero_stage;
  SHARDFLOW_REQUIRE_INPUT(zero >= 0 && zero <= 3, "strategy.zero_stage = ", zero, " must be 0, 1, 2 or 3 (",
                          deck.where("strategy.zero_stage"), ")");
  SHARDFLOW_REQUIRE_INPUT(!(zero == 0 && m.shape().axis_size_or_1("fsdp") > 1), "mesh.fsdp = ",
                          m.shape().axis_size_or_1("fsdp"),
                          " shards the model, which needs strategy.zero_stage >= 1 (it is 0; ",
                          deck.where("strategy.zero_stage"), ")");
  SHARDFLOW_REQUIRE_INPUT(deck.strategy.prefetch >= 0, "strategy.prefetch = ", deck.strategy.prefetch,
                          " must be >= 0");
  setup_groups();
  setup_params();
  setup_acts();
  loader = std::make_unique<data::DataLoader>(data::Corpus::load(deck.train.data), static_cast<uint64_t>(deck.train.seed),
                                              deck.train.global_batch, cfg.seq);
  init_params();
  build_graph();
  graph.validate();
  graph::verify(graph, m);
}

void Trainer::Impl::setup_groups() {
  const auto& shape = mesh->shape();
  for (const char* a : {"data", "fsdp"})
    if (shape.has_axis(a)) dp_axes.push_back(a);
  dp_size = shape.group_size(dp_axes);
  if (zero >= 1) {
    if (shape.axis_size_or_1("fsdp") > 1) shard_axes = {"fsdp"};
    else if (shape.axis_size_or_1("data") > 1) shard_axes = {"data"};
  }
  for (const auto& a : dp_axes)
    if (std::find(shard_axes.begin(), shard_axes.end(), a) == shard_axes.end()) repl_axes.push_back(a);
  shard_size = shape.group_size(shard_axes);
  repl_size = shape.group_size(repl_axes);
  if (!dp_axes.empty()) dp_comm = &comms->group(dp_axes);
  if (!shard_axes.empty()) shard_comm = &comms->group(shard_axes);
  if (!repl_axes.empty()) repl_comm = &comms->group(repl_axes);
  micro = deck.train.micro_batches;
  const int64_t B = deck.train.global_batch;
  SHARDFLOW_REQUIRE_INPUT(micro >= 1, "train.micro_batches = ", micro, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(B % (dp_size * micro) == 0, "train.global_batch = ", B,
                          " is not divisible by the data-parallel size ", dp_size, " x train.micro_batches ", micro,
                          " (", deck.where("train.global_batch"), ")");
  local_seqs = B / dp_size;
  mb_seqs = local_seqs / micro;
  tokens_mb = mb_seqs * cfg.seq;
  slice = data::replica_slice(B, dp_size, dp_axes.empty() ? 0 : shape.group_index(mesh->rank(), mesh->canonical_axes(dp_axes)));
}

void Trainer::Impl::setup_params() {
  const auto infos = nn::gpt_parameters(cfg);
  const int L = static_cast<int>(cfg.layers);
  units.assign(static_cast<size_t>(L + 2), {});
  std::vector<int64_t> unit_numel(static_cast<size_t>(L + 2), 0);
  for (const auto& info : infos) {
    Param p;
    p.name = info.name;
    p.shape = info.shape;
    p.numel = info.numel;
    p.rows = info.shape[0];
    p.cols = p.numel / std::max<int64_t>(1, p.rows);
    p.decay = info.weight_decay;
    if (p.name.rfind("layers.", 0) == 0) p.unit = 1 + std::stoi(p.name.substr(7));
    else if (p.name == "embed.weight" || p.name == "pos_embed.weight") p.unit = 0;
    else p.unit = L + 1;
    p.sharded = zero >= 1 && shard_size > 1 && p.numel >= deck.strategy.fsdp_min_weight_size;
    const int me = shard_axes.empty() ? 0 : mesh->shape().group_index(mesh->rank(), mesh->canonical_axes(shard_axes));
    p.row0 = p.sharded ? split_offset(p.rows, shard_size, me) : 0;
    p.nrows = p.sharded ? split_extent(p.rows, shard_size, me) : p.rows;
    const std::string nm = p.name;
    const bool shard_store = zero == 3 && p.sharded;
    p.param = FVec(nm, static_cast<size_t>(shard_store ? p.shard_numel() : p.numel));
    p.grad = FVec(nm + ".grad", static_cast<size_t>(shard_store ? p.shard_numel() : p.numel));
    if (zero == 2 && p.sharded) p.gshard = FVec(nm + ".grad_shard", static_cast<size_t>(p.shard_numel()));
    const int64_t opt_n = p.sharded ? p.shard_numel() : p.numel;
    p.m = FVec(nm + ".adam_m", static_cast<size_t>(opt_n));
    p.v = FVec(nm + ".adam_v", static_cast<size_t>(opt_n));
    if (shard_store) {
      p.slot_off = unit_numel[static_cast<size_t>(p.unit)];
      unit_numel[static_cast<size_t>(p.unit)] += p.numel;
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
  const int64_t T = tokens_mb, H = cfg.hidden, F = cfg.ffn, S = cfg.seq, A = cfg.heads, Vv = cfg.vocab;
  auto mk = [](const char* n, int64_t c) { return FVec(std::string(n), static_cast<size_t>(c)); };
  for (int64_t l = 0; l < cfg.layers; ++l) {
    Acts a;
    a.x_in = mk("x_in", T * H);
    a.n1 = mk("n1", T * H);
    a.rstd1 = mk("rstd1", T);
    a.qkv = mk("qkv", T * 3 * H);
    a.probs = mk("probs", mb_seqs * A * S * S);
    a.att = mk("att", T * H);
    a.x_mid = mk("x_mid", T * H);
    a.n2 = mk("n2", T * H);
    a.rstd2 = mk("rstd2", T);
    a.gu = mk("gu", T * 2 * F);
    a.h = mk("h", T * F);
    acts.push_back(a);
  }
  x = mk("x", T * H);
  dx = mk("dx", T * H);
  dn = mk("dn", T * H);
  dh = mk("dh", T * F);
  dgu = mk("dgu", T * 2 * F);
  datt = mk("datt", T * H);
  dqkv = mk("dqkv", T * 3 * H);
  dprobs = mk("dprobs", S * S);
  nf = mk("nf", T * H);
  rstdf = mk("rstdf", T);
  logits = mk("logits", T * Vv);
  row_max = mk("row_max", T);
  stats = mk("stats", T * 2);
  for (int64_t j = 0; j < micro; ++j) {
    inputs.emplace_back("inputs", static_cast<size_t>(T));
    targets.emplace_back("targets", static_cast<size_t>(T));
  }
  escratch = std::make_unique<nn::Embedding<float, Exec>::Scratch>(Vv, T);
}

void Trainer::Impl::init_params() {
  for (auto& p : params) {
    Box box{Shape(p.shape.size(), 0), p.shape};
    if (zero == 3 && p.sharded) {
      box.offset[0] = p.row0;
      box.extent[0] = p.nrows;
    }
    nn::Init<float, Exec>::fill_box(vec(p.param.data(), static_cast<int64_t>(p.param.extent(0))),
                                    static_cast<uint64_t>(deck.train.seed), p.name, p.shape, box);
  }
}

// ---- compute tasks ------------------------------------------------------------------------

void Trainer::Impl::embed_fwd(int j, int slot) {
  const int64_t T = tokens_mb, H = cfg.hidden;
  const Param& e = P("embed.weight");
  const Param& pe = P("pos_embed.weight");
  nn::Embedding<float, Exec>::forward(inputs[static_cast<size_t>(j)], cmat(pptr(e, slot), cfg.vocab, H), 0,
                                      mat(x.data(), T, H));
  nn::PositionEmbedding<float, Exec>::forward(cmat(pptr(pe, slot), cfg.seq, H), mat(x.data(), T, H));
}

void Trainer::Impl::layer_fwd(int l, int slot) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden, F = cfg.ffn, A = cfg.heads, S = cfg.seq;
  const auto& u = units[static_cast<size_t>(l + 1)];
  const Param &g1 = params[u[0]], &wqkv = params[u[1]], &wout = params[u[2]], &g2 = params[u[3]],
              &wgu = params[u[4]], &wdown = params[u[5]];
  Acts& a = acts[static_cast<size_t>(l)];
  Residual<float, Exec>::copy(cmat(x.data(), T, H), mat(a.x_in.data(), T, H));
  RmsNorm<float, Exec>::forward(cmat(a.x_in.data(), T, H), cvec(pptr(g1, slot), H), mat(a.n1.data(), T, H),
                                vec(a.rstd1.data(), T));
  Linear<float, Exec>::forward(cmat(a.n1.data(), T, H), cmat(pptr(wqkv, slot), 3 * H, H), mat(a.qkv.data(), T, 3 * H));
  VT::Ten3 probs(a.probs.data(), static_cast<size_t>(mb_seqs * A), static_cast<size_t>(S), static_cast<size_t>(S));
  Attention<float, Exec>::forward(cmat(a.qkv.data(), T, 3 * H), A, probs, mat(a.att.data(), T, H));
  Residual<float, Exec>::copy(cmat(a.x_in.data(), T, H), mat(a.x_mid.data(), T, H));
  Linear<float, Exec>::forward(cmat(a.att.data(), T, H), cmat(pptr(wout, slot), H, H), mat(a.x_mid.data(), T, H), true);
  RmsNorm<float, Exec>::forward(cmat(a.x_mid.data(), T, H), cvec(pptr(g2, slot), H), mat(a.n2.data(), T, H),
                                vec(a.rstd2.data(), T));
  Linear<float, Exec>::forward(cmat(a.n2.data(), T, H), cmat(pptr(wgu, slot), 2 * F, H), mat(a.gu.data(), T, 2 * F));
  SwiGlu<float, Exec>::forward(cmat(a.gu.data(), T, 2 * F), mat(a.h.data(), T, F));
  Residual<float, Exec>::copy(cmat(a.x_mid.data(), T, H), mat(x.data(), T, H));
  Linear<float, Exec>::forward(cmat(a.h.data(), T, F), cmat(pptr(wdown, slot), H, F), mat(x.data(), T, H), true);
}

void Trainer::Impl::head(int j, int slot, int gslot, bool acc) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden, Vv = cfg.vocab;
  const Param& gf = P("final_norm.weight");
  const Param& lm = P("lm_head.weight");
  RmsNorm<float, Exec>::forward(cmat(x.data(), T, H), cvec(pptr(gf, slot), H), mat(nf.data(), T, H),
                                vec(rstdf.data(), T));
  Linear<float, Exec>::forward(cmat(nf.data(), T, H), cmat(pptr(lm, slot), Vv, H), mat(logits.data(), T, Vv));
  const double scale = 1.0 / static_cast<double>(local_seqs * cfg.seq);
  loss_local += CrossEntropy<float, Exec>::forward_backward(
      cmat(logits.data(), T, Vv), targets[static_cast<size_t>(j)], scale, mat(logits.data(), T, Vv),
      vec(row_max.data(), T), mat(stats.data(), T, 2));
  // backward through lm_head and the final norm
  Linear<float, Exec>::backward_input(cmat(logits.data(), T, Vv), cmat(pptr(lm, slot), Vv, H), mat(dn.data(), T, H));
  Linear<float, Exec>::backward_weight(cmat(logits.data(), T, Vv), cmat(nf.data(), T, H),
                                       mat(gptr(lm, gslot), Vv, H), acc && !(zero == 3 && lm.sharded));
  RmsNorm<float, Exec>::backward(cmat(dn.data(), T, H), cmat(x.data(), T, H), cvec(pptr(gf, slot), H),
                                 cvec(rstdf.data(), T), mat(dx.data(), T, H), vec(gptr(gf, gslot), H), false,
                                 acc && !(zero == 3 && gf.sharded));
}

void Trainer::Impl::layer_bwd(int l, int slot, int gslot, bool acc) {
  using namespace nn;
  const int64_t T = tokens_mb, H = cfg.hidden, F = cfg.ffn, A = cfg.heads, S = cfg.seq;
  const auto& u = units[static_cast<size_t>(l + 1)];
  const Param &g1 = params[u[0]], &wqkv = params[u[1]], &wout = params[u[2]], &g2 = params[u[3]],
              &wgu = params[u[4]], &wdown = params[u[5]];
  auto A_ = [&](const Param& p) { return acc && !(zero == 3 && p.sharded); };
  Acts& a = acts[static_cast<size_t>(l)];
  Linear<float, Exec>::backward_input(cmat(dx.data(), T, H), cmat(pptr(wdown, slot), H, F), mat(dh.data(), T, F));
  Linear<float, Exec>::backward_weight(cmat(dx.data(), T, H), cmat(a.h.data(), T, F), mat(gptr(wdown, gslot), H, F),
                                       A_(wdown));
  SwiGlu<float, Exec>::backward(cmat(dh.data(), T, F), cmat(a.gu.data(), T, 2 * F), mat(dgu.data(), T, 2 * F));
  Linear<float, Exec>::backward_input(cmat(dgu.data(), T, 2 * F), cmat(pptr(wgu, slot), 2 * F, H), mat(dn.data(), T, H));
  Linear<float, Exec>::backward_weight(cmat(dgu.data(), T, 2 * F), cmat(a.n2.data(), T, H),
                                       mat(gptr(wgu, gslot), 2 * F, H), A_(wgu));
  RmsNorm<float, Exec>::backward(cmat(dn.data(), T, H), cmat(a.x_mid.data(), T, H), cvec(pptr(g2, slot), H),
                                 cvec(a.rstd2.data(), T), mat(dx.data(), T, H), vec(gptr(g2, gslot), H), true, A_(g2));
  Linear<float, Exec>::backward_input(cmat(dx.data(), T, H), cmat(pptr(wout, slot), H, H), mat(datt.data(), T, H));
  Linear<float, Exec>::backward_weight(cmat(dx.data(), T, H), cmat(a.att.data(), T, H), mat(gptr(wout, gslot), H, H),
                                       A_(wout));
  VT::CTen3 probs(a.probs.data(), static_cast<size_t>(mb_seqs * A), static_cast<size_t>(S), static_cast<size_t>(S));
  Attention<float, Exec>::backward(cmat(datt.data(), T, H), cmat(a.qkv.data(), T, 3 * H), probs, A,
                                   mat(dprobs.data(), S, S), mat(dqkv.data(), T, 3 * H));
  Linear<float, Exec>::backward_input(cmat(dqkv.data(), T, 3 * H), cmat(pptr(wqkv, slot), 3 * H, H),
                                      mat(dn.data(), T, H));
  Linear<float, Exec>::backward_weight(cmat(dqkv.data(), T, 3 * H), cmat(a.n1.data(), T, H),
                                       mat(gptr(wqkv, gslot), 3 * H, H), A_(wqkv));
  RmsNorm<float, Exec>::backward(cmat(dn.data(), T, H), cmat(a.x_in.data(), T, H), cvec(pptr(g1, slot), H),
                                 cvec(a.rstd1.data(), T), mat(dx.data(), T, H), vec(gptr(g1, gslot), H), true, A_(g1));
}

void Trainer::Impl::embed_bwd(int j, int gslot, bool acc) {
  const int64_t T = tokens_mb, H = cfg.hidden;
  const Param& e = P("embed.weight");
  const Param& pe = P("pos_embed.weight");
  nn::Embedding<float, Exec>::backward(inputs[static_cast<size_t>(j)], cmat(dx.data(), T, H), 0,
                                       mat(gptr(e, gslot), cfg.vocab, H), *escratch, acc && !(zero == 3 && e.sharded));
  nn::PositionEmbedding<float, Exec>::backward(cmat(dx.data(), T, H), mat(gptr(pe, gslot), cfg.seq, H),
                                               acc && !(zero == 3 && pe.sharded));
}

void Trainer::Impl::norm_and_update() {
  const double total = sq_sharded + sq_repl;
  grad_norm = std::sqrt(total);
  const auto st = optim::make_step(opt, completed + 1, total);
  for (auto& p : params) {
    float* pp = p.param.data();
    const float* gg = p.grad.data();
    int64_t n = p.numel;
    if (p.sharded) {
      n = p.shard_numel();
      if (zero == 1) {
        pp += p.row0 * p.cols;
        gg += p.row0 * p.cols;
      } else if (zero == 2) {
        pp += p.row0 * p.cols;
        gg = p.gshard.data();
      }
    }
    optim::AdamW<float, Exec>::update(vec(pp, n), cvec(gg, n), vec(p.m.data(), n), vec(p.v.data(), n), st, p.decay);
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

  Task last;
  auto chain = [&](Task t) {
    if (last.valid()) last.precede(t);
    last = t;
  };

  // The uses of each micro-batch: F0, F1..FL, H, BL..B1, B0 (kind, unit).
  enum Kind { Fe, Fl, Hd, Bl, Be };
  struct Use {
    Kind kind;
    int unit;
    int mb;
    int gather = -1;  // index into the gather list (stage 3), -1 when no parameters are needed
    int gslot = 0;
  };
  std::vector<Use> uses;
  int nback = 0;
  for (int j = 0; j < micro; ++j) {
    uses.push_back({Fe, 0, j});
    for (int l = 0; l < L; ++l) uses.push_back({Fl, l + 1, j});
    uses.push_back({Hd, L + 1, j});
    for (int l = L - 1; l >= 0; --l) uses.push_back({Bl, l + 1, j});
    uses.push_back({Be, 0, j});
  }
  std::vector<int> gather_use;  // gather index -> use index
  for (size_t k = 0; k < uses.size(); ++k) {
    if (uses[k].kind != Be) {
      uses[k].gather = static_cast<int>(gather_use.size());
      gather_use.push_back(static_cast<int>(k));
    }
    if (uses[k].kind == Hd || uses[k].kind == Bl || uses[k].kind == Be) uses[k].gslot = nback++ % 2;
  }
  std::vector<Task> compute_of_use(uses.size());
  std::vector<std::vector<Task>> gathers_of(gather_use.size());
  std::vector<std::vector<Task>> grad_comm_of_use(uses.size());  // stage-3 reduce-scatters (slot readers)
  std::vector<Task> grad_sync;                                   // everything the optimizer waits for
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
      for (int pi : units[static_cast<size_t>(u.unit)]) {
        Param& p = params[static_cast<size_t>(pi)];
        if (!p.sharded) continue;
        gathers.push_back(std::make_unique<detail::ShardGather>(*shard_comm, p.rows, p.cols, gdt, p.param.data(),
                                                                pslots[static_cast<size_t>(slot)].data() + p.slot_off));
        auto* op = gathers.back().get();
        staging += op->staging_bytes();
        Task t = graph.emplace_comm({sh_key, "all_gather", p.name + "@use" + std::to_string(g), p.numel, dtype_name(gdt)},
                                    [op] { return op->start(); });
        t.name("gather " + p.name + " #" + std::to_string(g));
        // the slot is free once the use that last held it has run
        if (g >= nslots) compute_of_use[static_cast<size_t>(gather_use[static_cast<size_t>(g - nslots)])].precede(t);
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

  Task start = graph.emplace([this] {
    loss_local = 0;
  }).name("step.begin");
  chain(start);
  if (zero == 3) emplace_gathers_upto(P_);

  for (size_t k = 0; k < uses.size(); ++k) {
    const Use u = uses[k];
    const int j = u.mb;
    const bool acc = j > 0;
    const int slot = u.gather >= 0 ? u.gather % nslots : 0;
    if (zero == 3 && u.gather >= 0) emplace_gathers_upto(u.gather + P_);
    Task c;
    const std::string mbs = ".mb" + std::to_string(j);
    switch (u.kind) {
      case Fe: c = graph.emplace([this, j, slot] { embed_fwd(j, slot); }).name("fwd.embed" + mbs); break;
      case Fl: {
        const int l = u.unit - 1;
        c = graph.emplace([this, l, slot] { layer_fwd(l, slot); }).name("fwd.layer" + std::to_string(l) + mbs);
        break;
      }
      case Hd: {
        const int gs = u.gslot;
        c = graph.emplace([this, j, slot, gs, acc] { head(j, slot, gs, acc); }).name("loss+head" + mbs);
        break;
      }
      case Bl: {
        const int l = u.unit - 1, gs = u.gslot;
        c = graph.emplace([this, l, slot, gs, acc] { layer_bwd(l, slot, gs, acc); })
                .name("bwd.layer" + std::to_string(l) + mbs);
        break;
      }
      case Be: {
        const int gs = u.gslot;
        c = graph.emplace([this, j, gs, acc] { embed_bwd(j, gs, acc); }).name("bwd.embed" + mbs);
        break;
      }
    }
    chain(c);
    compute_of_use[k] = c;
    if (zero == 3 && u.gather >= 0)
      for (auto& g : gathers_of[static_cast<size_t>(u.gather)]) g.precede(c);
    // a backward use reuses the grad slot of the backward use two before it
    if (zero == 3 && (u.kind == Hd || u.kind == Bl || u.kind == Be)) {
      for (size_t q = k; q-- > 0;) {
        const Use& w = uses[q];
        if ((w.kind == Hd || w.kind == Bl || w.kind == Be) && w.gslot == u.gslot) {
          for (auto& t : grad_comm_of_use[q]) t.precede(c);
          break;
        }
      }
    }
    if (!(u.kind == Hd || u.kind == Bl || u.kind == Be)) continue;
    const bool last_mb = j == micro - 1;
    for (int pi : units[static_cast<size_t>(u.unit)]) {
      Param& p = params[static_cast<size_t>(pi)];
      if (zero == 3 && p.sharded) {
        scatters.push_back(std::make_unique<detail::ShardReduceScatter>(
            *shard_comm, p.rows, p.cols, sdt, gslots[static_cast<size_t>(u.gslot)].data() + p.slot_off,
            p.grad.data(), acc));
        auto* op = scatters.back().get();
        staging += op->staging_bytes();
        Task t = graph.emplace_comm({sh_key, "reduce_scatter", p.name + ".grad" + mbs, p.numel, dtype_name(sdt)},
                                    [op] { return op->start(); });
        t.name("reduce_scatter " + p.name + mbs);
        c.precede(t);
        grad_comm_of_use[k].push_back(t);
        if (last_mb) {
          if (repl_size > 1) {
            Task a = all_reduce_task(repl_comm, rp_key, p.grad.data(), p.shard_numel(), p.name + ".grad_shard");
            t.precede(a);
            grad_sync.push_back(a);
          } else {
            grad_sync.push_back(t);
          }
        }
        continue;
      }
      if (!last_mb || dp_size == 1) continue;
      if (zero == 2 && p.sharded) {
        scatters.push_back(std::make_unique<detail::ShardReduceScatter>(*shard_comm, p.rows, p.cols, sdt,
                                                                        p.grad.data(), p.gshard.data(), false));
        auto* op = scatters.back().get();
        staging += op->staging_bytes();
        Task t = graph.emplace_comm({sh_key, "reduce_scatter", p.name + ".grad", p.numel, dtype_name(sdt)},
                                    [op] { return op->start(); });
        t.name("reduce_scatter " + p.name);
        c.precede(t);
        if (repl_size > 1) {
          Task a = all_reduce_task(repl_comm, rp_key, p.gshard.data(), p.shard_numel(), p.name + ".grad_shard");
          t.precede(a);
          grad_sync.push_back(a);
        } else {
          grad_sync.push_back(t);
        }
      } else {
        Task a = all_reduce_task(dp_comm, dp_key, p.grad.data(), p.numel, p.name + ".grad");
        c.precede(a);
        grad_sync.push_back(a);
      }
    }
  }

  // Loss: the global sum over the dp group.
  Task loss_sum;
  if (dp_size > 1) {
    loss_sum = graph.emplace_comm({dp_key, "all_reduce", "loss", 1, "f64"}, [this] {
      return as_poller(dp_comm->all_reduce(&loss_local, &loss_global, 1, DType::F64, comm::ReduceOp::Sum));
    });
    loss_sum.name("all_reduce loss");
    last.precede(loss_sum);
  }

  // Global gradient norm: sharded squares summed over the shard group, replicated ones local.
  Task norm_local = graph.emplace([this] {
    double sh = 0, rp = 0;
    for (auto& p : params) {
      if (p.sharded) {
        const float* g = zero == 1 ? p.grad.data() + p.row0 * p.cols : (zero == 2 ? p.gshard.data() : p.grad.data());
        sh += optim::AdamW<float, Exec>::sum_of_squares(cvec(g, p.shard_numel()));
      } else {
        rp += optim::AdamW<float, Exec>::sum_of_squares(cvec(p.grad.data(), p.numel));
      }
    }
    sq_sharded_local = sh;
    sq_sharded = sh;
    sq_repl = rp;
  }).name("grad_norm.local");
  chain(norm_local);
  for (auto& t : grad_sync) t.precede(norm_local);
  Task norm_ready = norm_local;
  bool any_sharded = false;
  for (auto& p : params) any_sharded = any_sharded || p.sharded;
  if (any_sharded && shard_size > 1) {
    Task t = graph.emplace_comm({sh_key, "all_reduce", "grad_norm_sq", 1, "f64"}, [this] {
      return as_poller(shard_comm->all_reduce(&sq_sharded_local, &sq_sharded, 1, DType::F64, comm::ReduceOp::Sum));
    });
    t.name("all_reduce grad_norm_sq");
    norm_local.precede(t);
    norm_ready = t;
  }
  Task update = graph.emplace([this] { norm_and_update(); }).name("adamw");
  chain(update);
  norm_ready.precede(update);
  if (zero == 1 || zero == 2) {
    for (auto& p : params) {
      if (!p.sharded) continue;
      gathers.push_back(std::make_unique<detail::ShardGather>(*shard_comm, p.rows, p.cols, DType::F32,
                                                              p.param.data() + p.row0 * p.cols, p.param.data()));
      auto* op = gathers.back().get();
      staging += op->staging_bytes();
      Task t = graph.emplace_comm({sh_key, "all_gather", p.name, p.numel, "f32"}, [op] { return op->start(); });
      t.name("gather " + p.name);
      update.precede(t);
    }
  }
  if (loss_sum.valid()) loss_sum.precede(update);
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
  if (I.dp_size == 1) I.loss_global = I.loss_local;
  I.completed = step;
  StepStats s;
  s.step = step;
  s.loss = I.loss_global / static_cast<double>(I.deck.train.global_batch * I.cfg.seq);
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
  std::vector<float> out(static_cast<size_t>(p.numel));
  if (I.zero == 3 && p.sharded) {
    detail::ShardGather g(*I.shard_comm, p.rows, p.cols, DType::F32, p.param.data(), out.data());
    auto poll = g.start();
    while (!poll()) {
    }
  } else {
    auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), p.param);
    std::copy(h.data(), h.data() + p.numel, out.begin());
  }
  return out;
}

std::vector<StateTensor> Trainer::state_tensors() {
  auto& I = *impl_;
  std::vector<StateTensor> out;
  const auto& shape = I.mesh->shape();
  for (auto& p : I.params) {
    PartitionSpec spec = PartitionSpec::replicated(p.shape.size());
    if (p.sharded) spec[0] = I.mesh->canonical_axes(I.shard_axes);
    Layout opt_layout(p.shape, spec, shape);
    Layout par_layout = (I.zero == 3) ? opt_layout : Layout::replicated(p.shape, shape);
    out.push_back({p.name, par_layout, p.param.data(), par_layout.local_numel(I.mesh->rank())});
    out.push_back({p.name + ".adam_m", opt_layout, p.m.data(), opt_layout.local_numel(I.mesh->rank())});
    out.push_back({p.name + ".adam_v", opt_layout, p.v.data(), opt_layout.local_numel(I.mesh->rank())});
  }
  return out;
}

graph::TaskGraph& Trainer::graph() { return impl_->graph; }
graph::Executor& Trainer::executor() { return impl_->executor; }

MemoryStats Trainer::memory() const {
  const auto& I = *impl_;
  MemoryStats m;
  for (const auto& p : I.params) {
    m.params += view_bytes(p.param);
    m.grads += view_bytes(p.grad) + view_bytes(p.gshard);
    m.optimizer += view_bytes(p.m) + view_bytes(p.v);
  }
  for (const auto& s : I.pslots) m.transient += view_bytes(s);
  for (const auto& s : I.gslots) m.transient += view_bytes(s);
  m.transient += I.staging;
  for (const auto& a : I.acts)
    for (const FVec* v : {&a.x_in, &a.n1, &a.rstd1, &a.qkv, &a.probs, &a.att, &a.x_mid, &a.n2, &a.rstd2, &a.gu, &a.h})
      m.activations += view_bytes(*v);
  for (const FVec* v : {&I.x, &I.dx, &I.dn, &I.dh, &I.dgu, &I.datt, &I.dqkv, &I.dprobs, &I.nf, &I.rstdf, &I.logits,
                        &I.row_max, &I.stats})
    m.activations += view_bytes(*v);
  return m;
}

double Trainer::model_flops_per_step() const {
  return nn::gpt_model_flops(impl_->cfg, impl_->deck.train.global_batch * impl_->cfg.seq);
}

}  // namespace shardflow::train
