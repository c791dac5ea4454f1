#pragma once
// The single-process reference GPT of MODEL.md: the whole forward and backward on one
// rank, built from the kernels in nn/kernels.hpp, with every parameter and gradient named
// exactly as in MODEL.md and stored in one flat buffer each (in MODEL.md's order).
// The sharded training step (the lead's compiler) calls the same kernels per layer and per
// micro-batch; this class is its serial reference, its benchmark and its test oracle.
#include <cstdint>
#include <string>
#include <vector>

#include "layout/layout.hpp"
#include "model/model_config.hpp"
#include "nn/kernels.hpp"

namespace shardflow::nn {

/// Model sizes (MODEL.md): V, S, H, A, F, L. The quickstart values are the defaults.
/// llama = true is docs/model.md's Llama: RoPE (rope_theta) instead of the position table,
/// kv_heads key/value heads (0: as many as heads), q and kv projections apart.
struct GptConfig {
  int64_t vocab = 256;
  int64_t seq = 64;
  int64_t hidden = 128;
  int64_t heads = 4;
  int64_t ffn = 344;
  int64_t layers = 4;
  bool llama = false;
  int64_t kv_heads = 0;
  double rope_theta = 10000.0;
  bool tie_embeddings = false;  // llama: the head is embed.weight
  double attention_dropout = 0;  // training only (AttnDropout); 0: MODEL.md's model
  int64_t head_dim() const { return hidden / heads; }
  int64_t kv_count() const { return kv_heads > 0 ? kv_heads : heads; }
  /// Columns of the q|k|v activation: (A + 2K) · D.
  int64_t qkv_cols() const { return (heads + 2 * kv_count()) * head_dim(); }
  /// Throws InputError naming the field and value (sizes >= 1, heads divides hidden).
  void validate() const;
  /// The dense sizes and the family of a deck's [model] section.
  static GptConfig from(const ModelConfig& m) {
    return GptConfig{m.vocab,
                     m.seq,
                     m.hidden,
                     m.heads,
                     m.ffn,
                     m.layers,
                     m.is_llama(),
                     m.kv_head_count(),
                     m.rope_theta,
                     m.tie_embeddings,
                     m.attention_dropout};
  }
};

/// One parameter: MODEL.md name, shape, place in the flat buffer, weight-decay flag.
struct ParamInfo {
  std::string name;
  Shape shape;
  int64_t offset = 0;
  int64_t numel = 0;
  bool weight_decay = false;
};

/// The parameters in MODEL.md order (embed, pos_embed, per layer attn_norm, attn.qkv,
/// attn.out, mlp_norm, mlp.gate_up, mlp.down, then final_norm, lm_head).
std::vector<ParamInfo> gpt_parameters(const GptConfig& cfg);
int64_t gpt_num_params(const GptConfig& cfg);
/// Parameters that take part in matmuls: L·(2H² + 2·K·D·H + 3FH) + V·H (K·D = H for the
/// gpt: L·(4H² + 3FH) + V·H; lm_head; the embeddings are gathers and the gains elementwise).
int64_t gpt_matmul_params(const GptConfig& cfg);
/// Model FLOPs of one forward + backward over `tokens` tokens:
///   6 · gpt_matmul_params · tokens + 12 · L · S · H · tokens
/// (the second term: QKᵀ and P·V, 4·S·H per token and layer forward, twice that backward,
/// counted over the full S×S square as is customary).
double gpt_model_flops(const GptConfig& cfg, int64_t tokens);

template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
class GptModel {
 public:
  using V = ViewTypes<Scalar, Exec>;
  /// Allocates parameters (zero), gradients (zero) and the activation workspace for up to
  /// `max_batch` sequences per call.
  GptModel(GptConfig cfg, int64_t max_batch);

  const GptConfig& config() const { return cfg_; }
  int64_t max_batch() const { return max_batch_; }
  const std::vector<ParamInfo>& parameters() const { return params_info_; }
  /// Throws Error naming the parameter when there is none of that name.
  const ParamInfo& info(const std::string& name) const;
  typename V::Vec param(const std::string& name) const;
  typename V::Vec grad(const std::string& name) const;
  typename V::Vec params_flat() const { return params_; }
  typename V::Vec grads_flat() const { return grads_; }

  /// Initialises every parameter with nn::Init (seed-determined, mesh-independent).
  void init(uint64_t seed);

  /// Forward and backward over b = inputs.extent(0) / S sequences (inputs and targets
  /// [b·S], row t = sequence·S + position). Returns the mean loss over the b·S positions.
  /// Gradients: grads (+)= grad_scale · ∂(Σ_t loss_t)/∂θ; grad_scale < 0 means 1/(b·S),
  /// i.e. the gradient of this micro-batch's mean loss.
  double forward_backward(typename V::CTokens inputs, typename V::CTokens targets, bool accumulate = false,
                          double grad_scale = -1.0);
  /// The mean loss only (never drops: evaluation).
  double forward(typename V::CTokens inputs, typename V::CTokens targets);
  /// With cfg.attention_dropout > 0 (required before forward_backward then): the following
  /// calls are training step `step` of a run seeded with `seed` (attention_dropout_key), and
  /// their first sequence is sequence `seq0` of that step's global batch.
  void set_dropout_step(uint64_t seed, int64_t step, int64_t seq0 = 0);

 private:
  int64_t check_batch(typename V::CTokens inputs, typename V::CTokens targets) const;
  /// Query head a uses kv head a / (A / K).
  const char* head_name() const { return cfg_.tie_embeddings ? "embed.weight" : "lm_head.weight"; }
  KvMap kv_map() const { return KvMap{cfg_.kv_count(), cfg_.heads / cfg_.kv_count(), 0, 0}; }
  void run_forward(typename V::CTokens inputs, int64_t b, bool train);
  AttnDropout dropout(int64_t layer) const;
  typename V::Mat mat(const std::string& name) const;
  typename V::Mat gmat(const std::string& name) const;
  typename V::Mat buf(const typename V::OwnedVec& flat, int64_t rows, int64_t cols) const;

  GptConfig cfg_;
  int64_t max_batch_;
  std::vector<ParamInfo> params_info_;
  typename V::OwnedVec params_, grads_;
  struct LayerActs {
    typename V::OwnedVec x_in, n1, rstd1, qkv, probs, att, x_mid, n2, rstd2, gu, h;
  };
  std::vector<LayerActs> acts_;
  typename V::OwnedVec x_final, nf, rstdf, logits, row_max, stats, rope;
  // backward scratch
  typename V::OwnedVec dx, dn, dh, dgu, datt, dqkv, dprobs;
  typename Embedding<Scalar, Exec>::Scratch embed_scratch_;
  uint64_t drop_seed_ = 0;
  int64_t drop_step_ = 0, drop_seq0_ = 0;  // drop_step_ 0: not set
};

extern template class GptModel<float>;
extern template class GptModel<double>;

}  // namespace shardflow::nn
