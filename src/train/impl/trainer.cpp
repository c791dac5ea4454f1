// The trainer: compiles this rank's step (compile/compiler.hpp), allocates the buffers of
// its BufferPlan, binds every task to a kernel call (step_kernels.cpp) or a non-blocking
// collective on this rank's communicators, and runs it step after step.
#include "train/trainer.hpp"

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "comm/control.hpp"
#include "comm/plan.hpp"
#include "comm/request.hpp"
#include "compile/summary.hpp"
#include "core/error.hpp"
#include "core/gemm.hpp"
#include "core/memory.hpp"
#include "graph/verify.hpp"
#include "mesh/axes.hpp"
#include "nn/init.hpp"
#include "train/impl/trainer_impl.hpp"

namespace shardflow::train {

using namespace kern;

namespace {

std::function<bool()> as_poller(comm::Request r) {
  auto req = std::make_shared<comm::Request>(std::move(r));
  return [req] { return req->test(); };
}

int64_t view_bytes(const FVec& v) { return static_cast<int64_t>(v.extent(0) * sizeof(float)); }
int64_t view_bytes(const kern::HVec& v) { return static_cast<int64_t>(v.extent(0) * sizeof(uint16_t)); }

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

Trainer::Impl::Impl(const Deck& d, const Mesh& m, comm::CommSet& c, bool evaluate)
    : deck(d), mesh(&m), comms(&c), desc(d.model) {
  memory::install_tracker();
  memory_baseline = memory::reset_peak();
  cfg = nn::GptConfig::from(deck.model);
  cfg.validate();
  opt.lr = deck.train.lr;
  opt.warmup = deck.train.warmup;
  opt.validate();
  zero = deck.strategy.zero_stage;
  // the LayoutPlan validates the mesh against the model and the strategy (zero stage,
  // fsdp without ZeRO, tensor/pipeline/expert sizes), the step shape the batch and schedule
  plan = std::make_unique<parallel::LayoutPlan>(compile::layout_plan(deck, m.shape()));
  prog = compile::compile_step(deck, *plan, m.rank(),
                               evaluate ? compile::StepMode::Evaluate : compile::StepMode::Train);
  const compile::StepShape& s = prog.shape;
  tp = s.tp;
  tc = s.tc;
  ep = s.ep;
  ec = s.ec;
  sp = s.sp;
  shard_size = s.shard_size;
  shard_index = s.shard_index;
  first_stage = s.first_stage;
  last_stage = s.last_stage;
  A_l = s.A_l;
  H_l = s.H_l;
  llama = s.llama;
  QKV_l = s.qkv_cols();
  rot_heads = s.A_l + s.K_l;
  kvmap = nn::KvMap{s.K_l, s.heads / s.kv_heads, s.a0, s.k0};
  cp = s.cp;
  cc = s.cc;
  seq_local = s.seq_local;
  F_l = s.F_l;
  V_l = s.V_l;
  v0 = s.v0;
  E_l = s.E_l;
  e0 = s.e0;
  Tr = s.Tr;
  t0 = s.t0;
  micro = s.micro;
  mb_seqs = s.mb_seqs;
  local_seqs = s.local_seqs;
  tokens_mb = s.tokens_mb;
  if (deck.model.is_moe()) {
    moe.experts = s.experts;
    moe.top_k = s.top_k;
    moe.seq = cfg.seq;
    moe.capacity_factor = deck.model.capacity_factor;
    moe.aux_coef = deck.model.aux_loss_coef;
  }
  const auto& batch = s.groups.samples;
  slice = data::replica_slice(s.global_batch, s.sample_size,
                              batch.empty() ? 0 : m.shape().group_index(m.rank(), m.canonical_axes(batch)));
  check_memory();
  agree_gemm16();
  allocate();
  if (!evaluate)
    loader = std::make_unique<data::DataLoader>(data::Corpus::load(deck.train.data),
                                                static_cast<uint64_t>(deck.train.seed), deck.train.global_batch,
                                                cfg.seq);
  init_params();
  bind();
  graph.validate();
  graph::verify(graph, m);
}

namespace {
// MemAvailable of /proc/meminfo in bytes, 0 when unknown
double available_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (f >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024.0;
  return 0;
}
std::string gib(double bytes) {  // GiB, with MiB for small sizes (three significant digits)
  char b[48];
  if (bytes < 1073741824.0)
    std::snprintf(b, sizeof b, "%.3g MiB", bytes / 1048576.0);
  else
    std::snprintf(b, sizeof b, "%.2f GiB", bytes / 1073741824.0);
  return b;
}
}  // namespace

namespace {
/// The peak (compile::predict_peak of a fresh run) of the worst of `ranks` for deck d, or
/// -1 when this mesh or strategy cannot run d.
double predicted_peak(const Deck& d, const std::vector<int>& ranks) {
  try {
    const parallel::LayoutPlan lp = compile::layout_plan(d, d.mesh.to_mesh_shape());
    double worst = 0;
    for (int r : ranks)
      worst = std::max(worst, static_cast<double>(compile::predict_peak(compile::compile_step(d, lp, r), 0, 0).peak()));
    return worst;
  } catch (const InputError&) {
    return -1;
  }
}
}  // namespace

// A configuration of the same model on the same ranks whose predicted peak fits `limit`:
// higher ZeRO stages, the ZeRO group over fsdp, full recomputation and more micro-batches,
// alone and together, in that order (the planner's compile of each candidate). Checks every
// rank up to 64 ranks, else this one. "" when none fits.
std::string Trainer::Impl::configuration_that_fits(double limit) const {
  const int world = deck.mesh.size();
  std::vector<int> ranks;
  if (world <= 64) {
    for (int r = 0; r < world; ++r) ranks.push_back(r);
  } else {
    ranks.push_back(mesh->rank());
  }
  struct Candidate {
    Deck d;
    std::string sets;
  };
  std::vector<Candidate> meshes;  // the mesh and stage changes first
  const int group = deck.mesh.fsdp > 1 ? deck.mesh.fsdp : deck.mesh.data;
  for (int z = deck.strategy.zero_stage + 1; z <= 3 && group > 1; ++z) {
    Candidate c{deck, "strategy.zero_stage=" + std::to_string(z)};
    c.d.strategy.zero_stage = z;
    meshes.push_back(c);
  }
  if (deck.mesh.data > 1 && deck.mesh.fsdp == 1) {
    Candidate c{deck, "mesh.data=1 mesh.fsdp=" + std::to_string(deck.mesh.data) + " strategy.zero_stage=3"};
    c.d.mesh.fsdp = deck.mesh.data;
    c.d.mesh.data = 1;
    c.d.strategy.zero_stage = 3;
    meshes.push_back(c);
  }
  std::vector<Candidate> all = meshes;
  std::vector<Candidate> base{{deck, ""}};
  base.insert(base.end(), meshes.begin(), meshes.end());
  auto join = [](const std::string& a, const std::string& b) { return a.empty() ? b : a + " " + b; };
  if (deck.strategy.recompute != Recompute::Full && deck.model.experts == 0)
    for (const auto& b : base) {
      Candidate c{b.d, join(b.sets, "strategy.recompute=\"full\"")};
      c.d.strategy.recompute = Recompute::Full;
      all.push_back(c);
    }
  if (deck.train.precision == DType::F32) {  // 16-bit kept activations (train.precision)
    const size_t n = all.size();
    std::vector<Candidate> plain = base;
    plain.insert(plain.end(), all.begin() + static_cast<long>(meshes.size()), all.begin() + static_cast<long>(n));
    for (const auto& b : plain) {
      Candidate c{b.d, join(b.sets, "train.precision=\"bf16\"")};
      c.d.train.precision = DType::BF16;
      all.push_back(c);
    }
  }
  const size_t with_recompute = all.size();
  for (int64_t f : {2, 4}) {
    const int64_t m = deck.train.micro_batches * f;
    for (size_t i = 0; i < with_recompute; ++i) {
      Candidate c{all[i].d, join(all[i].sets, "train.micro_batches=" + std::to_string(m))};
      c.d.train.micro_batches = m;
      all.push_back(c);
    }
  }
  for (const auto& c : all) {
    const double p = predicted_peak(c.d, ranks);
    if (p >= 0 && p <= limit) return "--set " + c.sets + " (predicted peak " + gib(p) + ")";
  }
  return "";
}

// The memory a rank may use: train.memory_limit_gib, else the node's MemAvailable shared by
// its ranks (0: unknown). `source` says which.
double Trainer::Impl::memory_limit(std::string* source) const {
  double limit = deck.train.memory_limit_gib * 1073741824.0;
  *source = "train.memory_limit_gib = " + std::to_string(deck.train.memory_limit_gib) + " (" +
            deck.where("train.memory_limit_gib") + ")";
  if (limit <= 0) {
    const comm::Control control(mesh->world());
    const int local = control.node_ranks();
    const double avail = available_memory_bytes();
    limit = avail / local;
    *source = "the node's available memory " + gib(avail) + " shared by its " + std::to_string(local) +
              " rank(s); set train.memory_limit_gib to change it";
  }
  return limit;
}

std::string Trainer::Impl::memory_message(const std::string& what, double bytes, double limit,
                                          const std::string& source) const {
  using compile::BufferClass;
  auto b = [this](BufferClass c) { return compile::step_bytes(prog, c); };
  const compile::PeakPrediction pp = compile::predict_peak(prog, 0, 0);
  // params, grads, optimizer, rings + staging, activations (+ inputs and scalars), initialisation
  const double part[6] = {b(BufferClass::Params), b(BufferClass::Grads), b(BufferClass::Optimizer),
                          b(BufferClass::Transient),  // rings and the pooled staging
                          b(BufferClass::Activations) + b(BufferClass::Inputs) + b(BufferClass::Scalars),
                          static_cast<double>(pp.init)};
  const char* names[6] = {"parameters", "gradients", "optimizer state", "gather/reduce rings and staging",
                          "activations", "one whole parameter while initialising"};
  const char* keys[6] = {"model.hidden / model.layers / model.ffn / model.vocab, or shard them (mesh, strategy.zero_stage)",
                         "model.hidden / model.layers / model.ffn / model.vocab, or shard them (strategy.zero_stage >= 2)",
                         "model.hidden / model.layers, or shard them (strategy.zero_stage >= 1)",
                         "strategy.prefetch, strategy.zero_stage",
                         deck.strategy.recompute == Recompute::None && deck.model.experts == 0
                             ? "strategy.recompute = \"full\" (keeps only each layer's input), or model.seq, "
                               "train.global_batch (per micro-batch: train.micro_batches), model.hidden"
                             : "model.seq, train.global_batch (per micro-batch: train.micro_batches), model.hidden",
                         "model.vocab / model.hidden (the largest parameter)"};
  int big = 0;
  for (int k = 1; k < 6; ++k)
    if (part[k] > part[big]) big = k;
  const std::string fits = configuration_that_fits(limit);
  return "rank " + std::to_string(mesh->rank()) + "'s " + what + " " + gib(bytes) + " (parameters " + gib(part[0]) +
         ", gradients " + gib(part[1]) + ", optimizer " + gib(part[2]) + ", rings and staging " + gib(part[3]) +
         ", activations " + gib(part[4]) + ", initialisation " + gib(part[5]) + ") but may use " + gib(limit) + " (" +
         source + "). The largest part is " + names[big] + ": " + keys[big] + " (" + deck.path + "). " +
         (fits.empty() ? std::string("No ZeRO stage, fsdp mesh, full recomputation, bf16 or micro-batching of this "
                                     "model fits on these ranks")
                       : "This would fit: " + fits);
}

// Refuses, before anything is allocated, a step whose predicted peak (compile::predict_peak:
// the compiled buffers, the collectives' staging and the initialisation) does not fit the
// memory a rank has, naming the largest part, the deck keys that size it and a
// configuration that fits. Collective.
void Trainer::Impl::check_memory() {
  std::string source;
  const double limit = memory_limit(&source);
  const double need = static_cast<double>(compile::predict_peak(prog, 0, 0).peak());
  std::string err;
  if (limit > 0 && need > limit) err = memory_message("step needs", need, limit, source);
  const comm::Control control(mesh->world());
  control.agree(err);
}

// bf16: the host GEMM may multiply the rounded operands with a bf16 matmul where it measured
// one faster (core/gemm.hpp, SHARDFLOW_GEMM_BF16). Every rank of the job then does, or none
// does, so that no two ranks multiply the same kind of product two ways. Collective.
void Trainer::Impl::agree_gemm16() {
  if (prog.shape.precision != DType::BF16) return;  // (prec is set later, in allocate())
  std::string err;
  bool mine = false;
  try {
    mine = bf16_gemm_native();
  } catch (const std::exception& e) {
    err = e.what();
  }
  const comm::Control control(mesh->world());
  control.agree(err);
  if (control.min(mine ? 1 : 0) == 0 && mine)
    veto_bf16_gemm("another rank of the job measured it under the margin or cannot use it");
}

// Allocates every buffer of the plan and hands each to the kernels' names for it.
void Trainer::Impl::allocate() {
  const compile::BufferPlan& b = prog.buffers;
  const size_t n = b.specs.size();
  fbuf.resize(n);
  ibuf.resize(n);
  lbuf.resize(n);
  hbuf.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const auto& sp_ = b.specs[i];
    const auto count = static_cast<size_t>(sp_.numel);
    switch (sp_.dtype) {
      case DType::F32: fbuf[i] = FVec(sp_.name, count); break;
      case DType::I32: ibuf[i] = TVec(sp_.name, count); break;
      case DType::I64: lbuf[i] = kern::LVec(sp_.name, count); break;
      case DType::BF16:
      case DType::F16: hbuf[i] = kern::HVec(sp_.name, count); break;
      default: break;  // f64 scalars: the step state's own members (resolve)
    }
  }
  auto f = [&](int id) { return id >= 0 ? fbuf[static_cast<size_t>(id)] : FVec(); };
  const compile::StepShape& s = prog.shape;
  units = s.units;
  index = s.index;
  for (size_t pi = 0; pi < s.params.size(); ++pi) {
    Param p;
    static_cast<compile::ParamShape&>(p) = s.params[pi];
    const compile::ParamBuffers& pb = b.params[pi];
    p.param = f(pb.param);
    p.grad = f(pb.grad);
    p.m = f(pb.adam_m);
    p.v = f(pb.adam_v);
    params.push_back(std::move(p));
  }
  for (int id : b.gather_ring) gather_ring.push_back(f(id));
  for (int id : b.grad_ring) grad_ring.push_back(f(id));
  grad_pack = f(b.grad_pack);
  for (const auto& per : b.acts) {
    std::vector<Acts> out(per.size());
    for (size_t k = 0; k < per.size(); ++k) {
      const compile::ActBuffers& a = per[k];
      // a 16-bit kept activation computes in the f32 work buffer of its kind
      auto kept = [&](int id, int work, FVec& f32, kern::HVec& h16) {
        if (id >= 0 && b.spec(id).dtype != DType::F32) {
          f32 = f(work);
          h16 = hbuf[static_cast<size_t>(id)];
        } else {
          f32 = f(id);
        }
      };
      Acts& o = out[k];
      o.x_in = f(a.x_in);
      o.n1 = f(a.n1);
      o.rstd1 = f(a.rstd1);
      o.x_mid = f(a.x_mid);
      o.n2 = f(a.n2);
      o.n1r = f(a.n1_rows);
      o.n2r = f(a.n2_rows);
      o.rstd2 = f(a.rstd2);
      o.lse = f(a.lse);
      kept(a.qkv, b.work.qkv, o.qkv, o.qkv16);
      kept(a.probs, b.work.probs, o.probs, o.probs16);
      kept(a.att, b.work.att, o.att, o.att16);
      kept(a.gu, b.work.gu, o.gu, o.gu16);
      kept(a.h, b.work.h, o.h, o.h16);
    }
    acts.push_back(std::move(out));
  }
  const int64_t E = s.experts;
  for (const auto& per : b.moes) {
    std::vector<MoeState> out(per.size());
    for (size_t k = 0; k < per.size(); ++k) {
      const compile::MoeBuffers& mb = per[k];
      if (mb.logits < 0) continue;
      MoeState& m = out[k];
      m.logits = f(mb.logits);
      m.gate = f(mb.gate);
      m.choice_row = lbuf[static_cast<size_t>(mb.choice_row)];
      m.xsend = f(mb.x_send);
      m.xr = f(mb.x_recv);
      m.yr = f(mb.y_recv);
      m.ysend = f(mb.y_send);
      m.gu = f(mb.gu);
      m.h = f(mb.h);
      m.send_ec.assign(static_cast<size_t>(ep * E), 0);
      m.recv_ec.assign(static_cast<size_t>(ep * E), 0);
      m.send_rows.assign(static_cast<size_t>(ep), 0);
      m.recv_rows.assign(static_cast<size_t>(ep), 0);
    }
    moes.push_back(std::move(out));
  }
  moe_dgate = f(b.moe_dgate);
  moe_dh = f(b.moe_dh);
  moe_dgu = f(b.moe_dgu);
  moe_dlogits = f(b.moe_dlogits);
  for (size_t k = 0; k < b.x.size(); ++k) {
    xs.push_back(f(b.x[k]));
    dxs.push_back(f(b.dx[k]));
    rxs.push_back(f(b.x_recv[k]));
    rdxs.push_back(f(b.dx_recv[k]));
  }
  for (const auto* ring : {&b.x_recv, &b.dx_recv, &b.x_send, &b.dx_send})  // a 16-bit pipeline wire
    for (int id : *ring)
      if (id >= 0 && b.spec(id).dtype != DType::F32) wire16.push_back(hbuf[static_cast<size_t>(id)]);
  yl = f(b.y_rows);
  dnl = f(b.dn_rows);
  dxfull = f(b.dx_full);
  ybuf = f(b.y);
  dn = f(b.dn);
  dh = f(b.dh);
  dgu = f(b.dgu);
  datt = f(b.datt);
  dqkv = f(b.dqkv);
  dprobs = f(b.dprobs);
  rope = f(b.rope);
  for (int i = 0; i < 2; ++i) {
    kv_ring[i] = f(b.kv_ring[i]);
    dkv_ring[i] = f(b.dkv_ring[i]);
  }
  dkv_home = f(b.dkv_home);
  ring_m = f(b.ring_m);
  ring_l = f(b.ring_l);
  ring_dvec = f(b.ring_dvec);
  ring_scratch = f(b.ring_scratch);
  if (b.rope >= 0) nn::Rope<float, Exec>::table(cfg.rope_theta, kern::mat(rope.data(), cfg.seq, cfg.head_dim()));
  nf = f(b.nf);
  rstdf = f(b.rstdf);
  logits = f(b.logits);
  row_max = f(b.row_max);
  stats = f(b.stats);
  prec = s.precision;
  loss_scale = prec == DType::F16 ? deck.train.loss_scale : 1.0;
  w16 = f(b.w16);
  for (int id : b.inputs) inputs.push_back(ibuf[static_cast<size_t>(id)]);
  for (int id : b.targets) targets.push_back(ibuf[static_cast<size_t>(id)]);
  if (first_stage) escratch = std::make_unique<nn::Embedding<float, Exec>::Scratch>(V_l, tokens_mb);
}

void* Trainer::Impl::resolve(const compile::BufRef& r) {
  const compile::BufferPlan& b = prog.buffers;
  if (r.buf == b.loss_local) return sums_local + r.off;
  if (r.buf == b.loss_global) return sums_global + r.off;
  if (r.buf == b.norm_local) return &sq_local;
  if (r.buf == b.norm_total) return &sq_total;
  const auto& spec = b.spec(r.buf);
  if (spec.dtype == DType::BF16 || spec.dtype == DType::F16)  // a pipeline wire ring
    return hbuf[static_cast<size_t>(r.buf)].data() + r.off;
  SHARDFLOW_REQUIRE(spec.dtype == DType::F32, "step program: buffer '", spec.name, "' of dtype ",
                    dtype_name(spec.dtype), " cannot be a collective's operand");
  return F(r);
}

// A collective of the program on this rank's communicator for its axes.
// The pooled staging a shard collective lives in (allocated on first use, at its pool's size).
char* Trainer::Impl::arena(const compile::CommOp& o) {
  if (o.staging_slot < 0) return nullptr;
  const auto k = static_cast<size_t>(o.staging_slot);
  if (staging_pool.size() < prog.staging_slots.size()) staging_pool.resize(prog.staging_slots.size());
  if (staging_pool[k].data() == nullptr) {
    staging_pool[k] = Kokkos::View<char*>("shardflow::train::staging", static_cast<size_t>(prog.staging_slots[k]));
    staging += prog.staging_slots[k];
  }
  return staging_pool[k].data();
}

graph::CommStartFn Trainer::Impl::bind_comm(const compile::TaskSpec& t) {
  using K = comm::CollectiveKind;
  const compile::CommOp& o = t.comm;
  comm::Communicator* c = &comms->group(o.axes);
  switch (o.kind) {
    case K::AllReduce: {
      void* src = resolve(o.src);
      void* dst = resolve(o.dst);
      const auto n = static_cast<size_t>(o.count);
      const DType dt = o.dtype;
      const comm::ReduceOp op = o.op;
      if (o.staging_bytes == 0) return [c, src, dst, n, dt, op] { return as_poller(c->all_reduce(src, dst, n, dt, op)); };
      // f32 data on a 16-bit wire (strategy.activation_comm_dtype): cast into the staging,
      // reduce it there, cast the result back when it completes
      SHARDFLOW_REQUIRE(o.staging_bytes == static_cast<int64_t>(n * dtype_size(dt)), "step program: '", t.name,
                        "' needs ", n * dtype_size(dt), " staging bytes, the compiler counted ", o.staging_bytes);
      char* st = arena(o);
      const auto* fsrc = static_cast<const float*>(src);
      auto* fdst = static_cast<float*>(dst);
      return [c, fsrc, fdst, st, n, dt, op]() -> std::function<bool()> {
        detail::cast_out(fsrc, st, static_cast<int64_t>(n), dt);
        auto done = as_poller(c->all_reduce(st, st, n, dt, op));
        return [done, st, fdst, n, dt] {
          if (!done()) return false;
          detail::cast_in(st, fdst, static_cast<int64_t>(n), dt);
          return true;
        };
      };
    }
    case K::AllGather:
    case K::ReduceScatter: {
      std::function<std::function<bool()>()> start;
      int64_t bytes = 0;
      if (o.kind == K::AllGather) {
        gathers.push_back(std::make_unique<detail::ShardGather>(*c, o.outer, o.rows, o.inner, o.dtype, F(o.src),
                                                                F(o.dst), arena(o)));
        auto* op = gathers.back().get();
        bytes = op->staging_bytes();
        start = [op] { return op->start(); };
      } else {
        scatters.push_back(std::make_unique<detail::ShardReduceScatter>(
            *c, o.outer, o.rows, o.inner, o.dtype, F(o.src), F(o.dst), o.accumulate, o.op, arena(o)));
        auto* op = scatters.back().get();
        bytes = op->staging_bytes();
        start = [op] { return op->start(); };
      }
      SHARDFLOW_REQUIRE(bytes == o.staging_bytes, "step program: '", t.name, "' needs ", bytes,
                        " staging bytes, the compiler counted ", o.staging_bytes);
      return start;
    }
    case K::Send:
    case K::Recv: {
      void* buf = resolve(o.kind == K::Send ? o.src : o.dst);
      const auto& spec = prog.buffers.spec((o.kind == K::Send ? o.src : o.dst).buf);
      SHARDFLOW_REQUIRE(spec.dtype == o.dtype, "step program: '", t.name, "' moves ", dtype_name(o.dtype),
                        " through buffer '", spec.name, "' of ", dtype_name(spec.dtype));
      const auto n = static_cast<size_t>(o.count);
      if (o.kind == K::Send)
        return [c, buf, n, dt = o.dtype, peer = o.peer] { return as_poller(c->send(buf, n, dt, peer)); };
      return [c, buf, n, dt = o.dtype, peer = o.peer] { return as_poller(c->recv(buf, n, dt, peer)); };
    }
    case K::AllToAll: {
      MoeState* mst = &ms(o.moe_layer, o.moe_slot);
      const auto E = static_cast<size_t>(o.count);
      return [c, mst, E] {
        return as_poller(c->all_to_all(mst->send_ec.data(), mst->recv_ec.data(), E, DType::I32));
      };
    }
    case K::AllToAllv: {
      MoeState* mst = &ms(o.moe_layer, o.moe_slot);
      const float* send = F(o.src);
      float* recv = F(o.dst);
      const bool out = o.moe_out;
      const int n = ep;
      const int64_t H = cfg.hidden;
      return [c, mst, out, send, recv, n, H] {
        std::vector<size_t> sc(static_cast<size_t>(n)), rc(static_cast<size_t>(n));
        for (size_t r = 0; r < static_cast<size_t>(n); ++r) {
          sc[r] = (out ? mst->send_rows[r] : mst->recv_rows[r]) * static_cast<size_t>(H);
          rc[r] = (out ? mst->recv_rows[r] : mst->send_rows[r]) * static_cast<size_t>(H);
        }
        return as_poller(c->all_to_allv(send, recv, comm::CollectivePlan::all_to_allv(DType::F32, sc, rc)));
      };
    }
    default: break;
  }
  throw Error("step program: task '" + t.name + "' has a collective the trainer cannot bind");
}

// The program's tasks in order (so every communicator's collectives keep the compiler's
// sequence), then its edges in order.
void Trainer::Impl::bind() {
  for (const compile::TaskSpec& t : prog.tasks) {
    if (t.is_comm) {
      graph.emplace_comm(t.comm.desc, bind_comm(t)).name(t.name);
    } else {
      graph.emplace([this, ops = t.ops] {
             for (const auto& o : ops) run_op(o);
           }).name(t.name);
    }
  }
  for (const auto& [a, b] : prog.edges) graph.task(a).precede(graph.task(b));
  loss_reduced = !prog.shape.groups.loss.empty();
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
    if (zero == 3 && p.zero_split) {
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

// ---- Trainer ---------------------------------------------------------------------------------

Trainer::Trainer(const Deck& deck, const Mesh& mesh, comm::CommSet& comms)
    : impl_(std::make_unique<Impl>(deck, mesh, comms, false)) {}
Trainer::Trainer(const Deck& deck, const Mesh& mesh, comm::CommSet& comms, bool evaluate)
    : impl_(std::make_unique<Impl>(deck, mesh, comms, evaluate)) {}
Trainer::~Trainer() = default;

double Trainer::evaluate(const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets) {
  auto& I = *impl_;
  SHARDFLOW_REQUIRE(I.prog.shape.evaluate, "Trainer::evaluate: this trainer was built to train");
  const int64_t S = I.cfg.seq, n = I.deck.train.global_batch * S;
  SHARDFLOW_REQUIRE(static_cast<int64_t>(inputs.size()) == n && static_cast<int64_t>(targets.size()) == n,
                    "Trainer::evaluate: a global batch is ", n, " tokens (train.global_batch x model.seq), got ",
                    inputs.size(), " inputs and ", targets.size(), " targets");
  for (int64_t j = 0; j < I.micro; ++j) {
    auto hi = Kokkos::create_mirror_view(I.inputs[static_cast<size_t>(j)]);
    auto ht = Kokkos::create_mirror_view(I.targets[static_cast<size_t>(j)]);
    const int64_t first = (I.slice.begin + j * I.mb_seqs) * S;
    for (int64_t t = 0; t < I.tokens_mb; ++t) {
      hi(t) = inputs[static_cast<size_t>(first + I.token_row(t))];
      ht(t) = targets[static_cast<size_t>(first + I.token_row(t))];
    }
    Kokkos::deep_copy(I.inputs[static_cast<size_t>(j)], hi);
    Kokkos::deep_copy(I.targets[static_cast<size_t>(j)], ht);
  }
  I.executor.run(I.graph);
  if (!I.loss_reduced) std::copy(I.sums_local, I.sums_local + 3, I.sums_global);
  return I.sums_global[0];
}

StepStats Trainer::train_step() {
  auto& I = *impl_;
  SHARDFLOW_REQUIRE(!I.prog.shape.evaluate, "Trainer::train_step: this trainer was built to evaluate");
  const int64_t step = I.completed + 1;
  for (int64_t j = 0; j < I.micro; ++j) {
    auto b = I.loader->slice(step, I.slice.begin + j * I.mb_seqs, I.mb_seqs);
    auto hi = Kokkos::create_mirror_view(I.inputs[static_cast<size_t>(j)]);
    auto ht = Kokkos::create_mirror_view(I.targets[static_cast<size_t>(j)]);
    for (int64_t t = 0; t < I.tokens_mb; ++t) {
      hi(t) = b.inputs[static_cast<size_t>(I.token_row(t))];
      ht(t) = b.targets[static_cast<size_t>(I.token_row(t))];
    }
    Kokkos::deep_copy(I.inputs[static_cast<size_t>(j)], hi);
    Kokkos::deep_copy(I.targets[static_cast<size_t>(j)], ht);
  }
  const double scale_used = I.loss_scale;
  auto rs = I.executor.run(I.graph);
  if (!I.loss_reduced) std::copy(I.sums_local, I.sums_local + 3, I.sums_global);
  I.completed = step;
  StepStats s;
  s.step = step;
  s.loss_scale = scale_used;
  s.skipped = I.step_skipped;
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

LossScaleState Trainer::loss_scale_state() const {
  return {impl_->loss_scale, impl_->scale_clean, impl_->skipped_steps};
}

void Trainer::set_loss_scale_state(const LossScaleState& s) {
  if (impl_->prec != DType::F16) return;
  SHARDFLOW_REQUIRE_INPUT(std::isfinite(s.scale) && s.scale >= 1 && s.clean_steps >= 0 && s.skipped_steps >= 0,
                          "loss scale state: scale ", s.scale, ", clean steps ", s.clean_steps, ", skipped steps ",
                          s.skipped_steps, " is not a valid state (scale >= 1, counts >= 0)");
  impl_->loss_scale = s.scale;
  impl_->scale_clean = s.clean_steps;
  impl_->skipped_steps = s.skipped_steps;
}

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
    m.params += view_bytes(p.param);
    m.grads += view_bytes(p.grad);
    m.optimizer += view_bytes(p.m) + view_bytes(p.v);
  }
  for (const auto& s : I.gather_ring) m.transient += view_bytes(s);
  for (const auto& s : I.grad_ring) m.transient += view_bytes(s);
  m.transient += view_bytes(I.grad_pack);
  m.transient += I.staging;
  std::set<const float*> counted;  // full recomputation: the layers share one scratch set
  for (const auto& per : I.acts)
    for (const auto& a : per)
      for (const FVec* v :
           {&a.x_in, &a.n1, &a.rstd1, &a.qkv, &a.probs, &a.att, &a.x_mid, &a.n2, &a.rstd2, &a.gu, &a.h, &a.lse,
            &a.n1r, &a.n2r})
        if (v->data() == nullptr || counted.insert(v->data()).second) m.activations += view_bytes(*v);
  for (const auto& per : I.acts)  // mixed precision's 16-bit kept activations (one set per slot)
    for (const auto& a : per)
      for (const kern::HVec* v : {&a.qkv16, &a.probs16, &a.att16, &a.gu16, &a.h16}) m.activations += view_bytes(*v);
  m.transient += view_bytes(I.w16);
  for (const auto& per : I.moes)
    for (const auto& s : per) {
      for (const FVec* v : {&s.logits, &s.gate, &s.xsend, &s.gu, &s.h, &s.yr}) m.activations += view_bytes(*v);
      if (I.ep > 1)
        for (const FVec* v : {&s.xr, &s.ysend}) m.activations += view_bytes(*v);
      m.activations += static_cast<int64_t>(s.choice_row.extent(0) * sizeof(int64_t));
    }
  for (const FVec* v : {&I.moe_dgate, &I.moe_dh, &I.moe_dgu, &I.moe_dlogits}) m.activations += view_bytes(*v);
  for (const auto& v : I.xs) m.activations += view_bytes(v);
  for (const auto& v : I.dxs) m.activations += view_bytes(v);
  for (const auto& v : I.rxs) m.activations += view_bytes(v);
  for (const auto& v : I.rdxs) m.activations += view_bytes(v);
  for (const auto& v : I.wire16) m.activations += view_bytes(v);
  for (const FVec* v : {&I.yl, &I.dnl, &I.dxfull, &I.ybuf, &I.dn, &I.dh, &I.dgu, &I.datt, &I.dqkv, &I.dprobs, &I.rope, &I.kv_ring[0], &I.kv_ring[1], &I.dkv_ring[0],
                        &I.dkv_ring[1], &I.dkv_home, &I.ring_m, &I.ring_l, &I.ring_dvec, &I.ring_scratch, &I.nf,
                        &I.rstdf, &I.logits, &I.row_max, &I.stats})
    m.activations += view_bytes(*v);
  return m;
}

void Trainer::check_measured_memory() const {
  const auto& I = *impl_;
  if (I.deck.train.memory_limit_gib <= 0 || !memory::tracking()) return;
  std::string source;
  const double limit = I.memory_limit(&source);
  const double got = static_cast<double>(measured_peak_bytes());
  std::string err;
  if (got > limit) err = I.memory_message("allocations reached (measured)", got, limit, source);
  comm::Control(I.mesh->world()).agree(err);
}

int64_t Trainer::measured_peak_bytes() const {
  if (!memory::tracking()) return -1;
  return memory::peak_bytes() - impl_->memory_baseline;
}

int64_t Trainer::predicted_peak_bytes(bool staged_restore, int64_t async_snapshot_bytes) const {
  return compile::predict_peak(impl_->prog, staged_restore ? compile::state_bytes(impl_->prog) : 0,
                               async_snapshot_bytes)
      .peak();
}

double Trainer::model_flops_per_step() const {
  return nn::gpt_model_flops(impl_->cfg, impl_->deck.train.global_batch * impl_->cfg.seq);
}

}  // namespace shardflow::train
