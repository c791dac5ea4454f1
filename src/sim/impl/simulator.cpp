// The event simulation of compiled steps (sim/simulator.hpp): kernel and collective costs on
// a cluster model, and the replay of one representative rank per pipeline stage.
#include "sim/simulator.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "compile/compiler.hpp"
#include "compile/summary.hpp"
#include "core/error.hpp"
#include "nn/gpt.hpp"
#include "nn/kernels.hpp"
#include "parallel/axis_groups.hpp"

namespace shardflow::sim {

namespace {

/// The simulator's programs carry no task names unless a trace or an error message shows
/// them (compile::CompileOptions::names).
compile::CompileOptions unnamed() {
  compile::CompileOptions o;
  o.names = false;
  o.params = compile::ShapeParams::Stage;  // (the other stages' parameters make nothing here)
  return o;
}

using compile::StepOp;
using compile::StepShape;

struct Cost {
  double seconds = 0, flops = 0;
};

// ---- kernels ------------------------------------------------------------------------------

/// Cluster::gemm_seconds of the shapes a program has met (a pure function of the shape and
/// dtype: a program has a few dozen shapes over thousands of tasks; the efficiency curve's
/// interpolation takes a cube root and logarithms).
class GemmTimes {
 public:
  explicit GemmTimes(const Cluster& c) : c_(c) {}
  double operator()(double m, double n, double k, DType dt) {
    for (const Entry& e : seen_)
      if (e.m == m && e.n == n && e.k == k && e.dt == dt) return e.seconds;
    seen_.push_back({m, n, k, dt, c_.gemm_seconds(m, n, k, dt)});
    return seen_.back().seconds;
  }

 private:
  struct Entry {
    double m, n, k;
    DType dt;
    double seconds;
  };
  const Cluster& c_;
  std::vector<Entry> seen_;
};

struct KernelModel {
  const Cluster& c;
  GemmTimes& gemm_times;
  const StepShape& s;
  DType mm;     // GEMM operand type
  double elem;  // bytes per activation element
  // 16-bit as rounded f32 (Cluster::sixteen_bit_as_f32): bytes per element of a rounding
  // pass (f32 read and written), of a pack (f32 read, rounded f32 and 16-bit written) and
  // of an unpack (16-bit read, f32 written); 0 otherwise
  double round = 0, pack = 0, unpack = 0;
  double seconds = 0, flops = 0;

  void gemm(double m, double n, double k, double count = 1) {
    if (m <= 0 || n <= 0 || k <= 0 || count <= 0) return;
    seconds += count * gemm_times(m, n, k, mm);
    flops += count * 2 * m * n * k;
  }
  void bytes(double b) { seconds += c.bytes_seconds(b); }
  // a linear layer's forward (y = x·wᵀ, x [rows, in]) or its backward (dx and dw)
  // (16-bit as rounded f32: the weight rounded for this use, the output rounded where it is
  // made; backward: the weight again, dy, and dx)
  void linear_fwd(double rows, double out, double in) {
    gemm(rows, out, in);
    bytes(round * (out * in + rows * out));
  }
  void linear_bwd(double rows, double out, double in) {
    gemm(rows, in, out);
    gemm(out, in, rows);
    bytes(round * (out * in + rows * out + rows * in));
  }
  // the attention core of b sequences × A heads: QKᵀ, softmax, P·V (full S × S, as the model
  // FLOPs count it); with attention dropout, the dropped P' made from P (P read, P' written;
  // the product reads P' instead of P; the mask is made, not read)
  void core_fwd() {
    const double b = static_cast<double>(s.mb_seqs), A = static_cast<double>(s.A_l), S = static_cast<double>(s.seq),
                 D = static_cast<double>(s.head_dim);
    gemm(S, S, D, b * A);
    gemm(S, D, S, b * A);
    bytes(b * A * S * S * elem * (s.attention_dropout > 0 ? 5 : 3));
    dropout_masks(1);
  }
  // attention dropout: `times` masks of the causal triangle of b sequences × A heads, made in
  // whole batches of 64 elements as the kernels make them
  void dropout_masks(double times) {
    if (s.attention_dropout <= 0 || c.dropout_mask_ns <= 0) return;
    // (the count takes a pass over the S rows: kept for the last S, per thread)
    thread_local int64_t last_seq = -1;
    thread_local double made = 0;
    if (last_seq != s.seq) {
      made = static_cast<double>(nn::attention_dropout_generated(s.seq));
      last_seq = s.seq;
    }
    seconds += times * static_cast<double>(s.mb_seqs * s.A_l) * made * c.dropout_mask_ns * 1e-9;
  }
  // context parallel: one ring step's (query chunk, key chunk) pairs of C × C, `pairs` of
  // them for each of b sequences × A heads (3 with this rank's own block, else 2)
  void ring_fwd(double pairs) {
    const double b = static_cast<double>(s.mb_seqs), A = static_cast<double>(s.A_l),
                 C = static_cast<double>(s.seq_local) / 2, D = static_cast<double>(s.head_dim);
    gemm(C, C, D, pairs * b * A);
    gemm(C, D, C, pairs * b * A);
    bytes(pairs * b * A * C * C * elem * 3);
  }
  void ring_bwd(double pairs) {
    const double b = static_cast<double>(s.mb_seqs), A = static_cast<double>(s.A_l),
                 C = static_cast<double>(s.seq_local) / 2, D = static_cast<double>(s.head_dim);
    gemm(C, C, D, 5 * pairs * b * A);  // S again, dV, dP, dQ, dK
    bytes(pairs * b * A * C * C * elem * 5);
  }
  // (attention dropout: P' made again from P for dV, P read and P' written; dP' masked in the
  // softmax's backward pass, which reads and writes it anyway)
  void core_bwd() {
    const double b = static_cast<double>(s.mb_seqs), A = static_cast<double>(s.A_l), S = static_cast<double>(s.seq),
                 D = static_cast<double>(s.head_dim);
    gemm(S, D, S, 4 * b * A);  // dV, dP, dQ, dK
    bytes(b * A * S * S * elem * (s.attention_dropout > 0 ? 6 : 4));
    dropout_masks(2);  // for P' and for dP
  }
};

double param_elems(const StepShape& s) {
  double n = 0;
  for (const auto& p : s.params)
    if (p.here) n += static_cast<double>(p.zero_split && s.zero >= 1 ? p.shard_numel() : p.lnumel);
  return n;
}

Cost compute_cost(const Cluster& c, GemmTimes& gemm_times, const StepShape& s, const compile::TaskSpec& t) {
  KernelModel k{c, gemm_times, s, s.precision, static_cast<double>(dtype_size(s.precision))};
  const bool as_f32 = c.sixteen_bit_as_f32 && s.precision != DType::F32;
  if (as_f32) {
    k.elem = 4;
    k.round = 8;
    k.pack = 4 + 4 + 2;
    k.unpack = 2 + 4;
  }
  const double T = static_cast<double>(s.tokens_mb), H = static_cast<double>(s.hidden), Hl = static_cast<double>(s.H_l),
               Fl = static_cast<double>(s.F_l), Vl = static_cast<double>(s.V_l), Tr = static_cast<double>(s.Tr),
               e = k.elem;
  const double E = static_cast<double>(s.experts), topk = static_cast<double>(s.top_k);
  const double QKV = static_cast<double>(s.qkv_cols()), stats = static_cast<double>(s.mb_seqs * s.A_l * s.seq_local);
  const bool ring = s.cp > 1;
  for (const compile::ComputeOp& o : t.ops) {
    switch (o.op) {
      case StepOp::Begin:
        break;
      case StepOp::Copy:  // f32 both sides, or one side a 16-bit pipeline wire ring
        k.bytes(static_cast<double>(o.n) * static_cast<double>(4 + dtype_size(o.cast)));
        break;
      case StepOp::Embed:
        k.bytes(T * H * 4 * 2);
        break;
      case StepOp::PosEmbed:
        k.bytes(T * H * 4 * 3);
        break;
      case StepOp::AttnNorm:
        k.bytes(Tr * H * 4 * 4 + Tr * H * e);
        break;
      case StepOp::Attn:
        k.linear_fwd(T, QKV, H);
        if (ring) {  // own block out, the softmax state and the output zeroed
          k.bytes(T * (QKV - Hl) * 4 * 2 + stats * 8 + T * Hl * 4);
          break;
        }
        k.core_fwd();
        k.linear_fwd(T, H, Hl);
        k.bytes(k.pack * (T * QKV + static_cast<double>(s.mb_seqs * s.A_l) * s.seq * s.seq + T * Hl));
        break;
      case StepOp::AttnRing:
        k.ring_fwd(o.step == 0 ? 3 : 2);
        break;
      case StepOp::AttnOut:
        k.bytes(T * Hl * 4 * 2 + stats * 4);
        k.linear_fwd(T, H, Hl);
        break;
      case StepOp::AttnRingBwd:
        k.ring_bwd(o.step == 0 ? 3 : 2);
        break;
      case StepOp::AttnQkvBwd:
        k.bytes(T * (QKV - Hl) * 4 * 2);
        k.linear_bwd(T, QKV, H);
        break;
      case StepOp::MlpNorm:
        k.bytes(Tr * H * 4 * 5 + Tr * H * e);
        break;
      case StepOp::Mlp:
        if (s.moe_layer(o.layer)) break;
        k.linear_fwd(T, 2 * Fl, H);
        k.bytes(T * Fl * e * 3);
        k.linear_fwd(T, H, Fl);
        k.bytes(k.pack * T * 3 * Fl);  // gu and h kept in 16 bits
        break;
      case StepOp::Residual:
        k.bytes(Tr * H * 4 * 3);
        break;
      case StepOp::MoeRoute:
        k.linear_fwd(T, E, H);
        k.bytes(T * topk * H * e * 2);
        break;
      case StepOp::MoePlan:
        break;
      case StepOp::MoeExperts:  // the routed rows, as if the experts were balanced
        k.linear_fwd(T * topk, 2 * Fl, H);
        k.bytes(T * topk * Fl * e * 3);
        k.linear_fwd(T * topk, H, Fl);
        break;
      case StepOp::MoeCombine:
        k.bytes(T * topk * H * e * 2);
        break;
      case StepOp::FinalNorm:
        k.bytes(Tr * H * 4 * 3);
        break;
      case StepOp::Logits:
        k.linear_fwd(T, Vl, H);
        k.bytes(T * Vl * 4);
        break;
      case StepOp::SumExp:
        k.bytes(T * Vl * 4);
        break;
      case StepOp::Loss:
        k.bytes(T * Vl * 4 * 2);
        k.linear_bwd(T, Vl, H);
        break;
      case StepOp::LossValue:
        k.bytes(T * Vl * 4);
        break;
      case StepOp::FinalNormBwd:
        k.bytes(Tr * H * 4 * 5);
        break;
      case StepOp::MoeCombineBwd:
        k.bytes(T * topk * H * e * 3);
        break;
      case StepOp::MoeExpertsBwd:
        k.linear_bwd(T * topk, H, Fl);
        k.bytes(T * topk * Fl * e * 5);
        k.linear_bwd(T * topk, 2 * Fl, H);
        break;
      case StepOp::MoeRouterBwd:
        k.linear_bwd(T, E, H);
        k.bytes(T * topk * H * e * 2);
        break;
      case StepOp::MlpBwd:
        k.bytes(k.unpack * T * 3 * Fl);
        k.linear_bwd(T, H, Fl);
        k.bytes(T * Fl * e * 5);
        k.linear_bwd(T, 2 * Fl, H);
        break;
      case StepOp::MlpNormBwd:
      case StepOp::AttnNormBwd:
        k.bytes(Tr * H * 4 * 6);
        break;
      case StepOp::AttnCore:
        k.core_fwd();
        break;
      case StepOp::AttnBwd:
        k.linear_bwd(T, H, Hl);
        if (ring) {  // D, own block out, dq and dkv zeroed
          k.bytes(T * Hl * 4 * 2 + T * QKV * 4 + T * (QKV - Hl) * 4 * 3);
          break;
        }
        k.core_bwd();
        k.linear_bwd(T, QKV, H);
        k.bytes(k.unpack * (T * QKV + static_cast<double>(s.mb_seqs * s.A_l) * s.seq * s.seq + T * Hl));
        break;
      case StepOp::EmbedBwd:
        k.bytes(T * H * 4 * 3);
        break;
      case StepOp::GradNormLocal:
        k.bytes(param_elems(s) * 4);
        break;
      case StepOp::AdamW:
        k.bytes(param_elems(s) * 4 * 7);
        break;
    }
  }
  return {k.seconds, k.flops};
}

// ---- collectives ------------------------------------------------------------------------------

// a ring over n ranks moving `factor` × bytes through each rank's link
double ring_seconds(const Link& l, double n, double bytes, double steps, double factor) {
  if (n <= 1) return 0;
  return (l.latency_us + steps * l.hop_latency_us) * 1e-6 + factor * bytes / (l.bandwidth_gbs * 1e9 * l.efficiency);
}

struct GroupInfo {
  int n = 1, nodes = 1, local = 1;
};

double collective_seconds(const Cluster& c, const GroupInfo& g, comm::CollectiveKind kind, double bytes) {
  using K = comm::CollectiveKind;
  const double n = g.n;
  if (g.n <= 1) return 0;
  auto flat = [&](const Link& l, double m, double b, K k) {
    switch (k) {
      case K::AllReduce:
        return ring_seconds(l, m, b, 2 * (m - 1), 2 * (m - 1) / m);
      case K::AllGather:
      case K::ReduceScatter:
        return ring_seconds(l, m, b, m - 1, (m - 1) / m);
      default:
        return ring_seconds(l, m, b, m - 1, (m - 1) / m);  // all-to-all(v), broadcast
    }
  };
  if (g.nodes <= 1) return flat(c.intra, n, bytes, kind);
  if (c.inter_algo == "ring" || g.local <= 1) return flat(c.inter, n, bytes, kind);
  // hierarchical: the node's ranks each drive their own network link on 1/local of the bytes
  const double L = g.local, N = g.nodes;
  switch (kind) {
    case K::AllReduce:
      return flat(c.intra, L, bytes, K::ReduceScatter) + flat(c.inter, N, bytes / L, K::AllReduce) +
             flat(c.intra, L, bytes, K::AllGather);
    case K::AllGather:
    case K::ReduceScatter:
      return flat(c.inter, N, bytes / L, kind) + flat(c.intra, L, bytes, kind);
    default:
      return flat(c.inter, n, bytes, kind);
  }
}

// ---- the replay -------------------------------------------------------------------------------

/// A program's buffers by class and its predicted peak (compile::predict_peak).
MemoryEstimate memory_of(const compile::StepProgram& prog) {
  using compile::BufferClass;
  auto b = [&](BufferClass c) { return compile::step_bytes(prog, c); };
  return {b(BufferClass::Params),    b(BufferClass::Grads),
          b(BufferClass::Optimizer), b(BufferClass::Activations) + b(BufferClass::Inputs) + b(BufferClass::Scalars),
          b(BufferClass::Transient), static_cast<double>(compile::predict_peak(prog, 0, 0).peak())};
}

/// Lists of ints for n tasks in one array: list i is idx[off[i] .. off[i+1]), each in the
/// order its items were added (one allocation per graph instead of one per task).
struct Adjacency {
  std::vector<int> off, idx;
  struct Range {
    const int *b, *e;
    const int* begin() const { return b; }
    const int* end() const { return e; }
    size_t size() const { return static_cast<size_t>(e - b); }
  };
  Range operator[](size_t i) const { return {idx.data() + off[i], idx.data() + off[i + 1]}; }
  /// From (list, item) pairs, in their order.
  void build(size_t n, const std::vector<std::pair<int, int>>& pairs) {
    off.assign(n + 1, 0);
    for (const auto& pr : pairs) ++off[static_cast<size_t>(pr.first) + 1];
    for (size_t i = 0; i < n; ++i) off[i + 1] += off[i];
    idx.resize(pairs.size());
    std::vector<int> at(off.begin(), off.end() - 1);
    for (const auto& pr : pairs) idx[static_cast<size_t>(at[static_cast<size_t>(pr.first)]++)] = pr.second;
  }
};

struct Role {
  int rank = 0, stage = 0;
  /// The stage's program: released once it is costed (the replay needs only what cost_role
  /// takes from it) unless a trace wants the task names.
  std::shared_ptr<const compile::StepProgram> prog_ptr;
  const compile::StepProgram& prog() const { return *prog_ptr; }
  std::vector<double> dur, flops, start, end;
  Adjacency preds;
  std::vector<char> comm, send;   // a communication task; a pipeline / ring send
  MemoryEstimate memory;          // the program's buffers and predicted peak
  std::vector<int> chain_prev;    // the previous task of its compute chain / communicator / p2p channel (-1)
  std::vector<int> partner;       // p2p: the matching task's index on its role
  std::vector<int> partner_role;  // p2p: the peer's stage
  std::vector<std::string> keys;  // the communicator keys of its comm tasks (parallel::group_key)
  std::vector<int> key;           // a comm task's index into keys (-1: a compute task)
  std::vector<bool> p2p;
  std::vector<int> group;    // the task's schedule group (compile::TaskSpec::group)
  double msg_bytes = 0;      // the largest pipeline message (x or dx of a micro-batch)
  std::string pipeline_key;  // the pipeline messages' communicator key
};

// A rank's groups: their sizes and node spans (collective costs) and members (p2p peers).
struct GroupCache {
  const MeshShape& mesh;
  const Cluster& cluster;
  std::map<std::pair<int, parallel::Axes>, GroupInfo> groups;
  std::map<std::pair<int, parallel::Axes>, std::vector<int>> members;
  const std::vector<int>& members_of(int rank, const parallel::Axes& axes) {
    auto it = members.find({rank, axes});
    if (it == members.end()) it = members.emplace(std::make_pair(rank, axes), mesh.group_ranks(rank, axes)).first;
    return it->second;
  }
  GroupInfo group_of(int rank, const parallel::Axes& axes) {
    auto it = groups.find({rank, axes});
    if (it != groups.end()) return it->second;
    GroupInfo g;
    const std::vector<int>& m = members_of(rank, axes);
    std::set<int> nodes;
    for (int x : m) nodes.insert(cluster.node_of(x));
    g.n = static_cast<int>(m.size());
    g.nodes = static_cast<int>(nodes.size());
    g.local = std::max(1, g.n / g.nodes);
    groups.emplace(std::make_pair(rank, axes), g);
    return g;
  }
};

// The role's task costs, dependencies and chains (compute stream, each communicator, each
// point-to-point channel).
void cost_role(Role& r, const Cluster& cluster, const MeshShape& mesh, int pp, GroupCache& gc) {
  using K = comm::CollectiveKind;
  const auto& tasks = r.prog().tasks;
  const size_t n = tasks.size();
  r.dur.assign(n, 0);
  r.flops.assign(n, 0);
  r.start.assign(n, -1);
  r.end.assign(n, -1);
  r.chain_prev.assign(n, -1);
  r.partner.assign(n, -1);
  r.partner_role.assign(n, -1);
  r.key.assign(n, -1);
  r.keys.clear();
  r.p2p.assign(n, false);
  r.comm.assign(n, 0);
  r.send.assign(n, 0);
  r.group.resize(n);
  for (size_t i = 0; i < n; ++i) r.group[i] = tasks[i].group;
  {
    std::vector<std::pair<int, int>> to_from;
    to_from.reserve(r.prog().edges.size());
    for (const auto& [a, b] : r.prog().edges) to_from.emplace_back(b, a);
    r.preds.build(n, to_from);
  }
  int last_compute = -1;
  GemmTimes gemm_times(cluster);
  // per communicator key: its axes' group and members (looked up once), its last task
  struct Key {
    GroupInfo group;
    bool grouped = false;
    const std::vector<int>* members = nullptr;
    int last = -1;
  };
  std::vector<Key> by_key;
  std::map<std::pair<bool, int>, int> last_on_channel;  // (send?, peer stage) -> its last task
  for (size_t i = 0; i < n; ++i) {
    const compile::TaskSpec& t = tasks[i];
    if (!t.is_comm) {
      const Cost c = compute_cost(cluster, gemm_times, r.prog().shape, t);
      r.dur[i] = c.seconds;
      r.flops[i] = c.flops;
      r.chain_prev[i] = last_compute;
      last_compute = static_cast<int>(i);
      continue;
    }
    const compile::CommOp& o = t.comm;
    r.comm[i] = 1;
    r.send[i] = o.kind == K::Send ? 1 : 0;
    {  // desc.comm: parallel::group_key(o.axes), made by the compiler
      size_t k = 0;
      while (k < r.keys.size() && r.keys[k] != o.desc.comm) ++k;
      if (k == r.keys.size()) {
        r.keys.push_back(o.desc.comm);
        by_key.push_back({});
      }
      r.key[i] = static_cast<int>(k);
    }
    Key& key = by_key[static_cast<size_t>(r.key[i])];
    const double bytes = static_cast<double>(o.tensor_bytes());
    if (o.kind == K::Send || o.kind == K::Recv) {
      r.p2p[i] = true;
      if (!key.members) key.members = &gc.members_of(r.rank, o.axes);
      const int peer_rank = key.members->at(static_cast<size_t>(o.peer));
      const bool same_node = cluster.node_of(peer_rank) == cluster.node_of(r.rank);
      const Link& l = same_node ? cluster.intra : cluster.inter;
      r.dur[i] = l.latency_us * 1e-6 + bytes / (l.bandwidth_gbs * 1e9 * l.efficiency);
      // a pipeline peer is its stage's role; a context peer (the ring) is symmetric with
      // this rank: its own role, whose k-th receive stands for the peer's
      r.partner_role[i] = pp > 1 ? mesh.coord(peer_rank, "pipeline") : r.stage;
      if (r.partner_role[i] != r.stage) {
        r.msg_bytes = std::max(r.msg_bytes, bytes);
        r.pipeline_key = o.desc.comm;
      }
      auto [it, added] =
          last_on_channel.try_emplace(std::make_pair(o.kind == K::Send, r.partner_role[i]), static_cast<int>(i));
      r.chain_prev[i] = added ? -1 : it->second;
      it->second = static_cast<int>(i);
      continue;
    }
    if (!key.grouped) {
      key.group = gc.group_of(r.rank, o.axes);
      key.grouped = true;
    }
    r.dur[i] = collective_seconds(cluster, key.group, o.kind, bytes);
    // a shard collective's pack and unpack through its staging (the copies, both ways)
    r.dur[i] += cluster.bytes_seconds(2.0 * static_cast<double>(o.staging_bytes));
    if (cluster.comm_on_compute_core) continue;  // chained on the compute stream below
    r.chain_prev[i] = key.last;
    key.last = static_cast<int>(i);
  }
}

// A lower bound of the step from one stage's program: the longest path over its dependencies,
// its compute stream and each communicator's order, point-to-point messages free (the real
// step also waits for the other stages).
double stage_bound(const Cluster& cluster, const MeshShape& mesh, int rank, int stage,
                   std::shared_ptr<const compile::StepProgram> prog, GroupCache& gc) {
  Role r;
  r.rank = rank;
  r.stage = stage;
  r.prog_ptr = std::move(prog);
  cost_role(r, cluster, mesh, mesh.axis_size_or_1("pipeline"), gc);
  double step = 0;
  for (size_t i = 0; i < r.dur.size(); ++i) {
    double at = 0;
    for (int p : r.preds[i]) at = std::max(at, r.end[static_cast<size_t>(p)]);
    if (r.chain_prev[i] >= 0) at = std::max(at, r.end[static_cast<size_t>(r.chain_prev[i])]);
    r.end[i] = at + (r.p2p[i] ? 0.0 : r.dur[i]);
    step = std::max(step, r.end[i]);
  }
  return step;
}

/// Workers (`threads`; 0: the machine's hardware threads), each taking the next index until
/// `n` or until work(i) says stop; the calling thread is one of them.
void in_parallel(size_t n, int threads, const std::function<bool(size_t)>& work) {
  if (threads <= 0) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), std::max<size_t>(n, 1)));
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  auto worker = [&] {
    for (size_t i; !stop && (i = next++) < n;)
      if (!work(i)) stop = true;
  };
  std::vector<std::thread> pool;
  for (int k = 1; k < threads; ++k) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

// Communication on the compute core: the stream runs what the executor's thread runs, in
// its order: before each compute task (emission order) every collective whose inputs are
// done, earliest emitted first (the executor issues them and progresses them while it
// polls). Pipeline sends and receives stay off the stream.
void place_comm_on_core(Role& r) {
  const size_t n = r.dur.size();
  Adjacency succs;
  std::vector<int> left(n, 0);
  {
    std::vector<std::pair<int, int>> from_to;
    from_to.reserve(r.preds.idx.size());
    for (size_t i = 0; i < n; ++i) {
      left[i] = static_cast<int>(r.preds[i].size());
      for (int p : r.preds[i]) from_to.emplace_back(p, static_cast<int>(i));
    }
    succs.build(n, from_to);
  }
  std::set<int> ready_comm;  // off-stream or collective tasks whose inputs are placed
  for (size_t i = 0; i < n; ++i)
    if (r.comm[i] && left[i] == 0) ready_comm.insert(static_cast<int>(i));
  int last = -1;
  auto place = [&](int i) {
    if (!r.p2p[static_cast<size_t>(i)]) {
      r.chain_prev[static_cast<size_t>(i)] = last;
      last = i;
    }
    for (int t : succs[static_cast<size_t>(i)])
      if (--left[static_cast<size_t>(t)] == 0 && r.comm[static_cast<size_t>(t)]) ready_comm.insert(t);
  };
  size_t next = 0;  // the next compute task in emission order
  size_t placed_n = 0;
  while (placed_n < n) {
    bool moved = false;
    while (!ready_comm.empty()) {
      const int i = *ready_comm.begin();
      ready_comm.erase(ready_comm.begin());
      place(i);
      ++placed_n;
      moved = true;
    }
    while (next < n && r.comm[next]) ++next;
    if (next < n && left[next] == 0) {
      place(static_cast<int>(next));
      ++placed_n;
      ++next;
      moved = true;
    }
    if (!moved) break;  // what is left waits on another stage (the replay resolves it)
  }
}

// Matches pipeline sends and receives: the k-th send a -> b meets b's k-th receive from a.
// Isolated (one stage replayed alone): only a role's messages to itself (the context ring)
// are matched; its pipeline messages stay unmatched and cost nothing in replay().
void match_p2p(std::vector<Role>& roles, bool isolated) {
  std::map<std::pair<int, int>, std::vector<int>> sends, recvs;  // (from, to) -> task indices
  for (Role& r : roles)
    for (size_t i = 0; i < r.dur.size(); ++i) {
      if (!r.p2p[i] || (isolated && r.partner_role[i] != r.stage)) continue;
      if (r.send[i])
        sends[{r.stage, r.partner_role[i]}].push_back(static_cast<int>(i));
      else
        recvs[{r.partner_role[i], r.stage}].push_back(static_cast<int>(i));
    }
  for (const auto& [pair, s] : sends) {
    const auto& rv = recvs[pair];
    SHARDFLOW_REQUIRE(rv.size() == s.size(), "simulate: stage ", pair.first, " sends ", s.size(), " messages to stage ",
                      pair.second, ", which receives ", rv.size());
    for (size_t k = 0; k < s.size(); ++k) {
      roles[static_cast<size_t>(isolated ? 0 : pair.first)].partner[static_cast<size_t>(s[k])] = rv[k];
      roles[static_cast<size_t>(isolated ? 0 : pair.second)].partner[static_cast<size_t>(rv[k])] = s[k];
    }
  }
  for (const auto& [pair, rv] : recvs)
    SHARDFLOW_REQUIRE(sends.count(pair) || rv.empty(), "simulate: stage ", pair.second, " receives ", rv.size(),
                      " messages from stage ", pair.first, ", which sends none");
}

// Longest paths over the step's dependencies, the compute chain, each communicator's order
// and each pipeline channel's order; a send and its receive start together when both are
// posted (a worklist of tasks whose inputs are all known); an unmatched message (an isolated
// stage's pipeline message) is done when it is posted. Returns how many tasks never ran
// (they wait on each other: a deadlock).
size_t replay(std::vector<Role>& roles) {
  std::vector<Adjacency> succ(roles.size());
  std::vector<std::vector<int>> indeg(roles.size());
  std::vector<std::vector<double>> ready(roles.size());
  std::vector<std::pair<int, int>> work;
  size_t remaining = 0;
  for (size_t q = 0; q < roles.size(); ++q) {
    const Role& r = roles[q];
    const size_t n = r.dur.size();
    remaining += n;
    indeg[q].assign(n, 0);
    ready[q].assign(n, -1);
    std::vector<std::pair<int, int>> from_to;
    from_to.reserve(r.preds.idx.size() + n);
    for (size_t i = 0; i < n; ++i) {
      for (int p : r.preds[i]) from_to.emplace_back(p, static_cast<int>(i));
      if (r.chain_prev[i] >= 0) from_to.emplace_back(r.chain_prev[i], static_cast<int>(i));
      indeg[q][i] = static_cast<int>(r.preds[i].size()) + (r.chain_prev[i] >= 0 ? 1 : 0);
      if (indeg[q][i] == 0) work.emplace_back(static_cast<int>(q), static_cast<int>(i));
    }
    succ[q].build(n, from_to);
  }
  auto finish = [&](size_t q, size_t i, double begin, double d) {
    Role& r = roles[q];
    r.start[i] = begin;
    r.end[i] = begin + d;
    --remaining;
    for (int t : succ[q][i])
      if (--indeg[q][static_cast<size_t>(t)] == 0) work.emplace_back(static_cast<int>(q), t);
  };
  while (!work.empty()) {
    const auto [qi, ii] = work.back();
    work.pop_back();
    const auto q = static_cast<size_t>(qi), i = static_cast<size_t>(ii);
    Role& r = roles[q];
    double at = 0;
    for (int p : r.preds[i]) at = std::max(at, r.end[static_cast<size_t>(p)]);
    if (r.chain_prev[i] >= 0) at = std::max(at, r.end[static_cast<size_t>(r.chain_prev[i])]);
    if (!r.p2p[i]) {
      finish(q, i, at, r.dur[i]);
      continue;
    }
    if (r.partner[i] < 0) {
      finish(q, i, at, 0.0);
      continue;
    }
    ready[q][i] = at;
    const auto qo = r.partner_role[i] == r.stage ? q : static_cast<size_t>(r.partner_role[i]);  // (a ring: itself)
    const auto j = static_cast<size_t>(r.partner[i]);
    if (ready[qo][j] < 0) continue;  // the partner finishes both when it is posted
    const double begin = std::max(at, ready[qo][j]);
    const double d = std::max(r.dur[i], roles[qo].dur[j]);
    finish(q, i, begin, d);
    finish(qo, j, begin, d);
  }
  return remaining;
}

/// What a role's communication cost it: each communicator's busy time; the compute stream's
/// idle time before each compute task, charged to the dependency that arrived last when that
/// is a communication task (collectives on the compute core also charge the time they held
/// it); the part of that idle time spent on pipeline messages. With `by_group`, the same per
/// schedule group (entry group + 1: before the first group, each group, after the last), with
/// each group's compute span, its idle time before its first compute task and its FLOPs.
struct Usage {
  std::map<std::string, double> exposed, busy;
  double pipeline_wait = 0;
  double begin = -1, end = -1, gap = 0, flops = 0;  // by group (flops: also a class's sum, simulate_blocks)
};
void usage_of(const Role& r, bool comm_on_core, Usage& total, std::vector<Usage>* by_group) {
  // the sums by communicator (Role::keys), each in the order of its additions, made into
  // the usages' maps at the end (total's and every group's are empty when called)
  const size_t nk = r.keys.size();
  struct Sums {
    std::vector<double> v;
    std::vector<char> used;
    void add(size_t k, double x) {
      v[k] += x;
      used[k] = 1;
    }
  };
  auto sums = [&](size_t n) { return Sums{std::vector<double>(n * nk, 0.0), std::vector<char>(n * nk, 0)}; };
  size_t groups = 0;
  if (by_group) {
    for (int g : r.group) groups = std::max(groups, static_cast<size_t>(g + 2));
    if (by_group->size() < groups) by_group->resize(groups);
    groups = by_group->size();
  }
  Sums busy = sums(1), exposed = sums(1), group_busy = sums(groups), group_exposed = sums(groups);
  auto at = [&](size_t i) -> Usage* { return by_group ? &(*by_group)[static_cast<size_t>(r.group[i] + 1)] : nullptr; };
  auto slot = [&](size_t i, size_t k) { return static_cast<size_t>(r.group[i] + 1) * nk + k; };
  double prev_end = 0;
  std::vector<size_t> stream;  // the compute stream's tasks in the order they ran
  for (size_t i = 0; i < r.dur.size(); ++i) {
    if (r.comm[i]) {
      const auto k = static_cast<size_t>(r.key[i]);
      busy.add(k, r.end[i] - r.start[i]);
      if (by_group) group_busy.add(slot(i, k), r.end[i] - r.start[i]);
    }
    if (Usage* u = at(i)) u->flops += r.flops[i];
    if (!r.comm[i] || (comm_on_core && !r.p2p[i])) stream.push_back(i);
  }
  std::stable_sort(stream.begin(), stream.end(), [&](size_t x, size_t y) { return r.start[x] < r.start[y]; });
  for (size_t i : stream) {
    Usage* u = at(i);
    if (u) {
      if (u->begin < 0) u->gap = std::max(0.0, r.start[i] - prev_end);
      if (u->begin < 0 || r.start[i] < u->begin) u->begin = r.start[i];
      u->end = std::max(u->end, r.end[i]);
    }
    if (r.comm[i]) {  // it held the compute stream
      const auto k = static_cast<size_t>(r.key[i]);
      exposed.add(k, r.end[i] - r.start[i]);
      if (u) group_exposed.add(slot(i, k), r.end[i] - r.start[i]);
    }
    const double gap = r.start[i] - prev_end;
    prev_end = r.end[i];
    if (gap <= 1e-15) continue;
    int binding = -1;
    for (int p : r.preds[i])
      if (binding < 0 || r.end[static_cast<size_t>(p)] > r.end[static_cast<size_t>(binding)]) binding = p;
    if (binding < 0 || !r.comm[static_cast<size_t>(binding)]) continue;
    const auto k = static_cast<size_t>(r.key[static_cast<size_t>(binding)]);
    exposed.add(k, gap);
    if (u) group_exposed.add(slot(i, k), gap);
    if (r.p2p[static_cast<size_t>(binding)] && r.partner_role[static_cast<size_t>(binding)] != r.stage) {
      total.pipeline_wait += gap;
      if (u) u->pipeline_wait += gap;
    }
  }
  auto into = [&](const Sums& x, size_t base, std::map<std::string, double>& m) {
    for (size_t k = 0; k < nk; ++k)
      if (x.used[base + k]) m[r.keys[k]] += x.v[base + k];
  };
  into(busy, 0, total.busy);
  into(exposed, 0, total.exposed);
  for (size_t g = 0; g < groups; ++g) {
    into(group_busy, g * nk, (*by_group)[g].busy);
    into(group_exposed, g * nk, (*by_group)[g].exposed);
  }
}

/// The representative rank of pipeline stage `st`: every other coordinate 0.
int stage_rank(const MeshShape& mesh, int st) {
  std::vector<int> co(static_cast<size_t>(mesh.ndim()), 0);
  if (mesh.axis_size_or_1("pipeline") > 1) co[static_cast<size_t>(mesh.axis_index("pipeline"))] = st;
  return mesh.rank_of(co);
}

/// The result's figures from a replayed step, by either replay: its time, the FLOPs executed
/// on all `stages` simulated stages, each stage's communication (usage_of) and the memory of
/// the programs compiled (the largest peak is the device's).
void fill_result(SimResult& res, const Deck& deck, const Cluster& cluster, const MeshShape& mesh, int stages,
                 double step, double flops, const std::vector<Usage>& usage,
                 const std::vector<MemoryEstimate>& memory) {
  res.cluster = cluster.name;
  res.mesh = mesh.to_string();
  res.model = deck.model.to_string();
  res.devices = mesh.size();
  res.roles = stages;
  res.step_time_s = step;
  const double tokens = static_cast<double>(deck.train.global_batch * deck.model.seq);
  res.tokens_per_s = step > 0 ? tokens / step : 0;
  res.achieved_tflops_per_gpu = step > 0 ? flops / static_cast<double>(stages) / step / 1e12 : 0;
  const double model_flops =
      nn::gpt_model_flops(nn::GptConfig::from(deck.model), deck.train.global_batch * deck.model.seq);
  res.model_tflops_per_gpu = step > 0 ? model_flops / static_cast<double>(res.devices) / step / 1e12 : 0;
  res.mfu = res.model_tflops_per_gpu * 1e12 / cluster.peak_flops(deck.train.precision);
  for (const Usage& u : usage) {
    for (const auto& [k, v] : u.exposed) res.exposed_comm_s[k] = std::max(res.exposed_comm_s[k], v);
    for (const auto& [k, v] : u.busy) res.comm_busy_s[k] = std::max(res.comm_busy_s[k], v);
    if (step > 0) res.bubble_fraction = std::max(res.bubble_fraction, u.pipeline_wait / step);
  }
  for (const MemoryEstimate& m : memory)  // (stages differ in layers and schedule)
    if (m.peak > res.memory.peak) res.memory = m;
  res.fits = res.memory.peak <= cluster.memory_gib * 1073741824.0;
}

// ---- block replay (docs/simulator.md, "Block replay") -----------------------------------------

/// Micro-batches of a class program in the block replay (without interleaving).
constexpr int kBlockMicroBatches = 8;

/// One class of alike stages (the same layers per chunk, MoE layers, embedding and head, group
/// sizes and node spans; their act slots differ): its lowest stage compiled with fewer
/// micro-batches (block_deck), replayed alone (pipeline messages free), measured group by group.
struct BlockClass {
  int stage = 0, rank = 0;
  std::vector<compile::PipelineStep> order;  // the representative's schedule, fewer micro-batches
  std::vector<Usage> by_group;               // entry g + 1 (usage_of's by_group)
  std::vector<int> index;                    // (backward, chunk, micro-batch) -> group, flat (-1: none)
  MemoryEstimate memory;
  double step_end = 0, msg_bytes = 0;
  std::string pipeline_key;
  int vstages = 1, micro = 1;  // of the class program
  /// build_class without its memory figure: the reduced program and the deck's shape (without
  /// parameters) that class_memory makes it from, then frees
  std::shared_ptr<compile::StepProgram> prog;
  compile::StepShape deck_shape;
  /// The group that stands for micro-batch j of m (the first and last few are their own).
  const Usage& group(bool forward, int chunk, int j, int m) const {
    const int h = micro / 2, jr = j < h ? j : (j >= m - (micro - h) ? j - (m - micro) : h);
    const int g = index[(static_cast<size_t>(!forward) * static_cast<size_t>(vstages) + static_cast<size_t>(chunk)) *
                            static_cast<size_t>(micro) +
                        static_cast<size_t>(jr)];
    SHARDFLOW_REQUIRE(g >= 0, "simulate: stage ", stage, " has no group for micro-batch ", jr);
    return by_group[static_cast<size_t>(g) + 1];
  }
};

/// Whether Auto replays a pipelined step by blocks: not where groups share a stream across
/// groups (ZeRO-2 and 3 move gradients and parameters on the data axes in every group; on the
/// compute core every collective waits its turn on the compute stream): there the groups
/// replayed alone differed from the task replay by 2-10 % (docs/simulator.md).
bool blocks_apply(const StepShape& s, const Cluster& c) { return s.pp > 1 && s.zero < 2 && !c.comm_on_compute_core; }

/// The deck with the class programs' micro-batches, each of the same size as the deck's: at
/// most kBlockMicroBatches; interleaved, one round of the stages where there are no more
/// stages than that, else one round of its own (class_options).
Deck block_deck(const Deck& deck, const StepShape& s) {
  const int m = static_cast<int>(s.micro);
  const int mr = s.vstages > 1 && s.pp <= kBlockMicroBatches ? std::min(m, s.pp) : std::min(m, kBlockMicroBatches);
  SHARDFLOW_REQUIRE(s.global_batch % m == 0, "simulate: global batch ", s.global_batch,
                    " is not a multiple of the micro-batches ", m);
  Deck reduced = deck;
  reduced.train.micro_batches = mr;
  reduced.train.global_batch = s.global_batch / m * mr;
  return reduced;
}

/// The memory figure of class c whose build_class left it for later (c.prog, c.deck_shape),
/// which it frees.
void class_memory(BlockClass& c) {
  compile::StepProgram bare;
  bare.shape = std::move(c.deck_shape);
  compile::take_params(bare.shape, std::move(c.prog->shape));
  bare.buffers = compile::plan_buffers(bare.shape);
  bare.staging_slots = c.prog->staging_slots;
  c.memory = memory_of(bare);
  c.prog.reset();
}

/// How a class program compiles: unnamed; interleaved with fewer micro-batches than stages
/// (block_deck), all of them in one round. Replayed alone with free pipeline messages, a
/// group's time does not depend on where the schedule puts it, and the groups stand for the
/// deck's first and last micro-batches as in any other class program (BlockClass::group);
/// with one round of the stages (Megatron-LM's order) a class program of 35 stages ran 35
/// micro-batches.
compile::CompileOptions class_options(const Deck& reduced, const parallel::LayoutPlan& plan) {
  compile::CompileOptions o = unnamed();
  const int mr = reduced.train.micro_batches;
  if (reduced.strategy.virtual_stages > 1 && mr < plan.mesh().axis_size_or_1("pipeline")) o.mb_group = mr;
  return o;
}

/// build_class's first half: class c's program compiled from `reduced` (c.prog).
void compile_class(BlockClass& c, const Deck& reduced, const parallel::LayoutPlan& plan) {
  c.prog = std::make_shared<compile::StepProgram>(
      compile::compile_step(reduced, plan, c.rank, compile::StepMode::Train, class_options(reduced, plan)));
}

/// build_class's second half, from c.prog (compile_class).
bool finish_class(BlockClass& c, const Deck& deck, const parallel::LayoutPlan& plan, const Cluster& cluster,
                  GroupCache& gc, compile::StepProgram* deck_bare, bool memory_later) {
  const MeshShape& mesh = plan.mesh();
  std::vector<Role> one(1);
  Role& r = one[0];
  r.rank = c.rank;
  r.stage = c.stage;
  std::shared_ptr<compile::StepProgram> prog = std::move(c.prog);
  r.prog_ptr = prog;
  cost_role(r, cluster, mesh, mesh.axis_size_or_1("pipeline"), gc);
  c.order = prog->shape.order;
  c.vstages = prog->shape.vstages;
  c.micro = static_cast<int>(prog->shape.micro);
  // the deck's shape of this rank (deck_bare: made already, taken), with the reduced
  // program's parameters (the same rank: the same parameters), and its buffers
  if (deck_bare)
    c.deck_shape = std::move(deck_bare->shape);
  else
    c.deck_shape = compile::make_step_shape(deck, plan, r.rank, compile::StepMode::Train, compile::ShapeParams::None);
  r.prog_ptr.reset();
  c.prog = std::move(prog);
  if (!memory_later) class_memory(c);
  if (cluster.comm_on_compute_core) place_comm_on_core(r);
  match_p2p(one, true);
  if (replay(one) != 0) return false;
  Usage total;
  c.by_group.assign(c.order.size() + 2, Usage{});
  usage_of(r, cluster.comm_on_compute_core, total, &c.by_group);
  c.index.assign(2 * static_cast<size_t>(c.vstages) * static_cast<size_t>(c.micro), -1);
  for (size_t g = 0; g < c.order.size(); ++g)
    c.index[(static_cast<size_t>(!c.order[g].forward) * static_cast<size_t>(c.vstages) +
             static_cast<size_t>(c.order[g].chunk)) *
                static_cast<size_t>(c.micro) +
            static_cast<size_t>(c.order[g].micro_batch)] = static_cast<int>(g);
  for (double e : r.end) c.step_end = std::max(c.step_end, e);
  c.msg_bytes = r.msg_bytes;
  c.pipeline_key = r.pipeline_key;
  return true;
}

/// Class c (its stage and rank set): compiled from `reduced`, costed, replayed alone (pipeline
/// messages free) and measured group by group; its memory is the deck's buffers (every act
/// slot, every micro-batch's inputs) with the reduced program's staging and parameters (the
/// deck's shape is made without them: compile::take_params); `deck_bare`, when given, holds
/// that shape made already (moved from); `memory_later`: class_memory makes it. False when
/// the program deadlocks alone.
bool build_class(BlockClass& c, const Deck& deck, const Deck& reduced, const parallel::LayoutPlan& plan,
                 const Cluster& cluster, GroupCache& gc, compile::StepProgram* deck_bare = nullptr,
                 bool memory_later = false) {
  compile_class(c, reduced, plan);
  return finish_class(c, deck, plan, cluster, gc, deck_bare, memory_later);
}

/// Stage `order`'s whole schedule (m micro-batches) from class c alone, pipeline messages free:
/// a lower bound of its step in the block replay (each group starts no earlier than its own
/// idle time after the previous one).
double class_alone(const BlockClass& c, const std::vector<compile::PipelineStep>& order, int m) {
  double t = std::max(0.0, c.by_group.front().end);
  for (const compile::PipelineStep& g : order) {
    const Usage& u = c.group(g.forward, g.chunk, g.micro_batch, m);
    t = (t + u.gap) + std::max(0.0, u.end - u.begin);  // the replay's own order of additions
  }
  const double last_end = c.order.empty() ? 0 : c.by_group[c.order.size()].end;
  return t + std::max(0.0, c.step_end - last_end);
}

/// The block replay of `deck`'s pipelined step into `res`; false when it does not apply (no
/// fewer programs or micro-batches than the task replay, or a class program that deadlocks
/// alone): the caller replays the tasks.
bool simulate_blocks(const Deck& deck, const Cluster& cluster, const parallel::LayoutPlan& plan,
                     const SimOptions& options, SimResult& res) {
  using compile::PipelineStep;
  const auto t0 = std::chrono::steady_clock::now();
  const MeshShape& mesh = plan.mesh();
  const int pp = mesh.axis_size_or_1("pipeline");
  StepShape shape0 =
      compile::make_step_shape(deck, plan, stage_rank(mesh, 0), compile::StepMode::Train, compile::ShapeParams::None);
  if (options.replay != SimOptions::Replay::Blocks && !blocks_apply(shape0, cluster)) return false;
  // the stages' classes, from their shapes (no tasks) and their groups' sizes and node spans
  std::vector<parallel::Axes> subsets;  // every set of the other axes of size > 1
  {
    std::vector<std::string> axes;
    for (const auto& a : mesh.axis_names())
      if (a != "pipeline" && mesh.axis_size(a) > 1) axes.push_back(a);
    for (size_t bits = 1; bits < (size_t(1) << axes.size()); ++bits) {
      parallel::Axes sub;
      for (size_t k = 0; k < axes.size(); ++k)
        if (bits & (size_t(1) << k)) sub.push_back(axes[k]);
      subsets.push_back(sub);
    }
  }
  GroupCache gc0{mesh, cluster, {}, {}};
  std::map<std::vector<int64_t>, int> class_of_sig;
  std::vector<int> cls(static_cast<size_t>(pp));
  std::vector<BlockClass> classes;
  // every stage's chunks from stage 0's map of layers to chunks (chunk gc on stage gc % pp)
  std::vector<std::vector<int>> chunk_layers(static_cast<size_t>(shape0.nchunks));
  for (size_t l = 0; l < shape0.layer_chunk.size(); ++l)
    chunk_layers[static_cast<size_t>(shape0.layer_chunk[l])].push_back(static_cast<int>(l));
  for (int st = 0; st < pp; ++st) {
    const int rank = stage_rank(mesh, st);
    std::vector<int64_t> sig{st == 0, st == pp - 1};
    for (int gcx = st; gcx < shape0.nchunks; gcx += pp) {
      sig.push_back(static_cast<int64_t>(chunk_layers[static_cast<size_t>(gcx)].size()));
      for (int l : chunk_layers[static_cast<size_t>(gcx)]) sig.push_back(shape0.moe_layer(l));
    }
    for (const auto& sub : subsets) {
      const GroupInfo g = gc0.group_of(rank, sub);
      sig.insert(sig.end(), {g.n, g.nodes, g.local});
    }
    auto it = class_of_sig.find(sig);
    if (it == class_of_sig.end()) {
      it = class_of_sig.emplace(sig, static_cast<int>(classes.size())).first;
      BlockClass c;
      c.stage = st;
      c.rank = rank;
      classes.push_back(std::move(c));
    }
    cls[static_cast<size_t>(st)] = it->second;
  }
  // Each class's program with few micro-batches (block_deck), replayed alone: with free
  // pipeline messages, a group's time does not depend on where the schedule puts it; the
  // first and last few micro-batches are kept apart (their groups can differ: the first
  // gathers, the last micro-batch's gradient synchronization).
  const int v = shape0.vstages, m = static_cast<int>(shape0.micro), nch = shape0.nchunks;
  const auto kind = shape0.schedule;
  const Deck reduced = block_deck(deck, shape0);
  const int mr = reduced.train.micro_batches;
  if (mr == m && static_cast<int>(classes.size()) == pp) return false;  // nothing saved
  std::vector<std::exception_ptr> errors(classes.size());
  std::vector<char> stuck(classes.size(), 0);
  compile::StepProgram bare0;  // stage 0's deck shape (without parameters), made above: its class's memory figure
  bare0.shape = std::move(shape0);
  // In two halves, every class's program first, then costing and replaying them: the
  // threads take the pieces in that order, so three classes on two threads end together
  // (a second half waits for its class's first).
  const size_t nc = classes.size();
  std::vector<std::atomic<bool>> compiled(nc);
  for (auto& x : compiled) x = false;
  in_parallel(2 * nc, options.threads, [&](size_t piece) {
    const size_t k = piece % nc;
    if (piece < nc) {
      try {
        compile_class(classes[k], reduced, plan);
      } catch (...) {
        errors[k] = std::current_exception();
      }
      compiled[k] = true;
      return true;
    }
    while (!compiled[k]) std::this_thread::yield();
    if (errors[k]) return true;
    try {
      GroupCache gc{mesh, cluster, {}, {}};
      stuck[k] =
          finish_class(classes[k], deck, plan, cluster, gc, classes[k].stage == 0 ? &bare0 : nullptr, true) ? 0 : 1;
    } catch (...) {
      errors[k] = std::current_exception();
    }
    return true;
  });
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  for (char x : stuck)
    if (x) return false;  // the task replay names the deadlock
  // The classes' memory figures (the deck's buffers) and freeing their programs need nothing
  // of the schedule: on another thread while this one sweeps, when there is one; this one
  // takes what is left once it has swept.
  std::vector<std::exception_ptr> memory_errors(classes.size());
  std::atomic<size_t> next_memory{0};
  auto memories = [&] {
    for (size_t k; (k = next_memory++) < classes.size();) try {
        class_memory(classes[k]);
      } catch (...) {
        memory_errors[k] = std::current_exception();
      }
  };
  const int hw = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  std::thread memory_thread;
  if (hw > 1)
    memory_thread = std::thread(memories);
  else
    memories();
  struct Join {  // (joined on every way out, the deadlock's early return included)
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join{memory_thread};
  const auto t1 = std::chrono::steady_clock::now();
  // The schedule, group by group, on every stage. A group starts when its stage is done with
  // the previous one (and the idle time before the group in its class's replay, waiting on
  // collectives, has passed), when its input has arrived, and when the send that last read
  // its act slot (micro-batch j - K of its chunk) is done, as the compiled step orders them.
  // A message leaves when its group is done and the receiver has posted its receive (the
  // receiver's group j - K of its chunk has started: the compiled step posts a receive once
  // its act slot is free) and takes its time on the link between the two stages.
  // (stage major: a stage's cells of one direction and chunk in micro-batch order, which its
  // sweep walks forward)
  auto at = [&](int st, bool fwd, int vc, int j) {
    return ((static_cast<size_t>(st) * 2 + (fwd ? 0 : 1)) * static_cast<size_t>(v) + static_cast<size_t>(vc)) *
               static_cast<size_t>(m) +
           static_cast<size_t>(j);
  };
  // the stage and chunk of global chunk gcx ± 1 of (st, vc), gcx = vc · pp + st
  auto up_of = [&](int st, int vc) { return st + 1 < pp ? std::make_pair(st + 1, vc) : std::make_pair(0, vc + 1); };
  auto down_of = [&](int st, int vc) { return st > 0 ? std::make_pair(st - 1, vc) : std::make_pair(pp - 1, vc - 1); };
  const size_t cells = static_cast<size_t>(pp) * 2 * static_cast<size_t>(v) * static_cast<size_t>(m);
  struct Cell {  // -1: not known yet
    double begin = -1, end = -1, sent = -1;
  };
  std::vector<Cell> cell(cells);
  std::vector<compile::ScheduleWalk> walk;  // each stage's schedule, walked as it runs
  std::vector<double> clock(static_cast<size_t>(pp)), wait(static_cast<size_t>(pp), 0);
  std::vector<double> link(static_cast<size_t>(pp), 0);  // the messages it sends and receives, on their links
  std::vector<std::vector<int>> stage_slots(static_cast<size_t>(pp));  // act slots by stage and chunk
  size_t left = 0;
  walk.reserve(static_cast<size_t>(pp));
  for (int st = 0; st < pp; ++st) {
    walk.emplace_back(kind, pp, st, m, v);
    stage_slots[static_cast<size_t>(st)] = compile::in_flight(walk.back(), v);
    left += walk.back().size();
    const BlockClass& c = classes[static_cast<size_t>(cls[static_cast<size_t>(st)])];
    clock[static_cast<size_t>(st)] = std::max(0.0, c.by_group[0].end);
  }
  // each class's group for every cell (direction, chunk, micro-batch) of a stage, flat: its
  // idle time before it and its span (what the sweep reads of c.group's Usage)
  struct Span {
    double gap = 0, dur = 0;
  };
  auto cell_of = [&](bool fwd, int vc, int j) {
    return (static_cast<size_t>(!fwd) * static_cast<size_t>(v) + static_cast<size_t>(vc)) * static_cast<size_t>(m) +
           static_cast<size_t>(j);
  };
  std::vector<std::vector<Span>> spans(classes.size());
  for (size_t k = 0; k < classes.size(); ++k) {
    const BlockClass& c = classes[k];
    spans[k].resize(2 * static_cast<size_t>(v) * static_cast<size_t>(m));
    for (int b = 0; b < 2; ++b)
      for (int vc = 0; vc < v; ++vc)
        for (int j = 0; j < m; ++j) {
          const Usage& u = c.group(b == 0, vc, j, m);
          spans[k][cell_of(b == 0, vc, j)] = {u.gap, std::max(0.0, u.end - u.begin)};
        }
  }
  // a message's time from stage `from` to its neighbour `to` (up: to = from + 1, else from - 1)
  std::vector<double> up(static_cast<size_t>(pp)), down(static_cast<size_t>(pp));
  {
    std::vector<int> node(static_cast<size_t>(pp));
    for (int st = 0; st < pp; ++st) node[static_cast<size_t>(st)] = cluster.node_of(stage_rank(mesh, st));
    for (int st = 0; st < pp; ++st) {
      const double bytes = classes[static_cast<size_t>(cls[static_cast<size_t>(st)])].msg_bytes;
      auto message = [&](int to) {
        const Link& l = node[static_cast<size_t>(st)] == node[static_cast<size_t>(to)] ? cluster.intra : cluster.inter;
        return l.latency_us * 1e-6 + bytes / (l.bandwidth_gbs * 1e9 * l.efficiency);
      };
      up[static_cast<size_t>(st)] = message((st + 1) % pp);
      down[static_cast<size_t>(st)] = message((st + pp - 1) % pp);
    }
  }
  auto slots = [&](int st, int vc) { return stage_slots[static_cast<size_t>(st)][static_cast<size_t>(vc)]; };
  // Each (stage, direction, chunk)'s cells by micro-batch, where their messages go (the
  // receiver's cells of the same direction, its act slots and the link's time), and where
  // their inputs come from: indexed (st · 2 + backward) · v + chunk.
  struct Channel {
    Cell* own = nullptr;
    const Cell* receiver = nullptr;  // (none: the last chunk's x, the first chunk's dx)
    int receiver_slots = 0;
    double transfer = 0;
    const Channel* input = nullptr;  // the sender of its input (none: the first chunk's x, the last chunk's dx)
    /// the act slot of micro-batch j is free once the message of cell j - slots of this
    /// channel is sent (null: nothing to wait for)
    const Channel* slot_send = nullptr;
    int slots = 1;
    const Span* span = nullptr;        // its class's groups by micro-batch
    double link_in = 0, link_out = 0;  // its messages' time on the stage's links (0: none)
  };
  std::vector<Channel> channels(static_cast<size_t>(pp) * 2 * static_cast<size_t>(v));
  auto channel_of = [&](int st, bool fwd, int vc) -> Channel& {
    return channels[(static_cast<size_t>(st) * 2 + (fwd ? 0 : 1)) * static_cast<size_t>(v) + static_cast<size_t>(vc)];
  };
  for (int st = 0; st < pp; ++st)
    for (bool fwd : {true, false})
      for (int vc = 0; vc < v; ++vc) {
        Channel& ch = channel_of(st, fwd, vc);
        ch.own = &cell[at(st, fwd, vc, 0)];
        const int gcx = vc * pp + st;
        if (fwd ? gcx < nch - 1 : gcx > 0) {
          const auto [rs, rvc] = fwd ? up_of(st, vc) : down_of(st, vc);
          ch.receiver = &cell[at(rs, fwd, rvc, 0)];
          ch.receiver_slots = slots(rs, rvc);
          ch.transfer = (fwd ? up : down)[static_cast<size_t>(st)];  // to rs
        }
        if (fwd ? gcx > 0 : gcx < nch - 1) {
          const auto [ss, svc] = fwd ? down_of(st, vc) : up_of(st, vc);
          ch.input = &channel_of(ss, fwd, svc);
        }
        // the act slot is free once the send that last read it (micro-batch j - slots of the
        // chunk) is done: its x (a forward that sends x on), else its dx (the last chunk's
        // forward, whose act slot the head's dx reused; a middle chunk's backward)
        if (fwd ? gcx > 0 || gcx < nch - 1 : gcx > 0 && gcx < nch - 1)
          ch.slot_send = &channel_of(st, fwd && gcx < nch - 1, vc);
        ch.slots = slots(st, vc);
        ch.span = spans[static_cast<size_t>(cls[static_cast<size_t>(st)])].data() + cell_of(fwd, vc, 0);
      }
  for (Channel& ch : channels) {  // (its input's sender's link time and its own)
    if (ch.input) ch.link_in = ch.input->transfer;
    if (ch.receiver) ch.link_out = ch.transfer;
  }
  // when the message of cell j of channel ch has arrived; -1: not known yet
  auto sent_at = [](const Channel& ch, int j) -> double {
    Cell& x = ch.own[j];
    if (x.sent >= 0) return x.sent;
    if (x.end < 0) return -1;
    const int rk = ch.receiver_slots;
    const double posted = j >= rk ? ch.receiver[j - rk].begin : 0.0;
    if (posted < 0) return -1;
    return x.sent = std::max(x.end, posted) + ch.transfer;
  };
  for (int sweep = 0; left > 0; ++sweep) {
    bool moved = false;
    for (int k = 0; k < pp; ++k) {
      const int st = sweep % 2 == 0 ? k : pp - 1 - k;  // alternate directions: x flows up, dx down
      compile::ScheduleWalk& w = walk[static_cast<size_t>(st)];
      const Channel* fwd_ch = &channel_of(st, true, 0);
      const Channel* bwd_ch = &channel_of(st, false, 0);
      double& t = clock[static_cast<size_t>(st)];
      for (; !w.done(); w.next()) {
        const PipelineStep g = w.step();
        const int j = g.micro_batch;
        const Channel& ch = (g.forward ? fwd_ch : bwd_ch)[g.chunk];
        double ready = 0;  // input arrived, act slot free (-1: not known yet)
        if (ch.input) {
          ready = sent_at(*ch.input, j);
          if (ready < 0) break;
        }
        if (ch.slot_send && j >= ch.slots) {
          const double x = sent_at(*ch.slot_send, j - ch.slots);
          if (x < 0) break;
          ready = std::max(ready, x);
        }
        const Span& u = ch.span[j];
        const double own = t + u.gap;
        if (ready > own) wait[static_cast<size_t>(st)] += ready - own;
        Cell& here = ch.own[j];
        here.begin = std::max(own, ready);
        t = std::max(own, ready) + u.dur;
        here.end = t;
        link[static_cast<size_t>(st)] += ch.link_in;  // (+ 0 where it has none: exact)
        link[static_cast<size_t>(st)] += ch.link_out;
        --left;
        moved = true;
      }
    }
    if (!moved) return false;  // the task replay names the deadlock
  }
  // results, stage by stage: the groups it ran, what comes before and after them
  double step = 0, flops = 0;
  std::vector<Usage> per_stage(static_cast<size_t>(pp));
  // A class's groups add up to the same on each of its stages: every stage runs every cell
  // (direction, chunk, micro-batch) once, so each group as often as cells stand for it;
  // summed once per class and copied.
  std::vector<char> summed(classes.size(), 0);
  std::vector<Usage> class_sum(classes.size());  // (its flops: the class's, per stage)
  for (int st = 0; st < pp; ++st) {
    const size_t k = static_cast<size_t>(cls[static_cast<size_t>(st)]);
    const BlockClass& c = classes[k];
    const double last_end = c.order.empty() ? 0 : c.by_group[c.order.size()].end;
    step = std::max(step, clock[static_cast<size_t>(st)] + std::max(0.0, c.step_end - last_end));
    if (!summed[k]) {
      std::vector<int> ran(c.by_group.size(), 0);  // how often each group runs on the stage
      for (compile::ScheduleWalk w(kind, pp, st, m, v); !w.done(); w.next()) {
        const PipelineStep g = w.step();
        ++ran[static_cast<size_t>(&c.group(g.forward, g.chunk, g.micro_batch, m) - c.by_group.data())];
      }
      Usage& sum = class_sum[k];
      sum = Usage{};
      auto add = [&](const Usage& x, int times) {
        if (times == 0) return;
        for (const auto& [key, val] : x.exposed) sum.exposed[key] += times * val;
        for (const auto& [key, val] : x.busy) sum.busy[key] += times * val;
        sum.flops += times * x.flops;
      };
      add(c.by_group.front(), 1);
      for (size_t g = 1; g + 1 < c.by_group.size(); ++g) add(c.by_group[g], ran[g]);
      add(c.by_group.back(), 1);
      summed[k] = 1;
    }
    Usage& u = per_stage[static_cast<size_t>(st)];
    u.exposed = class_sum[k].exposed;
    u.busy = class_sum[k].busy;
    flops += class_sum[k].flops;
    if (!c.pipeline_key.empty()) {
      u.exposed[c.pipeline_key] += wait[static_cast<size_t>(st)];
      u.busy[c.pipeline_key] += link[static_cast<size_t>(st)];
    }
    u.pipeline_wait = wait[static_cast<size_t>(st)];
  }
  memories();
  if (memory_thread.joinable()) memory_thread.join();
  for (const auto& e : memory_errors)
    if (e) std::rethrow_exception(e);
  std::vector<MemoryEstimate> memory;  // the lowest stage of a class has its most act slots
  for (const BlockClass& c : classes) memory.push_back(c.memory);
  fill_result(res, deck, cluster, mesh, pp, step, flops, per_stage, memory);
  res.replay = "blocks";
  res.stages_compiled = static_cast<int>(classes.size());
  const auto t2 = std::chrono::steady_clock::now();
  res.compile_s = std::chrono::duration<double>(t1 - t0).count();
  res.simulate_s = std::chrono::duration<double>(t2 - t1).count();
  return true;
}

}  // namespace

SimResult simulate(const Deck& deck, const Cluster& cluster, const SimOptions& options) {
  const MeshShape mesh = deck.mesh.to_mesh_shape();
  return simulate(deck, cluster, compile::layout_plan(deck, mesh), {}, options);
}

SimResult simulate(const Deck& deck, const Cluster& cluster, const parallel::LayoutPlan& plan,
                   const CompiledStages& given, const SimOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  const MeshShape& mesh = plan.mesh();
  const int pp = mesh.axis_size_or_1("pipeline");
  if (pp > 1 && options.trace_file.empty() && options.replay != SimOptions::Replay::Tasks) {
    SimResult res;
    if (simulate_blocks(deck, cluster, plan, options, res)) return res;
  }
  // one representative per stage: every other coordinate 0
  std::vector<Role> roles(static_cast<size_t>(pp));
  for (int st = 0; st < pp; ++st) {
    Role& r = roles[static_cast<size_t>(st)];
    r.rank = stage_rank(mesh, st);
    r.stage = st;
    auto it = given.find(st);
    if (it != given.end()) r.prog_ptr = it->second;
  }
  // the stages not given compiled, and every stage costed, on up to options.threads threads
  // (each stage's program is its own; the deck and the plan are only read); a program is
  // released as soon as its costs and memory are taken, so that at most one per thread is
  // alive (64 stages of the 1T row held at once took 1.1 GB); the lowest stage's error is
  // thrown
  const bool keep_programs = !options.trace_file.empty();
  {
    std::vector<std::exception_ptr> errors(roles.size());
    in_parallel(roles.size(), options.threads, [&](size_t i) {
      Role& r = roles[i];
      try {
        if (!r.prog_ptr) {
          compile::CompileOptions co = unnamed();
          co.names = keep_programs;  // a trace shows the task names
          r.prog_ptr = std::make_shared<const compile::StepProgram>(
              compile::compile_step(deck, plan, r.rank, compile::StepMode::Train, co));
        }
        GroupCache gc{mesh, cluster, {}, {}};
        cost_role(r, cluster, mesh, pp, gc);
        r.memory = memory_of(r.prog());
        if (!keep_programs) r.prog_ptr.reset();
      } catch (...) {
        errors[i] = std::current_exception();
      }
      return true;
    });
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
  }
  const auto t1 = std::chrono::steady_clock::now();
  if (cluster.comm_on_compute_core)
    for (Role& r : roles) place_comm_on_core(r);
  match_p2p(roles, false);
  const size_t remaining = replay(roles);
  if (remaining != 0) {
    std::string first;
    for (size_t q = 0; q < roles.size() && first.empty(); ++q)
      for (size_t i = 0; i < roles[q].dur.size(); ++i)
        if (roles[q].end[i] < 0) {
          // the name from the program (compiled again when it was released: an error path)
          std::string name;
          try {
            if (roles[q].prog_ptr) name = roles[q].prog().tasks[i].name;
            if (name.empty()) name = compile::compile_step(deck, plan, roles[q].rank).tasks.at(i).name;
          } catch (...) {
            name = "?";
          }
          first = "stage " + std::to_string(q) + " task " + std::to_string(i) + " '" + name + "' (chained after " +
                  std::to_string(roles[q].chain_prev[i]) + ")";
          break;
        }
    throw Error("simulate: " + std::to_string(remaining) + " tasks of the step wait on each other, the first " + first +
                ": the compiled program would deadlock");
  }
  // results
  double step = 0, flops = 0;
  std::vector<Usage> usage(roles.size());
  std::vector<MemoryEstimate> memory;
  for (size_t q = 0; q < roles.size(); ++q) {
    const Role& r = roles[q];
    for (size_t i = 0; i < r.end.size(); ++i) step = std::max(step, r.end[i]);
    for (double f : r.flops) flops += f;
    usage_of(r, cluster.comm_on_compute_core, usage[q], nullptr);
    memory.push_back(r.memory);
  }
  SimResult res;
  fill_result(res, deck, cluster, mesh, static_cast<int>(roles.size()), step, flops, usage, memory);
  res.stages_compiled = static_cast<int>(roles.size() - given.size());
  const auto t2 = std::chrono::steady_clock::now();
  res.compile_s = std::chrono::duration<double>(t1 - t0).count();
  res.simulate_s = std::chrono::duration<double>(t2 - t1).count();
  if (!options.trace_file.empty()) {
    nlohmann::json ev = nlohmann::json::array();
    for (const Role& r : roles) {
      ev.push_back(
          {{"name", "process_name"},
           {"ph", "M"},
           {"pid", r.stage},
           {"args", {{"name", "stage " + std::to_string(r.stage) + " (rank " + std::to_string(r.rank) + ")"}}}});
      std::map<std::string, int> tid{{"compute", 0}};
      for (size_t i = 0; i < r.dur.size(); ++i) {
        const std::string lane = r.comm[i] ? r.keys[static_cast<size_t>(r.key[i])] : "compute";
        auto it = tid.find(lane);
        if (it == tid.end()) {
          it = tid.emplace(lane, static_cast<int>(tid.size())).first;
          ev.push_back({{"name", "thread_name"},
                        {"ph", "M"},
                        {"pid", r.stage},
                        {"tid", it->second},
                        {"args", {{"name", lane}}}});
        }
        ev.push_back({{"name", r.prog().tasks[i].name},
                      {"ph", "X"},
                      {"pid", r.stage},
                      {"tid", it->second},
                      {"ts", r.start[i] * 1e6},
                      {"dur", (r.end[i] - r.start[i]) * 1e6}});
      }
    }
    std::ofstream f(options.trace_file);
    SHARDFLOW_REQUIRE_INPUT(f.good(), "--trace: cannot write ", options.trace_file);
    f << nlohmann::json{{"traceEvents", ev}, {"displayTimeUnit", "ms"}}.dump() << "\n";
    SHARDFLOW_REQUIRE_INPUT(f.good(), "--trace: writing ", options.trace_file, " failed");
  }
  return res;
}

std::string sim_json(const SimResult& r) {
  nlohmann::json j;
  j["cluster"] = r.cluster;
  j["mesh"] = r.mesh;
  j["model"] = r.model;
  j["devices"] = r.devices;
  j["stages_simulated"] = r.roles;
  j["stages_compiled"] = r.stages_compiled;
  j["replay"] = r.replay;
  j["step_time_s"] = r.step_time_s;
  j["tokens_per_s"] = r.tokens_per_s;
  j["achieved_tflops_per_gpu"] = r.achieved_tflops_per_gpu;
  j["model_tflops_per_gpu"] = r.model_tflops_per_gpu;
  j["mfu"] = r.mfu;
  j["bubble_fraction"] = r.bubble_fraction;
  j["exposed_comm_s"] = r.exposed_comm_s;
  j["comm_busy_s"] = r.comm_busy_s;
  j["memory_bytes_per_device"] = {{"params", r.memory.params},       {"grads", r.memory.grads},
                                  {"optimizer", r.memory.optimizer}, {"activations", r.memory.activations},
                                  {"transient", r.memory.transient}, {"peak", r.memory.peak}};
  j["fits"] = r.fits;
  j["compile_s"] = r.compile_s;
  j["simulate_s"] = r.simulate_s;
  return j.dump(2);
}

std::string sim_text(const SimResult& r) {
  std::ostringstream os;
  char line[512];
  if (r.replay == "blocks")
    std::snprintf(line, sizeof line,
                  "simulated on %s: %d devices, mesh %s, model %s (%d stages replayed by blocks: %d stage class%s "
                  "compiled in %.3f s, simulated in %.3f s)\n",
                  r.cluster.c_str(), r.devices, r.mesh.c_str(), r.model.c_str(), r.roles, r.stages_compiled,
                  r.stages_compiled == 1 ? "" : "es", r.compile_s, r.simulate_s);
  else
    std::snprintf(
        line, sizeof line,
        "simulated on %s: %d devices, mesh %s, model %s (%d stage%s compiled in %.3f s, simulated in %.3f s)\n",
        r.cluster.c_str(), r.devices, r.mesh.c_str(), r.model.c_str(), r.roles, r.roles == 1 ? "" : "s", r.compile_s,
        r.simulate_s);
  os << line;
  std::snprintf(line, sizeof line,
                "step %.4g s, %.0f tokens/s, %.4g TFLOP/s per GPU executed, %.4g model TFLOP/s per GPU, MFU %.3f, "
                "pipeline bubble %.3f\n",
                r.step_time_s, r.tokens_per_s, r.achieved_tflops_per_gpu, r.model_tflops_per_gpu, r.mfu,
                r.bubble_fraction);
  os << line;
  for (const auto& [k, v] : r.comm_busy_s) {
    const auto e = r.exposed_comm_s.count(k) ? r.exposed_comm_s.at(k) : 0.0;
    std::snprintf(line, sizeof line, "  %-24s busy %.4f s, exposed %.4f s\n", k.c_str(), v, e);
    os << line;
  }
  const double g = 1073741824.0;
  std::snprintf(line, sizeof line,
                "memory per device (largest stage): params %.2f GiB, grads %.2f, optimizer %.2f, activations %.2f, "
                "transient %.2f, peak %.2f GiB: %s\n",
                r.memory.params / g, r.memory.grads / g, r.memory.optimizer / g, r.memory.activations / g,
                r.memory.transient / g, r.memory.peak / g, r.fits ? "fits" : "does NOT fit");
  os << line;
  return os.str();
}

}  // namespace shardflow::sim

namespace shardflow::sim {

namespace {
std::vector<int> divisors(int n) {
  std::vector<int> d;
  for (int i = 1; i <= n; ++i)
    if (n % i == 0) d.push_back(i);
  return d;
}
}  // namespace

SearchResult search(const Deck& base, const Cluster& cluster, int devices, const SearchOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  SHARDFLOW_REQUIRE_INPUT(devices >= 1, "simulate --search: --devices ", devices, " must be >= 1");
  SearchResult out;
  // 1. enumerate
  struct Config {
    Deck deck;
    std::string sets;
  };
  std::vector<Config> configs;
  const ModelConfig& m = base.model;
  const bool moe = m.experts > 0;
  for (int t : divisors(devices)) {
    if (t > cluster.devices_per_node || m.heads % t != 0) continue;
    for (int p : divisors(devices / t)) {
      if (p > m.layers) continue;
      // context parallelism for long sequences: c ranks each keep at least 4,096 positions
      for (int cx : divisors(devices / (t * p))) {
        if (cx > 1 && (m.seq / cx < 4096 || m.seq % (2 * cx) != 0 || moe || m.attention_dropout > 0)) continue;
        const int d = devices / (t * p * cx);  // the sequences' split: data × fsdp × expert
        struct DataLayout {
          int data, fsdp, expert, zero;
        };
        std::vector<DataLayout> layouts;
        // MoE: an expert axis of e ranks (at most the experts) is part of the batch split
        for (int e : divisors(d)) {
          if (e > 1 && (!moe || e > m.experts)) continue;
          const int rest = d / e;
          if (rest == 1) {
            layouts.push_back({1, 1, e, 0});
          } else {
            for (int z : {0, 1, 2}) layouts.push_back({rest, 1, e, z});
            layouts.push_back({1, rest, e, 3});
          }
        }
        for (const DataLayout& dl : layouts) {
          if (base.train.global_batch % d != 0) continue;
          const int64_t per_replica = base.train.global_batch / d;
          for (int64_t mbs : {1, 2, 4, 8}) {
            if (per_replica % mbs != 0) continue;
            const int64_t micro = per_replica / mbs;
            for (int v : {1, 2, 3, 4}) {
              if (v > 1 && (p == 1 || m.layers % (p * v) != 0)) continue;
              for (Recompute rc : {Recompute::None, Recompute::Selective, Recompute::Full}) {
                if (rc == Recompute::Full && moe) continue;
                // the ring keeps no probabilities: selective recomputation is no recomputation
                if (rc == Recompute::Selective && cx > 1) continue;

                for (bool sp : {false, true}) {
                  if (sp && t == 1) continue;
                  Deck dk = base;
                  dk.mesh.data = dl.data;
                  dk.mesh.fsdp = dl.fsdp;
                  dk.mesh.tensor = t;
                  dk.mesh.pipeline = p;
                  dk.mesh.expert = dl.expert;
                  dk.mesh.context = cx;
                  dk.strategy.zero_stage = dl.zero;
                  dk.strategy.virtual_stages = v;
                  dk.strategy.schedule = PipelineSchedule::OneFOneB;
                  dk.strategy.recompute = rc;
                  dk.strategy.sequence_parallel = sp;
                  dk.train.micro_batches = micro;
                  std::ostringstream sets;
                  sets << "mesh.data=" << dl.data << " mesh.fsdp=" << dl.fsdp << " mesh.tensor=" << t
                       << " mesh.pipeline=" << p << " mesh.expert=" << dl.expert << " mesh.context=" << cx
                       << " strategy.zero_stage=" << dl.zero << " train.micro_batches=" << micro
                       << " strategy.virtual_stages=" << v << " strategy.recompute=" << recompute_name(rc)
                       << " strategy.sequence_parallel=" << (sp ? "true" : "false");
                  configs.push_back({std::move(dk), sets.str()});
                }
              }
            }
          }
        }
      }
    }
  }
  out.enumerated = static_cast<int>(configs.size());
  const int threads =
      std::max(1, options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency()));
  out.threads = threads;
  // 2. memory check and lower bound, every configuration
  const double capacity = cluster.memory_gib * 1073741824.0;
  struct Checked {
    enum { Invalid, Over, Fits } status = Invalid;
    std::string reason;  // Invalid: the compiler's message
    double bound = 0;    // seconds: the larger of the first and last stage's stage_bound
    double seconds = 0;
  };
  std::vector<Checked> checked(configs.size());
  std::mutex fault_mu;
  std::exception_ptr fault;
  in_parallel(configs.size(), threads, [&](size_t i) {
    const auto tm = std::chrono::steady_clock::now();
    Checked& c = checked[i];
    const Deck& dk = configs[i].deck;
    const int p = dk.mesh.pipeline;
    try {
      const MeshShape mesh = dk.mesh.to_mesh_shape();
      const parallel::LayoutPlan plan = compile::layout_plan(dk, mesh);
      auto rank_of_stage = [&](int st) { return stage_rank(mesh, st); };
      c.status = Checked::Fits;
      // the buffers alone (no tasks: cheap) over the memory already? (the peak is at least
      // the buffers); then the first and the last stage compiled (the largest in practice),
      // whose programs also give the lower bound
      compile::StepProgram bare[2];  // the first and last stage's shapes and buffers
      for (int k = 0; k < 2; ++k) {
        bare[k].shape = compile::make_step_shape(dk, plan, rank_of_stage(k == 0 ? 0 : p - 1), compile::StepMode::Train,
                                                 compile::ShapeParams::Stage);
        bare[k].buffers = compile::plan_buffers(bare[k].shape);
        if (static_cast<double>(compile::predict_peak(bare[k], 0, 0).peak()) > capacity) c.status = Checked::Over;
        if (p == 1 || c.status == Checked::Over) break;
      }
      GroupCache gc{mesh, cluster, {}, {}};  // one per configuration: the stages share groups
      // a step simulate replays by blocks: the first and last stage's classes, compiled with
      // few micro-batches; the bound is their schedule alone (class_alone)
      bool by_blocks = false;
      if (p > 1 && c.status != Checked::Over) {
        const StepShape& sh0 = bare[0].shape;
        if (blocks_apply(sh0, cluster)) {
          const Deck reduced = block_deck(dk, sh0);
          by_blocks = true;
          double bound = 0;
          for (int k = 0; k < 2; ++k) {
            const int st = k == 0 ? 0 : p - 1;
            BlockClass bc;
            bc.stage = st;
            bc.rank = rank_of_stage(st);
            if (!build_class(bc, dk, reduced, plan, cluster, gc, &bare[k])) {
              by_blocks = false;  // simulate replays its tasks (and names the deadlock)
              break;
            }
            if (bc.memory.peak > capacity) {
              c.status = Checked::Over;
              break;
            }
            const int mb = static_cast<int>(sh0.micro);
            bound =
                std::max(bound, class_alone(bc, compile::pipeline_schedule(sh0.schedule, p, st, mb, sh0.vstages), mb));
          }
          if (by_blocks) c.bound = bound;
        }
      }
      for (int st : {0, p - 1}) {
        if (c.status == Checked::Over || by_blocks) break;
        auto prog = std::make_shared<const compile::StepProgram>(
            compile::compile_step(dk, plan, rank_of_stage(st), compile::StepMode::Train, unnamed()));
        if (static_cast<double>(compile::predict_peak(*prog, 0, 0).peak()) > capacity) {
          c.status = Checked::Over;
          break;
        }
        c.bound = std::max(c.bound, stage_bound(cluster, mesh, rank_of_stage(st), st, std::move(prog), gc));
        if (p == 1) break;
      }
    } catch (const InputError& e) {
      c.status = Checked::Invalid;
      c.reason = std::string(e.what()).substr(0, 160);
    } catch (...) {  // a fault of shardflow's own: thrown on the calling thread below
      std::lock_guard<std::mutex> lock(fault_mu);
      if (!fault) fault = std::current_exception();
      return false;
    }
    c.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tm).count();
    return true;
  });
  if (fault) std::rethrow_exception(fault);
  std::vector<size_t> candidates;  // fit the memory check
  for (size_t i = 0; i < checked.size(); ++i) {
    out.memory_check_s += checked[i].seconds;
    if (checked[i].status == Checked::Invalid) {
      ++out.invalid;
      ++out.invalid_reasons[checked[i].reason];
    } else if (checked[i].status == Checked::Over) {
      ++out.pruned_memory;
    } else {
      candidates.push_back(i);
    }
  }
  // 3. Simulate the candidates from the lowest bound up. Once `top` fitting configurations
  // are known, a candidate whose bound is not below the slowest of them cannot enter the list
  // (its step is at least its bound), nor can any after it: the list is the exhaustive
  // search's, with far fewer simulations. (Workers in parallel may simulate a few more than
  // one would; never fewer.)
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](size_t a, size_t b) { return checked[a].bound < checked[b].bound; });
  const size_t keep = static_cast<size_t>(std::max(0, options.top));
  std::mutex mu;
  std::vector<SearchCandidate> fits;
  std::multiset<double> best_steps;  // the `keep` fastest fitting steps so far
  std::vector<char> done(candidates.size(), 0);
  in_parallel(candidates.size(), threads, [&](size_t k) {
    const size_t i = candidates[k];
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!options.exhaustive && keep > 0 && best_steps.size() >= keep &&
          checked[i].bound >= *std::prev(best_steps.end()))
        return false;
    }
    const auto ts = std::chrono::steady_clock::now();
    std::string reason;
    bool ok = true;
    SimResult r;
    try {
      r = simulate(configs[i].deck, cluster);
    } catch (const InputError& e) {
      ok = false;
      reason = std::string(e.what()).substr(0, 160);
    } catch (...) {
      std::lock_guard<std::mutex> lock(fault_mu);
      if (!fault) fault = std::current_exception();
      return false;
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    std::lock_guard<std::mutex> lock(mu);
    done[k] = 1;
    out.simulate_s += secs;
    if (!ok) {
      ++out.invalid;
      ++out.invalid_reasons[reason];
      return true;
    }
    ++out.simulated;
    if (r.fits) {
      best_steps.insert(r.step_time_s);
      if (keep > 0 && best_steps.size() > keep) best_steps.erase(std::prev(best_steps.end()));
      fits.push_back({configs[i].sets, std::move(r), checked[i].bound});
    }
    return true;
  });
  if (fault) std::rethrow_exception(fault);
  for (char d : done) out.bounded += d ? 0 : 1;
  std::sort(fits.begin(), fits.end(), [](const SearchCandidate& a, const SearchCandidate& b) {
    return a.result.tokens_per_s > b.result.tokens_per_s ||
           (a.result.tokens_per_s == b.result.tokens_per_s && a.sets < b.sets);
  });
  if (fits.size() > keep) fits.resize(keep);
  out.best = std::move(fits);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

std::string search_text(const SearchResult& r) {
  std::ostringstream os;
  char line[768];
  std::snprintf(line, sizeof line,
                "searched %d configurations in %.2f s (%.1f per second, %d threads): %d refused by the compiler, %d "
                "over the device's memory, %d simulated (thread-seconds: %.2f compiling for the memory check, %.2f "
                "simulating)\n",
                r.enumerated, r.seconds, r.seconds > 0 ? r.enumerated / r.seconds : 0.0, r.threads, r.invalid,
                r.pruned_memory, r.simulated, r.memory_check_s, r.simulate_s);
  os << line;
  if (r.bounded > 0) {
    std::snprintf(line, sizeof line,
                  "  %d fitting the memory check were not simulated: their first or last stage alone (its "
                  "compute and collectives in order, pipeline messages free) is slower than the %zu-th fastest step\n",
                  r.bounded, r.best.size());
  } else {
    line[0] = 0;
  }
  os << line;
  for (size_t i = 0; i < r.best.size(); ++i) {
    const SimResult& s = r.best[i].result;
    std::snprintf(line, sizeof line,
                  "%2zu. %9.0f tokens/s  step %.3f s  MFU %.3f  bubble %.3f  peak %.1f GiB\n    --set %s\n", i + 1,
                  s.tokens_per_s, s.step_time_s, s.mfu, s.bubble_fraction, s.memory.peak / 1073741824.0,
                  r.best[i].sets.c_str());
    os << line;
  }
  if (r.best.empty()) os << "no configuration fits\n";
  if (!r.invalid_reasons.empty()) {
    os << "refused by the compiler, most common first:\n";
    std::vector<std::pair<int, std::string>> v;
    for (const auto& [k, n] : r.invalid_reasons) v.emplace_back(n, k);
    std::sort(v.rbegin(), v.rend());
    for (size_t i = 0; i < v.size() && i < 3; ++i) os << "  " << v[i].first << " x " << v[i].second << "\n";
  }
  return os.str();
}

std::string search_json(const SearchResult& r) {
  nlohmann::json j;
  j["enumerated"] = r.enumerated;
  j["invalid"] = r.invalid;
  j["pruned_memory"] = r.pruned_memory;
  j["simulated"] = r.simulated;
  j["bounded"] = r.bounded;
  j["seconds"] = r.seconds;
  j["memory_check_s"] = r.memory_check_s;
  j["threads"] = r.threads;
  j["simulate_s"] = r.simulate_s;
  j["configurations_per_second"] = r.seconds > 0 ? r.enumerated / r.seconds : 0.0;
  nlohmann::json best = nlohmann::json::array();
  for (const auto& c : r.best) {
    nlohmann::json e = nlohmann::json::parse(sim_json(c.result));
    e["sets"] = c.sets;
    best.push_back(e);
  }
  j["best"] = best;
  return j.dump(2);
}

}  // namespace shardflow::sim
