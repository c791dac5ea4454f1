#pragma once
// ModelDescription: the parameters of the reference model (MODEL.md names and shapes, in
// MODEL.md order), each with its sharding kind, role tags and *view shape*.
//
// View shapes are fixed per kind, whatever the mesh, so a parameter's Layout always has
// the same global shape and any two meshes can reshard between each other:
//   embedding [V,H] → [V,H]; pos_embedding [S,H] → [S,H]; norm gain [H] → [H];
//   stacked qkv [3H,H] → [3,A,D,H]; attention out [H,H] → [H,A,D];
//   gate_up [2F,H] → [2,F,H]; down [H,F] → [H,F]; lm_head [V,H] → [V,H];
//   router [E,H] → [E,H]; expert gate_up [E,2F,H] → [E,2,F,H]; expert down [E,H,F] → [E,H,F].
//
// Where each parameter lives on a mesh is decided by parallel::LayoutPlan (src/parallel),
// and nowhere else.
#include <map>
#include <string>
#include <vector>

#include "layout/layout.hpp"
#include "model/model_config.hpp"
#include "model/param_kind.hpp"

namespace shardflow {

struct ParamInfo {
  std::string name;
  Shape shape;
  ParamKind kind = ParamKind::NormGain;
  int layer = -1;             // -1 for embed, pos_embed, final_norm, lm_head
  bool weight_decay = false;  // MODEL.md: 2-D tensors other than embed/pos_embed
  Shape view_shape;  // view_shape(kind, shape, ...): what the splits act on
  int64_t numel() const { return shardflow::numel(shape); }
};

enum class TensorRole { Param, Grad, OptimizerState };
std::string tensor_role_name(TensorRole r);

struct StrategyOptions {
  int zero_stage = 0;                   // 0..3
  int64_t fsdp_min_weight_size = 1024;  // smaller tensors stay replicated over the ZeRO group
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
 private:
  ModelConfig config_;
  std::vector<ParamInfo> params_;
};

}  // namespace shardflow
