#pragma once
// ParamKind: what a model parameter is (its role tag), as the layout plan, the per-weight
// strategies and the checkpoints see it.
#include <cstdint>
#include <string>

#include "layout/layout.hpp"

namespace shardflow {

/// What a model parameter is, as far as sharding is concerned.
enum class ParamKind {
  Embedding,     // [V, H] token table
  PosEmbedding,  // [S, H] learned position table
  NormGain,      // [H] RMSNorm gain
  StackedQkv,    // [3H, H], Q/K/V blocks, head a owns rows [a·D, (a+1)·D) of each block
  Query,         // [A·D, H] (llama), head a owns rows [a·D, (a+1)·D)
  KeyValue,      // [2·K·D, H] (llama), K block then V block, kv head g owns rows [g·D, (g+1)·D) of each
  AttentionOut,  // [H, H], input columns [a·D, (a+1)·D) belong to head a
  GateUp,        // [2F, H], rows [0,F) gate, [F,2F) up
  Down,          // [H, F]
  LmHead,        // [V, H]
  Router,        // [E, H] MoE router
  ExpertGateUp,  // [E, 2F, H]
  ExpertDown,    // [E, H, F]
};
std::string param_kind_name(ParamKind k);

/// The fixed reshaping of a parameter of this kind that every split acts on (its *view
/// shape*), mesh-independent so that any two meshes can reshard between each other:
///   stacked qkv [3H, H] -> [3, A, D, H]; attention out [H, H] -> [H, A, D];
///   query [A·D, H] -> [A, D, H]; key/value [2·K·D, H] -> [2, K, D, H];
///   gate_up [2F, H] -> [2, F, H]; expert gate_up [E, 2F, H] -> [E, 2, F, H]; others unchanged.
/// (The per-weight strategies, WeightSharding::tensor_parallel, split these views; a test
/// holds the two equal for every kind.)
Shape view_shape(ParamKind kind, const Shape& shape, int64_t heads, int64_t head_dim);

}  // namespace shardflow
