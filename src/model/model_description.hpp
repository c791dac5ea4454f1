#pragma once
// ModelDescription: the parameters of the reference model (MODEL.md names and shapes, in
// MODEL.md order), each with its sharding kind and *view shape*, and the default Layout of
// every parameter (and of its gradient and optimizer state) on a mesh.
//
// View shapes are fixed per kind, whatever the mesh, so a parameter's Layout always has
// the same global shape and any two meshes can reshard between each other:
//   embedding [V,H] → [V,H]; pos_embedding [S,H] → [S,H]; norm gain [H] → [H];
//   stacked qkv [3H,H] → [3,A,D,H]; attention out [H,H] → [H,A,D];
//   gate_up [2F,H] → [2,F,H]; down [H,F] → [H,F]; lm_head [V,H] → [V,H];
//   router [E,H] → [E,H]; expert gate_up [E,2F,H] → [E,2,F,H]; expert down [E,H,F] → [E,H,F].
//
// Default specs on a mesh (axes of size 1 are ignored):
//   tensor   : WeightSharding::tensor_parallel(kind) — heads of qkv and attention out,
//              F of gate_up/down, V of embed/lm_head; norm gains, pos_embed, router replicated.
//   expert   : expert weights split on E (view dim 0).
//   pipeline : layer l's parameters are pinned to its stage (assign_layers_to_stages);
//              embed and pos_embed to stage 0, final_norm and lm_head to the last stage.
//   fsdp/ZeRO: the ZeRO group is the `fsdp` axis (always: FSDP = ZeRO-3 on it) plus the
//              `data` axis for optimizer state when zero_stage >= 1, gradients when >= 2 and
//              parameters when 3. A tensor with at least fsdp_min_weight_size elements is
//              split over the group (axes in order data, fsdp) on the view dimension the
//              FSDP rule picks among those tensor/expert left unsplit.
//   data     : otherwise replicated.
#include <map>
#include <string>
#include <vector>

#include "layout/layout.hpp"
#include "model/model_config.hpp"
#include "strategy/weight_sharding.hpp"

namespace shardflow {

struct ParamInfo {
  std::string name;
  Shape shape;
  ParamKind kind = ParamKind::NormGain;
  int layer = -1;             // -1 for embed, pos_embed, final_norm, lm_head
  bool weight_decay = false;  // MODEL.md: 2-D tensors other than embed/pos_embed
  Shape view_shape;
  int tensor_split_dim = -1;  // view dimension split by the tensor axis (-1: none)
  int64_t numel() const { return shardflow::numel(shape); }
};

enum class TensorRole { Param, Grad, OptimizerState };
std::string tensor_role_name(TensorRole r);

struct StrategyOptions {
  int zero_stage = 0;                   // 0..3
  int64_t fsdp_min_weight_size = 1024;  // smaller tensors stay replicated over the ZeRO group
};

/// A parameter's default sharding: spec over its view shape, plus stage pinning.
struct ParamSharding {
  Shape view_shape;
  PartitionSpec spec;
  std::map<std::string, int> pinned;
  std::string rule;  // human-readable reason, e.g. "tensor: stacked_qkv on heads; zero: view dim 3"
  Layout layout(const MeshShape& mesh) const { return Layout(view_shape, spec, mesh, pinned); }
};

class ModelDescription {
 public:
  /// Validates the config (InputError naming key and value).
  explicit ModelDescription(ModelConfig config);
  const ModelConfig& config() const { return config_; }
  const std::vector<ParamInfo>& params() const { return params_; }
  /// InputError naming the name when unknown.
  const ParamInfo& param(const std::string& name) const;
  int64_t parameter_count() const;
  /// Pipeline stage of a parameter for `stages` stages (0 when stages == 1).
  int stage_of(const ParamInfo& p, int stages) const;
  /// The default sharding of p's role on mesh (see the file comment). Throws InputError
  /// when the mesh cannot shard the model (more tensor devices than heads, more pipeline
  /// stages than layers, an expert axis on a dense model, ...), naming the numbers.
  ParamSharding sharding(const ParamInfo& p, const MeshShape& mesh, const StrategyOptions& options = {},
                         TensorRole role = TensorRole::Param) const;
  /// Largest number of p's elements any one rank holds for `role` on mesh.
  int64_t max_local_numel(const ParamInfo& p, const MeshShape& mesh, const StrategyOptions& options = {},
                          TensorRole role = TensorRole::Param) const;
  /// Throws InputError when the model cannot be sharded on mesh (checks every parameter).
  void check_mesh(const MeshShape& mesh) const;

 private:
  ModelConfig config_;
  std::vector<ParamInfo> params_;
};

}  // namespace shardflow
