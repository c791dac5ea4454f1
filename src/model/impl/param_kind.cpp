#include "model/param_kind.hpp"

#include "core/error.hpp"

namespace shardflow {

std::string param_kind_name(ParamKind k) {
  switch (k) {
    case ParamKind::Embedding:
      return "embedding";
    case ParamKind::PosEmbedding:
      return "pos_embedding";
    case ParamKind::NormGain:
      return "norm_gain";
    case ParamKind::StackedQkv:
      return "stacked_qkv";
    case ParamKind::Query:
      return "query";
    case ParamKind::KeyValue:
      return "key_value";
    case ParamKind::AttentionOut:
      return "attention_out";
    case ParamKind::GateUp:
      return "gate_up";
    case ParamKind::Down:
      return "down";
    case ParamKind::LmHead:
      return "lm_head";
    case ParamKind::Router:
      return "router";
    case ParamKind::ExpertGateUp:
      return "expert_gate_up";
    case ParamKind::ExpertDown:
      return "expert_down";
  }
  throw Error("param_kind_name: invalid ParamKind " + std::to_string(static_cast<int>(k)));
}

Shape view_shape(ParamKind kind, const Shape& s, int64_t heads, int64_t head_dim) {
  switch (kind) {
    case ParamKind::StackedQkv: return {3, heads, head_dim, s.at(1)};
    case ParamKind::AttentionOut: return {s.at(0), heads, head_dim};
    case ParamKind::Query: return {heads, head_dim, s.at(1)};
    case ParamKind::KeyValue: return {2, s.at(0) / (2 * head_dim), head_dim, s.at(1)};
    case ParamKind::GateUp: return {2, s.at(0) / 2, s.at(1)};
    case ParamKind::ExpertGateUp: return {s.at(0), 2, s.at(1) / 2, s.at(2)};
    default: return s;
  }
}

}  // namespace shardflow
