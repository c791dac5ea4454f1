#pragma once
// ParamKind: what a model parameter is (its role tag), as the layout plan, the per-weight
// strategies and the checkpoints see it.
#include <string>

namespace shardflow {

/// What a model parameter is, as far as sharding is concerned.
enum class ParamKind {
  Embedding,     // [V, H] token table
  PosEmbedding,  // [S, H] learned position table
  NormGain,      // [H] RMSNorm gain
  StackedQkv,    // [3H, H], Q/K/V blocks, head a owns rows [a·D, (a+1)·D) of each block
  AttentionOut,  // [H, H], input columns [a·D, (a+1)·D) belong to head a
  GateUp,        // [2F, H], rows [0,F) gate, [F,2F) up
  Down,          // [H, F]
  LmHead,        // [V, H]
  Router,        // [E, H] MoE router
  ExpertGateUp,  // [E, 2F, H]
  ExpertDown,    // [E, H, F]
};
std::string param_kind_name(ParamKind k);

}  // namespace shardflow
