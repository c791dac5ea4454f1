#include "model/model_description.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "mesh/axes.hpp"
#include "core/error.hpp"

namespace shardflow {

// ---- ModelConfig ---------------------------------------------------------------------------

std::string model_family_name(ModelFamily f) { return f == ModelFamily::Llama ? "llama" : "gpt"; }

ModelFamily parse_model_family(const std::string& s) {
  if (s == "gpt") return ModelFamily::Gpt;
  if (s == "llama") return ModelFamily::Llama;
  throw InputError("model.family = \"" + s + "\" is not a model family (gpt, llama)");
}

void ModelConfig::validate() const {
  const std::pair<const char*, int64_t> positive[] = {{"vocab", vocab}, {"seq", seq}, {"hidden", hidden},
                                                      {"heads", heads}, {"ffn", ffn}, {"layers", layers}};
  for (const auto& kv : positive)
    SHARDFLOW_REQUIRE_INPUT(kv.second > 0, "model.", kv.first, " = ", kv.second, " must be > 0");
  SHARDFLOW_REQUIRE_INPUT(hidden % heads == 0, "model.heads = ", heads, " does not divide model.hidden = ", hidden);
  SHARDFLOW_REQUIRE_INPUT(kv_heads >= 0 && kv_heads <= heads, "model.kv_heads = ", kv_heads,
                          " must be in [1, model.heads = ", heads, "] (0: model.heads)");
  SHARDFLOW_REQUIRE_INPUT(heads % kv_head_count() == 0, "model.kv_heads = ", kv_heads,
                          " does not divide model.heads = ", heads);
  SHARDFLOW_REQUIRE_INPUT(std::isfinite(rope_theta) && rope_theta > 1, "model.rope_theta = ", rope_theta,
                          " must be a finite number > 1");
  if (!is_llama()) {
    SHARDFLOW_REQUIRE_INPUT(kv_head_count() == heads, "model.kv_heads = ", kv_heads,
                            " needs model.family = \"llama\" (the gpt has one key/value head per head)");
    SHARDFLOW_REQUIRE_INPUT(rope_theta == default_rope_theta, "model.rope_theta = ", rope_theta,
                            " needs model.family = \"llama\" (the gpt has learned positions)");
    SHARDFLOW_REQUIRE_INPUT(!tie_embeddings, "model.tie_embeddings = true needs model.family = \"llama\" (MODEL.md's "
                                             "gpt has an untied lm_head)");
  } else {
    SHARDFLOW_REQUIRE_INPUT(head_dim() % 2 == 0, "model.family = \"llama\": the head size model.hidden / model.heads = ",
                            head_dim(), " must be even (RoPE rotates pairs)");
  }
  SHARDFLOW_REQUIRE_INPUT(std::isfinite(attention_dropout) && attention_dropout >= 0 && attention_dropout < 1,
                          "model.attention_dropout = ", attention_dropout, " must be a number in [0, 1)");
  SHARDFLOW_REQUIRE_INPUT(experts >= 0, "model.experts = ", experts, " must be >= 0");
  SHARDFLOW_REQUIRE_INPUT(top_k >= 0, "model.top_k = ", top_k, " must be >= 0");
  SHARDFLOW_REQUIRE_INPUT(moe_every >= 0, "model.moe_every = ", moe_every, " must be >= 0");
  SHARDFLOW_REQUIRE_INPUT(std::isfinite(capacity_factor) && capacity_factor > 0, "model.capacity_factor = ",
                          capacity_factor, " must be a finite number > 0");
  SHARDFLOW_REQUIRE_INPUT(std::isfinite(aux_loss_coef) && aux_loss_coef >= 0, "model.aux_loss_coef = ", aux_loss_coef,
                          " must be a finite number >= 0");
  if (experts == 0) {
    SHARDFLOW_REQUIRE_INPUT(top_k == 0 && moe_every == 0, "model.top_k = ", top_k, " and model.moe_every = ", moe_every,
                            " need model.experts > 0 (the model is dense with experts = 0)");
    SHARDFLOW_REQUIRE_INPUT(capacity_factor == default_capacity_factor && aux_loss_coef == default_aux_loss_coef,
                            "model.capacity_factor = ", capacity_factor, " and model.aux_loss_coef = ", aux_loss_coef,
                            " need model.experts > 0 (the model is dense with experts = 0)");
  } else {
    SHARDFLOW_REQUIRE_INPUT(top_k >= 1 && top_k <= experts, "model.top_k = ", top_k,
                            " must be in [1, model.experts = ", experts, "]");
    SHARDFLOW_REQUIRE_INPUT(moe_every >= 1 && moe_every <= layers, "model.moe_every = ", moe_every,
                            " must be in [1, model.layers = ", layers, "] when model.experts = ", experts);
  }
}

std::string ModelConfig::to_string() const {
  std::ostringstream os;
  if (is_llama()) os << "llama ";
  os << "V=" << vocab << " S=" << seq << " H=" << hidden << " A=" << heads << " F=" << ffn << " L=" << layers;
  if (is_llama()) os << " K=" << kv_head_count() << " theta=" << rope_theta << (tie_embeddings ? " tied" : "");
  if (experts > 0)
    os << " E=" << experts << " top_k=" << top_k << " moe_every=" << moe_every << " capacity_factor=" << capacity_factor
       << " aux_loss_coef=" << aux_loss_coef;
  if (attention_dropout > 0) os << " attention_dropout=" << attention_dropout;
  return os.str();
}

std::string tensor_role_name(TensorRole r) {
  switch (r) {
    case TensorRole::Param:
      return "param";
    case TensorRole::Grad:
      return "grad";
    case TensorRole::OptimizerState:
      return "optimizer_state";
  }
  throw Error("tensor_role_name: invalid role");
}

// ---- ModelDescription ------------------------------------------------------------------------

ModelDescription::ModelDescription(ModelConfig config) : config_(config) {
  config_.validate();
  const int64_t V = config_.vocab, S = config_.seq, H = config_.hidden, F = config_.ffn, E = config_.experts;
  const int A = static_cast<int>(config_.heads), D = static_cast<int>(config_.head_dim());
  auto add = [&](std::string name, Shape shape, ParamKind kind, int layer, bool decay) {
    ParamInfo p;
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.kind = kind;
    p.layer = layer;
    p.weight_decay = decay;
    p.view_shape = view_shape(kind, p.shape, A, D);
    params_.push_back(std::move(p));
  };
  const int64_t K = config_.kv_head_count();
  const bool llama = config_.is_llama();
  add("embed.weight", {V, H}, ParamKind::Embedding, -1, false);
  if (!llama) add("pos_embed.weight", {S, H}, ParamKind::PosEmbedding, -1, false);
  for (int l = 0; l < static_cast<int>(config_.layers); ++l) {
    const std::string pre = "layers." + std::to_string(l) + ".";
    add(pre + "attn_norm.weight", {H}, ParamKind::NormGain, l, false);
    if (llama) {
      add(pre + "attn.q.weight", {H, H}, ParamKind::Query, l, true);
      add(pre + "attn.kv.weight", {2 * K * D, H}, ParamKind::KeyValue, l, true);
    } else {
      add(pre + "attn.qkv.weight", {3 * H, H}, ParamKind::StackedQkv, l, true);
    }
    add(pre + "attn.out.weight", {H, H}, ParamKind::AttentionOut, l, true);
    add(pre + "mlp_norm.weight", {H}, ParamKind::NormGain, l, false);
    if (config_.is_moe_layer(l)) {
      add(pre + "mlp.router.weight", {E, H}, ParamKind::Router, l, true);
      add(pre + "mlp.experts.gate_up.weight", {E, 2 * F, H}, ParamKind::ExpertGateUp, l, true);
      add(pre + "mlp.experts.down.weight", {E, H, F}, ParamKind::ExpertDown, l, true);
    } else {
      add(pre + "mlp.gate_up.weight", {2 * F, H}, ParamKind::GateUp, l, true);
      add(pre + "mlp.down.weight", {H, F}, ParamKind::Down, l, true);
    }
  }
  add("final_norm.weight", {H}, ParamKind::NormGain, -1, false);
  if (!config_.tie_embeddings) add("lm_head.weight", {V, H}, ParamKind::LmHead, -1, true);
}

const ParamInfo& ModelDescription::param(const std::string& name) const {
  for (const auto& p : params_)
    if (p.name == name) return p;
  throw InputError("model has no parameter named '" + name + "'");
}

int64_t ModelDescription::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.numel();
  return n;
}


}  // namespace shardflow
