#include "compile/summary.hpp"

#include <nlohmann/json.hpp>
#include <algorithm>
#include <cstdint>
#include <set>
#include <sstream>

#include "core/error.hpp"

namespace shardflow::compile {

const char* step_op_name(StepOp op) {
  switch (op) {
    case StepOp::Begin: return "begin";
    case StepOp::Copy: return "copy";
    case StepOp::Embed: return "embed";
    case StepOp::PosEmbed: return "pos_embed";
    case StepOp::AttnNorm: return "attn_norm";
    case StepOp::Attn: return "attn";
    case StepOp::MlpNorm: return "mlp_norm";
    case StepOp::Mlp: return "mlp";
    case StepOp::Residual: return "residual";
    case StepOp::MoeRoute: return "moe_route";
    case StepOp::MoePlan: return "moe_plan";
    case StepOp::MoeExperts: return "moe_experts";
    case StepOp::MoeCombine: return "moe_combine";
    case StepOp::FinalNorm: return "final_norm";
    case StepOp::Logits: return "logits";
    case StepOp::SumExp: return "sumexp";
    case StepOp::Loss: return "loss";
    case StepOp::LossValue: return "loss_value";
    case StepOp::FinalNormBwd: return "final_norm_bwd";
    case StepOp::MoeCombineBwd: return "moe_combine_bwd";
    case StepOp::MoeExpertsBwd: return "moe_experts_bwd";
    case StepOp::MoeRouterBwd: return "moe_router_bwd";
    case StepOp::MlpBwd: return "mlp_bwd";
    case StepOp::MlpNormBwd: return "mlp_norm_bwd";
    case StepOp::AttnCore: return "attn_core";
    case StepOp::AttnBwd: return "attn_bwd";
    case StepOp::AttnRingBwd: return "attn_ring_bwd";
    case StepOp::AttnQkvBwd: return "attn_qkv_bwd";
    case StepOp::AttnRing: return "attn_ring";
    case StepOp::AttnOut: return "attn_out";
    case StepOp::AttnNormBwd: return "attn_norm_bwd";
    case StepOp::EmbedBwd: return "embed_bwd";
    case StepOp::GradNormLocal: return "grad_norm_local";
    case StepOp::AdamW: return "adamw";
  }
  return "?";
}

double step_bytes(const StepProgram& prog, BufferClass c) {
  double b = 0;
  for (const auto& s : prog.buffers.specs)
    if (s.cls == c) b += static_cast<double>(s.numel) * static_cast<double>(dtype_size(s.dtype));
  if (c == BufferClass::Transient) b += static_cast<double>(prog.staging_total());
  return b;
}

namespace {
// byte counts of a step that fits a machine are exact in double; larger ones saturate
int64_t exact_bytes(double b) { return b < 9.0e18 ? static_cast<int64_t>(b) : INT64_MAX; }
}  // namespace

// The trainer allocates the buffers, initialises the parameters (one whole parameter at a
// time), then binds the collectives (their pooled staging); a restore or an async save comes
// after that.
int64_t PeakPrediction::peak() const {
  return buffers + std::max(init, staging + std::max(restore_staging, save_snapshot));
}

int64_t state_bytes(const StepProgram& prog) {
  int64_t state = 0;
  for (size_t i = 0; i < prog.shape.params.size(); ++i) {
    if (!prog.shape.params[i].here) continue;
    const ParamBuffers& pb = prog.buffers.params[i];
    for (int id : {pb.param, pb.adam_m, pb.adam_v})
      if (id >= 0) state += prog.buffers.specs[static_cast<size_t>(id)].bytes();
  }
  return state;
}

PeakPrediction predict_peak(const StepProgram& prog, int64_t restore_staging_bytes, int64_t async_snapshot_bytes) {
  PeakPrediction p;
  for (const auto& spec : prog.buffers.specs) p.buffers += spec.bytes();
  p.staging = prog.staging_total();
  for (const ParamShape& ps : prog.shape.params)
    if (ps.here) p.init = std::max(p.init, numel(ps.shape) * static_cast<int64_t>(sizeof(float)));
  p.restore_staging = restore_staging_bytes;
  p.save_snapshot = async_snapshot_bytes;
  return p;
}

ProgramSummary summarize(const StepProgram& prog) {
  const StepShape& sh = prog.shape;
  ProgramSummary s;
  s.rank = sh.rank;
  s.world = sh.world;
  s.mesh = sh.mesh.to_string();
  const auto coords = sh.mesh.coords(sh.rank);
  for (size_t a = 0; a < coords.size(); ++a) s.coords.emplace_back(sh.mesh.axis_names()[a], coords[a]);
  s.stage = sh.stage;
  s.stages = sh.pp;
  for (const auto& c : sh.chunks) s.layers.emplace_back(c.layer_begin, c.layer_end);
  s.tasks = static_cast<int64_t>(prog.tasks.size());
  s.staging_bytes = prog.staging_total();
  for (const auto& t : prog.tasks) {
    if (!t.is_comm) {
      ++s.compute_tasks;
      s.kernel_calls += static_cast<int64_t>(t.ops.size());
      continue;
    }
    ++s.comm_tasks;
    const std::string& g = t.comm.desc.comm;
    const std::string& k = t.comm.desc.kind;
    auto it = std::find_if(s.collectives.begin(), s.collectives.end(),
                           [&](const CollectiveCount& c) { return c.group == g && c.kind == k; });
    if (it == s.collectives.end()) {
      // keep a group's kinds together, groups in order of first use
      auto after = std::find_if(s.collectives.rbegin(), s.collectives.rend(),
                                [&](const CollectiveCount& c) { return c.group == g; });
      it = s.collectives.insert(after == s.collectives.rend() ? s.collectives.end() : after.base(),
                                CollectiveCount{g, k, 0, 0});
    }
    ++it->count;
    it->bytes += t.comm.tensor_bytes();
  }
  std::set<std::pair<int, int>> edges(prog.edges.begin(), prog.edges.end());
  s.edges = static_cast<int64_t>(edges.size());
  const BufferPlan& b = prog.buffers;
  s.buffers = static_cast<int64_t>(b.specs.size());
  s.params_bytes = exact_bytes(step_bytes(prog, BufferClass::Params));
  s.grads_bytes = exact_bytes(step_bytes(prog, BufferClass::Grads));
  s.optimizer_bytes = exact_bytes(step_bytes(prog, BufferClass::Optimizer));
  s.transient_bytes = exact_bytes(step_bytes(prog, BufferClass::Transient));  // rings + staging
  s.activation_bytes = exact_bytes(step_bytes(prog, BufferClass::Activations));
  s.input_bytes = exact_bytes(step_bytes(prog, BufferClass::Inputs));
  return s;
}

namespace {
std::string gib(int64_t bytes) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(bytes >= (int64_t{1} << 30) ? 2 : 4);
  os << static_cast<double>(bytes) / static_cast<double>(int64_t{1} << 30) << " GiB";
  return os.str();
}
}  // namespace

std::string summary_text(const ProgramSummary& s) {
  std::ostringstream os;
  os << "rank " << s.rank << " of " << s.world << " (mesh " << s.mesh << "; coordinates";
  for (const auto& [a, c] : s.coords) os << " " << a << "=" << c;
  os << ")\n";
  os << "pipeline stage " << s.stage << " of " << s.stages << ", layers";
  for (const auto& [b, e] : s.layers) os << " [" << b << ", " << e << ")";
  os << "\n";
  os << "tasks: " << s.tasks << " (" << s.compute_tasks << " compute with " << s.kernel_calls << " kernel calls, "
     << s.comm_tasks << " communication), " << s.edges << " dependencies\n";
  os << "collectives:\n";
  char line[160];
  std::snprintf(line, sizeof line, "  %-22s %-15s %10s %16s\n", "group", "kind", "count", "bytes");
  os << line;
  for (const auto& c : s.collectives) {
    std::snprintf(line, sizeof line, "  %-22s %-15s %10lld %16lld\n", c.group.c_str(), c.kind.c_str(),
                  static_cast<long long>(c.count), static_cast<long long>(c.bytes));
    os << line;
  }
  os << "buffers: " << s.buffers << "\n";
  auto row = [&](const char* what, int64_t bytes) {
    std::snprintf(line, sizeof line, "  %-34s %16lld  %s\n", what, static_cast<long long>(bytes), gib(bytes).c_str());
    os << line;
  };
  row("params", s.params_bytes);
  row("grads", s.grads_bytes);
  row("optimizer", s.optimizer_bytes);
  row("transient (rings + staging)", s.transient_bytes);
  row("activations", s.activation_bytes);
  row("inputs", s.input_bytes);
  row("total", s.model_state_bytes() + s.transient_bytes + s.activation_bytes + s.input_bytes);
  return os.str();
}

std::string summary_json(const ProgramSummary& s) {
  using nlohmann::json;
  json j;
  j["rank"] = s.rank;
  j["world"] = s.world;
  j["mesh"] = s.mesh;
  json coords = json::object();
  for (const auto& [a, c] : s.coords) coords[a] = c;
  j["coordinates"] = coords;
  j["stage"] = s.stage;
  j["stages"] = s.stages;
  json layers = json::array();
  for (const auto& [b, e] : s.layers) layers.push_back({b, e});
  j["layers"] = layers;
  j["tasks"] = {{"total", s.tasks},
                {"compute", s.compute_tasks},
                {"kernel_calls", s.kernel_calls},
                {"communication", s.comm_tasks},
                {"dependencies", s.edges}};
  json colls = json::array();
  for (const auto& c : s.collectives)
    colls.push_back({{"group", c.group}, {"kind", c.kind}, {"count", c.count}, {"bytes", c.bytes}});
  j["collectives"] = colls;
  j["buffers"] = s.buffers;
  if (!s.model.empty()) j["model"] = s.model;
  if (s.compile_seconds >= 0) j["compile_seconds"] = s.compile_seconds;
  j["memory_bytes"] = {{"params", s.params_bytes},
                       {"grads", s.grads_bytes},
                       {"optimizer", s.optimizer_bytes},
                       {"transient", s.transient_bytes},
                       {"staging", s.staging_bytes},
                       {"activations", s.activation_bytes},
                       {"inputs", s.input_bytes}};
  return j.dump(2);
}

graph::TaskGraph unbound_graph(const StepProgram& prog) {
  graph::TaskGraph g("train_step");
  for (const auto& t : prog.tasks) {
    if (t.is_comm)
      g.emplace_comm(t.comm.desc, [] { return std::function<bool()>([] { return true; }); }).name(t.name);
    else
      g.emplace([] {}).name(t.name);
  }
  for (const auto& [a, b] : prog.edges) g.task(a).precede(g.task(b));
  return g;
}

std::vector<std::string> collective_sequence(const StepProgram& prog, const std::string& key) {
  std::vector<std::string> out;
  for (const auto& t : prog.tasks) {
    if (!t.is_comm || t.comm.desc.comm != key) continue;
    const auto& d = t.comm.desc;
    std::string line = d.kind + " " + d.tensor + " " + std::to_string(d.count) + " " + d.dtype;
    if (d.peer >= 0) line += " peer " + std::to_string(d.peer);
    out.push_back(std::move(line));
  }
  return out;
}

}  // namespace shardflow::compile
