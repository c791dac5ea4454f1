#include "parallel/layout_plan.hpp"

#include <map>
#include <memory>
#include <tuple>

#include "core/error.hpp"
#include "mesh/axes.hpp"
#include "strategy/sharding_strategy.hpp"
#include "strategy/weight_sharding.hpp"

namespace shardflow::parallel {

namespace {
bool is_expert_kind(ParamKind k) { return k == ParamKind::ExpertGateUp || k == ParamKind::ExpertDown; }
// The seeds' strategies for this mesh, composed as a ParallelismConfig composes them: data
// parallelism on `data`, FSDP/ZeRO on the zero axis, tensor parallelism on `tensor`,
// pipelining on `pipeline` (each where the axis has size > 1). The LayoutPlan asks them for
// each parameter's proposals and the MultiDimensionalStrategy merges those.
struct SeedStrategies {
  std::shared_ptr<const TensorParallelStrategy> tensor;
  std::shared_ptr<const FSDPStrategy> zero;
  std::unique_ptr<MultiDimensionalStrategy> combined;
};
SeedStrategies seed_strategies(const MeshShape& mesh, const AxisGroups& g, const StrategyOptions& o, int stages) {
  SeedStrategies s;
  std::vector<MultiDimensionalStrategy::Entry> e;
  if (mesh.axis_size_or_1(axis::data) > 1) e.emplace_back("data", std::make_shared<DataParallelStrategy>(axis::data));
  if (!g.zero.empty() && mesh.group_size(g.zero) > 1) {
    s.zero = std::make_shared<FSDPStrategy>(g.zero.front(), -1, o.fsdp_min_weight_size);
    e.emplace_back("zero", s.zero);
  }
  if (mesh.axis_size_or_1(axis::tensor) > 1) {
    s.tensor = std::make_shared<TensorParallelStrategy>(axis::tensor);
    e.emplace_back("tensor", s.tensor);
  }
  if (mesh.axis_size_or_1(axis::pipeline) > 1)
    e.emplace_back("pipeline", std::make_shared<PipelineParallelStrategy>(axis::pipeline, -1, stages));
  if (e.empty()) return s;
  ParallelismConfig pc;
  pc.mesh_axis_names = mesh.axis_names();
  pc.mesh_shape = mesh.sizes();
  ShardingConfig& sc = pc.sharding_config;
  sc.data_parallel_size = mesh.axis_size_or_1(axis::data);
  sc.fsdp_parallel_size = mesh.axis_size_or_1(axis::fsdp);
  sc.tensor_parallel_size = mesh.axis_size_or_1(axis::tensor);
  sc.pipeline_parallel_size = mesh.axis_size_or_1(axis::pipeline);
  sc.expert_parallel_size = mesh.axis_size_or_1(axis::expert);
  sc.context_parallel_size = mesh.axis_size_or_1(axis::context);
  sc.fsdp_enabled = o.zero_stage >= 1;
  sc.fsdp_min_weight_size = o.fsdp_min_weight_size;
  s.combined = std::make_unique<MultiDimensionalStrategy>(std::move(e), pc);
  return s;
}

int dim_with(const PartitionSpec& spec, const std::string& axis_name) {
  for (size_t d = 0; d < spec.ndim(); ++d)
    for (const auto& a : spec[d])
      if (a == axis_name) return static_cast<int>(d);
  return -1;
}

}  // namespace

LayoutPlan::LayoutPlan(const ModelDescription& model, const MeshShape& mesh, const StrategyOptions& options,
                       int virtual_stages)
    : model_(model.config()), mesh_(mesh), options_(options), groups_(AxisGroups::make(mesh, options.zero_stage)) {
  const ModelConfig& cfg = model_;
  const int tp = mesh.axis_size_or_1(axis::tensor), ep = mesh.axis_size_or_1(axis::expert);
  const int pp = mesh.axis_size_or_1(axis::pipeline);
  SHARDFLOW_REQUIRE_INPUT(!(options.zero_stage == 0 && mesh.axis_size_or_1(axis::fsdp) > 1), "mesh.fsdp = ",
                          mesh.axis_size_or_1(axis::fsdp),
                          " shards the model, which needs strategy.zero_stage >= 1 (it is 0)");
  SHARDFLOW_REQUIRE_INPUT(options.fsdp_min_weight_size >= 0, "strategy.fsdp_min_weight_size = ",
                          options.fsdp_min_weight_size, " must be >= 0");
  SHARDFLOW_REQUIRE_INPUT(virtual_stages >= 1, "strategy.virtual_stages = ", virtual_stages, " must be >= 1");
  if (ep > 1)
    SHARDFLOW_REQUIRE_INPUT(cfg.is_moe(), "mesh has an expert axis of size ", ep,
                            " but the model has no experts (model.experts = 0)");
  // pipeline: L layers over p·v chunks (PipelineParallelStrategy's rule), chunk c on stage c mod p
  const int L = static_cast<int>(cfg.layers);
  chunks_ = pp * virtual_stages;
  PipelineParallelStrategy pps(axis::pipeline, -1, chunks_);
  const auto counts = pps.assign_layers_to_stages(L);  // InputError when a chunk would be empty
  for (int c = 0; c < chunks_; ++c)
    for (int k = 0; k < counts[static_cast<size_t>(c)]; ++k) layer_chunk_.push_back(c);

  const SeedStrategies seeds = seed_strategies(mesh, groups_, options, pp);
  // The splits depend on a parameter's kind and shapes only (every layer's parameter of a
  // kind is split alike): worked out for the first of each, which also raises any error
  // under its name, and copied to the others.
  struct Splits {
    int tensor_dim = -1, zero_dim = -1, expert_dim = -1;
  };
  auto splits_of = [&](const ParamInfo& info) {
    Splits sp;
    // the kind's view is the per-weight strategy's view (Modular MAX's stacked_qkv,
    // head_aware_columnwise, gate_up, rowwise, columnwise, ...)
    const WeightSharding ws =
        WeightSharding::tensor_parallel(info.kind, static_cast<int>(cfg.heads), static_cast<int>(cfg.head_dim()));
    const WeightView wv = ws.view(info.shape, axis::tensor);
    SHARDFLOW_REQUIRE(wv.view_shape == info.view_shape, info.name, ": the model's view ",
                      shape_to_string(info.view_shape), " and ", ws.resolve().to_string(), "'s ",
                      shape_to_string(wv.view_shape), " differ");
    std::vector<std::pair<std::string, PartitionSpec>> proposed;
    PartitionSpec tensor_spec = PartitionSpec::replicated(info.view_shape.size());
    if (seeds.tensor) {
      try {
        tensor_spec = seeds.tensor->get_weight_spec(info.kind, info.shape, static_cast<int>(cfg.heads),
                                                    static_cast<int>(cfg.head_dim()), mesh);
      } catch (const InputError& e) {
        throw InputError(info.name + ": tensor axis of size " + std::to_string(tp) + ": " + e.what());
      }
      proposed.emplace_back("tensor", tensor_spec);
    }
    if (is_expert_kind(info.kind) && ep > 1) {
      SHARDFLOW_REQUIRE_INPUT(ep <= cfg.experts, info.name, ": expert axis of size ", ep, " but only ", cfg.experts,
                              " experts");
      sp.expert_dim = 0;
    }
    // ZeRO: the FSDP strategy's dimension rule (xlstm-jax) among the view dims the tensor
    // and expert splits left
    if (seeds.zero && seeds.zero->should_shard_weight(info.shape)) {
      std::vector<bool> excluded(info.view_shape.size(), false);
      for (size_t d = 0; d < excluded.size(); ++d) excluded[d] = !tensor_spec[d].empty();
      if (sp.expert_dim >= 0) excluded[static_cast<size_t>(sp.expert_dim)] = true;
      const int d = FSDPStrategy::choose_shard_dim(info.view_shape, mesh.group_size(groups_.zero), excluded);
      PartitionSpec z = PartitionSpec::replicated(info.view_shape.size());
      if (d >= 0) z[static_cast<size_t>(d)] = {seeds.zero->axis_name()};
      proposed.emplace_back("zero", z);
    }
    // the MultiDimensionalStrategy merges the proposals (and refuses a conflict)
    if (!proposed.empty()) {
      const PartitionSpec merged = seeds.combined->resolve_sharding_conflicts(info.name, proposed);
      sp.tensor_dim = dim_with(merged, axis::tensor);
      if (seeds.zero) sp.zero_dim = dim_with(merged, seeds.zero->axis_name());
    }
    return sp;
  };
  std::map<std::tuple<ParamKind, Shape, Shape>, Splits> done;
  params_.reserve(model.params().size());
  index_.reserve(model.params().size());
  for (const auto& info : model.params()) {
    ParamPlacement p;
    p.info = info;
    p.is_expert_weight = is_expert_kind(info.kind);
    p.unit = info.layer >= 0
                 ? 1 + info.layer
                 : ((info.kind == ParamKind::Embedding || info.kind == ParamKind::PosEmbedding) ? 0 : L + 1);
    // a layer's stage is its chunk's; the embeddings go first, the head last
    p.stage = info.layer >= 0 ? layer_chunk_[static_cast<size_t>(info.layer)] % pp
              : (info.kind == ParamKind::Embedding || info.kind == ParamKind::PosEmbedding) ? 0
                                                                                            : pp - 1;
    const auto key = std::make_tuple(info.kind, info.shape, info.view_shape);
    auto it = done.find(key);
    if (it == done.end()) it = done.emplace(key, splits_of(info)).first;
    p.tensor_dim = it->second.tensor_dim;
    p.zero_dim = it->second.zero_dim;
    p.expert_dim = it->second.expert_dim;
    index_[info.name] = params_.size();
    params_.push_back(std::move(p));
  }
}

const ParamPlacement& LayoutPlan::param(const std::string& name) const {
  auto it = index_.find(name);
  SHARDFLOW_REQUIRE_INPUT(it != index_.end(), "no parameter named '", name, "' in the model");
  return params_[it->second];
}

PartitionSpec LayoutPlan::spec(const ParamPlacement& p, TensorRole role) const {
  PartitionSpec s = PartitionSpec::replicated(p.info.view_shape.size());
  if (p.tensor_dim >= 0) s[static_cast<size_t>(p.tensor_dim)] = {axis::tensor};
  if (p.expert_dim >= 0) s[static_cast<size_t>(p.expert_dim)] = {axis::expert};
  const int need = role == TensorRole::Param ? 3 : role == TensorRole::Grad ? 2 : 1;
  if (p.zero_sharded() && options_.zero_stage >= need) s[static_cast<size_t>(p.zero_dim)] = groups_.zero;
  return s;
}

Layout LayoutPlan::layout(const ParamPlacement& p, TensorRole role) const {
  std::map<std::string, int> pinned;
  if (mesh_.axis_size_or_1(axis::pipeline) > 1) pinned[axis::pipeline] = p.stage;
  return Layout(p.info.view_shape, spec(p, role), mesh_, pinned);
}

std::string LayoutPlan::rule(const ParamPlacement& p) const {
  std::vector<std::string> r;
  if (p.tensor_dim >= 0) {
    WeightSharding ws = WeightSharding::tensor_parallel(p.info.kind, static_cast<int>(model_.heads),
                                                        static_cast<int>(model_.head_dim()));
    r.push_back("tensor: " + ws.resolve().to_string() + " (view dim " + std::to_string(p.tensor_dim) + ")");
  }
  if (p.expert_dim >= 0) r.push_back("expert: experts (view dim 0)");
  if (mesh_.axis_size_or_1(axis::pipeline) > 1) r.push_back("pipeline: stage " + std::to_string(p.stage));
  if (!groups_.zero.empty()) {
    if (p.zero_sharded())
      r.push_back("zero(" + group_key(groups_.zero) + "): view dim " + std::to_string(p.zero_dim));
    else if (p.info.numel() < options_.fsdp_min_weight_size)
      r.push_back("zero: replicated (" + std::to_string(p.info.numel()) + " < fsdp_min_weight_size " +
                  std::to_string(options_.fsdp_min_weight_size) + ")");
    else
      r.push_back("zero: replicated (no view dim left to split)");
  }
  std::string out;
  for (size_t i = 0; i < r.size(); ++i) out += (i ? "; " : "") + r[i];
  return out.empty() ? "replicated" : out;
}

// Mirrors the buffers Trainer::Impl::setup_params allocates (src/train/impl/trainer.cpp);
// a test holds that the two agree on every rank of every mesh the suite trains.
StateBytes LayoutPlan::state_bytes(int rank) const {
  StateBytes b;
  const int z = options_.zero_stage;
  for (const auto& p : params_) {
    const Layout tensor_box = layout(p, TensorRole::Param);  // zero split only at stage 3
    if (!tensor_box.holds(rank)) continue;
    const Layout opt = layout(p, TensorRole::OptimizerState);
    const int64_t shard = opt.local_numel(rank);
    // the tensor/expert box, or at ZeRO-3 its shard (the Param role is zero-split only there)
    const int64_t local = tensor_box.local_numel(rank);
    int64_t params = local, grads = local;
    // ZeRO-2: only the gradient shard (the full gradient passes through the grad ring)
    if (p.zero_sharded() && z == 2) grads = shard;
    b.params += params * 4;
    b.grads += grads * 4;
    b.optimizer += 2 * shard * 4;
  }
  return b;
}

}  // namespace shardflow::parallel
