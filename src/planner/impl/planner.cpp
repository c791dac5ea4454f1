#include "planner/planner.hpp"

#include "compile/compiler.hpp"
#include "compile/summary.hpp"

#include "mesh/axes.hpp"
#include "parallel/layout_plan.hpp"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "strategy/sharding_strategy.hpp"

namespace shardflow {

double zero_model_state_bytes(double psi, int64_t n, int stage) {
  SHARDFLOW_REQUIRE_INPUT(n >= 1, "ZeRO: data-parallel size ", n, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(stage >= 0 && stage <= 3, "ZeRO: stage ", stage, " must be in 0..3");
  const double N = static_cast<double>(n);
  const double p = stage >= 3 ? 2 * psi / N : 2 * psi;
  const double g = stage >= 2 ? 2 * psi / N : 2 * psi;
  const double o = stage >= 1 ? 12 * psi / N : 12 * psi;
  return p + g + o;
}

double layer_activation_bytes(int64_t seq, int64_t micro_batch, int64_t hidden, int64_t heads, int tensor,
                              bool sequence_parallel, Recompute recompute) {
  const double s = static_cast<double>(seq), b = static_cast<double>(micro_batch), h = static_cast<double>(hidden),
               a = static_cast<double>(heads), t = tensor;
  const double core = recompute == Recompute::None ? 5.0 * a * s / h : 0.0;  // the attention probabilities
  if (recompute == Recompute::Full) return 2.0 * s * b * h / (sequence_parallel && tensor > 1 ? t : 1.0);
  if (tensor <= 1) return s * b * h * (34.0 + core);
  if (sequence_parallel) return s * b * h * (34.0 + core) / t;
  return s * b * h * (10.0 + 24.0 / t + core / t);
}

ModelConfig llama_like_model(const std::string& model_size, int64_t seq) {
  SHARDFLOW_REQUIRE_INPUT(seq >= 1, "sequence length ", seq, " must be >= 1");
  TransformerDims d = llama_like_dims(model_size);
  ModelConfig m;
  m.vocab = d.vocab;
  m.seq = seq;
  m.hidden = d.hidden;
  m.heads = d.heads;
  m.ffn = d.ffn;
  m.layers = d.layers;
  return m;
}

MeshShape parse_mesh_text(const std::string& text) {
  std::vector<std::string> names;
  std::vector<int> sizes;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto eq = item.find('=');
    SHARDFLOW_REQUIRE_INPUT(eq != std::string::npos, "mesh '", text, "': expected axis=size, got '", item, "'");
    const std::string name = item.substr(0, eq), val = item.substr(eq + 1);
    char* end = nullptr;
    const long v = std::strtol(val.c_str(), &end, 10);
    SHARDFLOW_REQUIRE_INPUT(!val.empty() && end == val.c_str() + val.size(), "mesh '", text, "': size '", val,
                            "' of axis '", name, "' is not an integer");
    names.push_back(name);
    sizes.push_back(static_cast<int>(v));
  }
  SHARDFLOW_REQUIRE_INPUT(!names.empty(), "mesh '", text, "' names no axis");
  return MeshShape(names, sizes);
}

namespace {

/// The mesh with data and fsdp merged into one data axis of size data x fsdp.
MeshShape zero_mesh(const MeshShape& m) {
  std::vector<std::string> names{axis::data};
  std::vector<int> sizes{m.axis_size_or_1(axis::data) * m.axis_size_or_1(axis::fsdp)};
  for (const auto& a : {axis::pipeline, axis::expert, axis::context, axis::tensor})
    if (m.has_axis(a)) {
      names.emplace_back(a);
      sizes.push_back(m.axis_size(a));
    }
  return MeshShape(names, sizes);
}

std::string stage_text(const Layout& l) {
  auto it = l.pinned().find(axis::pipeline);
  return it == l.pinned().end() ? "" : "stage " + std::to_string(it->second);
}

}  // namespace

PlanInput plan_input(const Deck& deck) {
  PlanInput in;
  in.model = deck.model;
  in.model_label = "deck";
  in.devices = deck.mesh.size();
  in.mesh = deck.mesh.to_mesh_shape();
  in.options.zero_stage = deck.strategy.zero_stage;
  in.options.fsdp_min_weight_size = deck.strategy.fsdp_min_weight_size;
  in.micro_batch_size = deck.micro_batch_size();
  in.micro_batches = deck.train.micro_batches;
  in.schedule = deck.strategy.schedule;
  in.sequence_parallel = deck.strategy.sequence_parallel;
  in.recompute = deck.strategy.recompute;
  in.virtual_stages = deck.strategy.virtual_stages;
  in.exact_state = true;
  in.deck = deck;
  return in;
}

Plan make_plan(const PlanInput& in) {
  SHARDFLOW_REQUIRE_INPUT(in.devices >= 1, "plan: device count ", in.devices, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(in.micro_batch_size >= 1, "plan: micro-batch size ", in.micro_batch_size, " must be >= 1");
  SHARDFLOW_REQUIRE_INPUT(in.micro_batches >= 1, "plan: micro-batches ", in.micro_batches, " must be >= 1");
  Plan plan;
  plan.input = in;
  ModelDescription model(in.model);
  plan.parameter_count = model.parameter_count();
  TransformerDims dims{in.model.vocab, in.model.hidden, in.model.layers, in.model.heads, in.model.ffn};
  DeviceMeshManager mgr;
  plan.recommendation = mgr.plan_transformer_mesh(in.devices, dims, static_cast<double>(plan.parameter_count),
                                                  in.model.seq, in.gpus_per_node, in.memory_per_device_gib);
  // The transformer rule may pick more tensor parallelism than the model has heads.
  if (in.mesh) {
    plan.mesh = *in.mesh;
  } else {
    plan.mesh = plan.recommendation.mesh;
  }
  // the layouts: the plan the trainer would use (FSDP on a size-only plan means ZeRO-3)
  StrategyOptions spec_options = in.options;
  if (!in.exact_state && spec_options.zero_stage == 0 && plan.mesh.axis_size_or_1(axis::fsdp) > 1)
    spec_options.zero_stage = 3;
  const parallel::LayoutPlan layouts(model, plan.mesh, spec_options, in.virtual_stages);

  for (const auto& p : layouts.params()) {
    if (!in.all_layers && p.info.layer > 0) continue;
    PlanParam row;
    row.name = p.info.name;
    if (!in.all_layers && p.info.layer == 0) row.name.replace(0, std::string("layers.0.").size(), "layers.{l}.");
    row.shape = p.info.shape;
    row.kind = param_kind_name(p.info.kind);
    row.view_shape = p.info.view_shape;
    const Layout l = layouts.layout(p, TensorRole::OptimizerState);
    row.spec = l.spec().to_string();
    row.pinned = in.all_layers || p.info.layer < 0 ? stage_text(l) : (l.pinned().count(axis::pipeline) ? "by layer" : "");
    int64_t best = -1;
    for (int r = 0; r < plan.mesh.size(); ++r)
      if (l.holds(r) && l.local_numel(r) > best) {
        best = l.local_numel(r);
        row.max_local_view_shape = l.local_shape(r);
      }
    row.rule = layouts.rule(p);
    plan.params.push_back(row);
  }

  const int tp = plan.mesh.axis_size_or_1(axis::tensor), pp = plan.mesh.axis_size_or_1(axis::pipeline);
  const int64_t stage_layers = split_extent(in.model.layers, pp, 0);
  int64_t in_flight = 1;
  if (pp > 1)
    in_flight = in.schedule == PipelineSchedule::GPipe ? in.micro_batches : std::min<int64_t>(pp, in.micro_batches);
  const double act = static_cast<double>(in_flight * stage_layers) *
                     layer_activation_bytes(in.model.seq, in.micro_batch_size, in.model.hidden, in.model.heads, tp,
                                            in.sequence_parallel, in.recompute);
  const char* names[] = {"DP", "ZeRO-1", "ZeRO-2", "ZeRO-3"};
  if (in.exact_state) {
    // the deck's mesh, each ZeRO stage the mesh allows: the trainer's f32 buffers
    const auto zero_axes = parallel::AxisGroups::make(plan.mesh, 1).zero;  // the group ZeRO stages shard over
    plan.zero_group = zero_axes.empty() ? 1 : plan.mesh.group_size(zero_axes);
    for (int stage = 0; stage <= 3; ++stage) {
      if (stage == 0 && plan.mesh.axis_size_or_1(axis::fsdp) > 1) continue;  // fsdp needs ZeRO
      StrategyOptions o = in.options;
      o.zero_stage = stage;
      const parallel::LayoutPlan lp(model, plan.mesh, o, in.virtual_stages);
      const auto b0 = lp.state_bytes(0);
      PlanMemory m;
      m.strategy = names[stage];
      m.stage = stage;
      m.configured = stage == in.options.zero_stage;
      m.accounting = "f32 trainer buffers, rank 0";
      m.params = static_cast<double>(b0.params);
      m.grads = static_cast<double>(b0.grads);
      m.optimizer = static_cast<double>(b0.optimizer);
      for (int r = 0; r < plan.mesh.size(); ++r)
        m.max_rank_state = std::max(m.max_rank_state, static_cast<double>(lp.state_bytes(r).total()));
      m.activations = act;
      // the deck on its own mesh: the compiled step's activations, so recomputation,
      // micro-batches and the pipeline schedule count exactly as the trainer allocates them
      if (in.deck && plan.mesh == in.deck->mesh.to_mesh_shape()) {
        Deck d = *in.deck;
        d.strategy.zero_stage = stage;
        const parallel::LayoutPlan dlp = compile::layout_plan(d, plan.mesh);
        const compile::StepProgram prog = compile::compile_step(d, dlp, 0);
        m.activations = compile::step_bytes(prog, compile::BufferClass::Activations);
        const int nr = plan.mesh.size() <= 64 ? plan.mesh.size() : 1;
        for (int r = 0; r < nr; ++r) {
          m.predicted_peak_ranks.push_back(r);
          m.predicted_peak_bytes.push_back(
              compile::predict_peak(r == 0 ? prog : compile::compile_step(d, dlp, r), 0, 0).peak());
        }
      }
      plan.memory.push_back(m);
    }
    return plan;
  }
  // a model given by size: data and fsdp as one ZeRO group, mixed-precision Adam
  const MeshShape zm = zero_mesh(plan.mesh);
  plan.zero_group = zm.axis_size(axis::data);
  for (int stage = 0; stage <= 3; ++stage) {
    StrategyOptions o = in.options;
    o.zero_stage = stage;
    o.fsdp_min_weight_size = 0;  // the ZeRO paper's accounting shards every tensor
    const parallel::LayoutPlan lp(model, zm, o, in.virtual_stages);
    std::vector<double> pr(static_cast<size_t>(zm.size())), gr(pr.size()), opt(pr.size());
    for (const auto& p : lp.params()) {
      const Layout l_par = lp.layout(p, TensorRole::Param);
      const Layout l_grad = lp.layout(p, TensorRole::Grad);
      const Layout l_opt = lp.layout(p, TensorRole::OptimizerState);
      for (int r = 0; r < zm.size(); ++r) {
        pr[static_cast<size_t>(r)] += static_cast<double>(l_par.local_numel(r));
        gr[static_cast<size_t>(r)] += static_cast<double>(l_grad.local_numel(r));
        opt[static_cast<size_t>(r)] += static_cast<double>(l_opt.local_numel(r));
      }
    }
    PlanMemory m;
    m.strategy = names[stage];
    m.stage = stage;
    m.configured = stage == in.options.zero_stage;
    m.accounting = "mixed-precision Adam (ZeRO paper), largest rank";
    double best = -1;
    for (size_t r = 0; r < pr.size(); ++r) {
      const double total = 2 * pr[r] + 2 * gr[r] + 12 * opt[r];
      if (total > best) {
        best = total;
        m.params = 2 * pr[r];
        m.grads = 2 * gr[r];
        m.optimizer = 12 * opt[r];
      }
    }
    m.max_rank_state = best;
    m.activations = act;
    plan.memory.push_back(m);
  }
  return plan;
}

namespace {
std::string fmt_gb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", bytes / 1e9);
  return buf;
}
std::string pad(std::string s, size_t w) {
  if (s.size() < w) s += std::string(w - s.size(), ' ');
  return s;
}
}  // namespace

std::string plan_to_text(const Plan& plan) {
  const auto& in = plan.input;
  std::ostringstream os;
  os << "model: " << in.model_label << ": " << in.model.to_string() << ", " << plan.parameter_count << " parameters\n";
  os << "devices: " << in.devices << " (" << in.gpus_per_node << " per node, " << in.memory_per_device_gib
     << " GiB each)\n";
  os << "recommended mesh: " << plan.recommendation.mesh.to_string() << "\n  " << plan.recommendation.rationale << "\n";
  if (plan.mesh != plan.recommendation.mesh) os << "mesh used below: " << plan.mesh.to_string() << "\n";
  os << "zero_stage " << in.options.zero_stage << ", fsdp_min_weight_size " << in.options.fsdp_min_weight_size
     << "\n\n";
  size_t wn = 4, ws = 5, wv = 4, wp = 4;
  for (const auto& p : plan.params) {
    wn = std::max(wn, p.name.size());
    ws = std::max(ws, shape_to_string(p.shape).size());
    wv = std::max(wv, shape_to_string(p.view_shape).size());
    wp = std::max(wp, p.spec.size());
  }
  os << pad("name", wn) << "  " << pad("shape", ws) << "  " << pad("view", wv) << "  " << pad("spec", wp)
     << "  largest local view  placement\n";
  for (const auto& p : plan.params)
    os << pad(p.name, wn) << "  " << pad(shape_to_string(p.shape), ws) << "  " << pad(shape_to_string(p.view_shape), wv)
       << "  " << pad(p.spec, wp) << "  " << pad(shape_to_string(p.max_local_view_shape), 18) << "  " << p.pinned
       << "\n";
  if (in.exact_state)
    os << "\nmemory per device (GB = 1e9 bytes; ZeRO group N = " << plan.zero_group
       << "; the trainer's f32 buffers on rank 0; * = the deck's zero_stage):\n";
  else
    os << "\nmemory per device (GB = 1e9 bytes; ZeRO group N = data x fsdp = " << plan.zero_group
       << "; mixed-precision Adam 2+2+12 bytes per parameter):\n";
  os << pad("strategy", 9) << pad("params", 12) << pad("grads", 12) << pad("optimizer", 12) << pad("activations", 13)
     << "total\n";
  for (const auto& m : plan.memory)
    os << pad(m.strategy + (m.configured && in.exact_state ? "*" : ""), 9) << pad(fmt_gb(m.params), 12) << pad(fmt_gb(m.grads), 12) << pad(fmt_gb(m.optimizer), 12)
       << pad(fmt_gb(m.activations), 13) << fmt_gb(m.total()) << "\n";
  return os.str();
}

std::string plan_to_json(const Plan& plan) {
  using nlohmann::json;
  const auto& in = plan.input;
  auto mesh_json = [](const MeshShape& m) {
    json j = json::object();
    for (int i = 0; i < m.ndim(); ++i) j[m.axis_names()[static_cast<size_t>(i)]] = m.sizes()[static_cast<size_t>(i)];
    return j;
  };
  json j;
  j["model"] = {{"label", in.model_label},   {"vocab", in.model.vocab},     {"seq", in.model.seq},
                {"hidden", in.model.hidden}, {"heads", in.model.heads},     {"ffn", in.model.ffn},
                {"layers", in.model.layers}, {"experts", in.model.experts}, {"parameters", plan.parameter_count}};
  j["devices"] = in.devices;
  j["gpus_per_node"] = in.gpus_per_node;
  j["memory_per_device_gib"] = in.memory_per_device_gib;
  j["recommended_mesh"] = mesh_json(plan.recommendation.mesh);
  j["recommendation"] = {
      {"tensor", plan.recommendation.tensor},           {"pipeline", plan.recommendation.pipeline},
      {"replicas", plan.recommendation.replicas},       {"shard_states", plan.recommendation.shard_states},
      {"state_bytes", plan.recommendation.state_bytes}, {"activation_bytes", plan.recommendation.activation_bytes},
      {"rationale", plan.recommendation.rationale}};
  j["mesh"] = mesh_json(plan.mesh);
  j["zero_stage"] = in.options.zero_stage;
  j["zero_group"] = plan.zero_group;
  json params = json::array();
  for (const auto& p : plan.params)
    params.push_back({{"name", p.name},
                      {"shape", p.shape},
                      {"kind", p.kind},
                      {"view_shape", p.view_shape},
                      {"spec", p.spec},
                      {"placement", p.pinned},
                      {"max_local_view_shape", p.max_local_view_shape},
                      {"rule", p.rule}});
  j["parameters"] = params;
  json mem = json::array();
  for (const auto& m : plan.memory) {
    mem.push_back({{"strategy", m.strategy},
                   {"zero_stage", m.stage},
                   {"configured", m.configured},
                   {"accounting", m.accounting},
                   {"max_rank_state_bytes", m.max_rank_state},
                   {"params_bytes", m.params},
                   {"grads_bytes", m.grads},
                   {"optimizer_bytes", m.optimizer},
                   {"activation_bytes", m.activations},
                   {"total_bytes", m.total()},
                   {"total_gb", m.total() / 1e9}});
    if (!m.predicted_peak_bytes.empty()) {
      mem.back()["memory_predicted_peak_bytes"] = m.predicted_peak_bytes;
      mem.back()["memory_predicted_peak_ranks"] = m.predicted_peak_ranks;
    }
  }
  j["memory_per_device"] = mem;
  return j.dump(2);
}

}  // namespace shardflow
