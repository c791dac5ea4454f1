#pragma once
// ModelConfig: the model family and its sizes. `gpt` is the reference byte-level GPT of
// MODEL.md; `llama` (docs/model.md) replaces the learned positions with rotary embeddings
// (rope_theta) and shares each key/value head among heads / kv_heads query heads (grouped-
// query attention). Both take the optional mixture-of-experts extension (experts, top_k,
// moe_every; 0 = dense).
#include <cstdint>
#include <string>

namespace shardflow {

enum class ModelFamily : uint8_t { Gpt, Llama };
/// "gpt" / "llama"
std::string model_family_name(ModelFamily f);
/// InputError naming the value when it is neither.
ModelFamily parse_model_family(const std::string& s);

struct ModelConfig {
  ModelFamily family = ModelFamily::Gpt;
  int64_t vocab = 256;   // V
  int64_t seq = 64;      // S
  int64_t hidden = 128;  // H
  int64_t heads = 4;     // A (D = H / A)
  int64_t ffn = 344;     // F
  int64_t layers = 4;    // L
  /// Llama: key/value heads K (1 <= K <= A, A % K == 0); 0 means K = A. The GPT has K = A.
  int64_t kv_heads = 0;
  /// Llama: the RoPE base θ (frequencies θ^(-2i/D)).
  double rope_theta = 10000.0;
  static constexpr double default_rope_theta = 10000.0;
  /// Llama: the head reuses embed.weight (no lm_head.weight).
  bool tie_embeddings = false;
  /// Mixture of experts: `experts` experts per MoE layer, each token routed to `top_k`;
  /// layer l is an MoE layer when (l + 1) % moe_every == 0. All 0 for the dense model.
  int64_t experts = 0;
  int64_t top_k = 0;
  int64_t moe_every = 0;
  /// MoE capacity per sequence and expert: C = ceil(capacity_factor · S · top_k / E) choices.
  double capacity_factor = 1.25;
  /// Coefficient of the sequence-wise load-balancing loss (docs/parallelism.md).
  double aux_loss_coef = 0.01;
  static constexpr double default_capacity_factor = 1.25;
  static constexpr double default_aux_loss_coef = 0.01;
  /// Dropout on the attention probabilities in training, as Megatron-LM's attention_dropout
  /// (nn::AttnDropout; 0: none, MODEL.md's model). Not a shape: it is not part of operator==
  /// (a checkpoint restores under any value).
  double attention_dropout = 0;

  int64_t head_dim() const { return hidden / heads; }
  bool is_llama() const { return family == ModelFamily::Llama; }
  /// K: the key/value heads (A for the GPT and for kv_heads = 0).
  int64_t kv_head_count() const { return kv_heads > 0 ? kv_heads : heads; }
  bool is_moe() const { return experts > 0; }
  bool is_moe_layer(int64_t layer) const { return experts > 0 && moe_every > 0 && (layer + 1) % moe_every == 0; }
  /// Throws InputError naming the key and value ("model.heads = 5 does not divide
  /// model.hidden = 128", "model.layers = 0 must be > 0", ...).
  void validate() const;
  /// V=256 S=64 H=128 A=4 F=344 L=4 (MODEL.md quickstart).
  static ModelConfig quickstart() { return ModelConfig{}; }
  std::string to_string() const;
  bool operator==(const ModelConfig& o) const {
    return family == o.family && kv_head_count() == o.kv_head_count() && rope_theta == o.rope_theta &&
           tie_embeddings == o.tie_embeddings &&
           vocab == o.vocab && seq == o.seq && hidden == o.hidden && heads == o.heads && ffn == o.ffn &&
           layers == o.layers && experts == o.experts && top_k == o.top_k && moe_every == o.moe_every &&
           capacity_factor == o.capacity_factor && aux_loss_coef == o.aux_loss_coef;
  }
};

}  // namespace shardflow
