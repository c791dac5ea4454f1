// The reference GPT: forward and backward of the whole model on one rank.
#include "nn/gpt.hpp"

#include <cmath>

#include "core/error.hpp"
#include "nn/init.hpp"

namespace shardflow::nn {

void GptConfig::validate() const {
  SHARDFLOW_REQUIRE_INPUT(vocab >= 1, "model: vocab must be >= 1, got ", vocab);
  SHARDFLOW_REQUIRE_INPUT(seq >= 1, "model: seq must be >= 1, got ", seq);
  SHARDFLOW_REQUIRE_INPUT(hidden >= 1, "model: hidden must be >= 1, got ", hidden);
  SHARDFLOW_REQUIRE_INPUT(heads >= 1 && hidden % heads == 0, "model: heads must be >= 1 and divide hidden = ", hidden,
                          ", got ", heads);
  SHARDFLOW_REQUIRE_INPUT(ffn >= 1, "model: ffn must be >= 1, got ", ffn);
  SHARDFLOW_REQUIRE_INPUT(layers >= 1, "model: layers must be >= 1, got ", layers);
  SHARDFLOW_REQUIRE_INPUT(std::isfinite(attention_dropout) && attention_dropout >= 0 && attention_dropout < 1,
                          "model: attention_dropout must be in [0, 1), got ", attention_dropout);
  SHARDFLOW_REQUIRE_INPUT(kv_heads >= 0 && kv_heads <= heads && heads % kv_count() == 0,
                          "model: kv_heads must divide heads = ", heads, ", got ", kv_heads);
  SHARDFLOW_REQUIRE_INPUT(llama || kv_count() == heads, "model: kv_heads = ", kv_heads, " needs the llama family");
  SHARDFLOW_REQUIRE_INPUT(!llama || head_dim() % 2 == 0, "model: llama needs an even head size, got ", head_dim());
  SHARDFLOW_REQUIRE_INPUT(llama || !tie_embeddings, "model: tie_embeddings needs the llama family");
}

std::vector<ParamInfo> gpt_parameters(const GptConfig& cfg) {
  cfg.validate();
  std::vector<ParamInfo> out;
  int64_t offset = 0;
  auto add = [&](std::string name, Shape shape) {
    ParamInfo p;
    p.numel = numel(shape);
    p.weight_decay = shape.size() == 2 && name != "embed.weight" && name != "pos_embed.weight";
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.offset = offset;
    offset += p.numel;
    out.push_back(std::move(p));
  };
  const int64_t h = cfg.hidden, f = cfg.ffn;
  add("embed.weight", {cfg.vocab, h});
  if (!cfg.llama) add("pos_embed.weight", {cfg.seq, h});
  for (int64_t l = 0; l < cfg.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {h});
    if (cfg.llama) {
      add(p + "attn.q.weight", {h, h});
      add(p + "attn.kv.weight", {2 * cfg.kv_count() * cfg.head_dim(), h});
    } else {
      add(p + "attn.qkv.weight", {3 * h, h});
    }
    add(p + "attn.out.weight", {h, h});
    add(p + "mlp_norm.weight", {h});
    add(p + "mlp.gate_up.weight", {2 * f, h});
    add(p + "mlp.down.weight", {h, f});
  }
  add("final_norm.weight", {h});
  if (!cfg.tie_embeddings) add("lm_head.weight", {cfg.vocab, h});
  return out;
}

int64_t gpt_num_params(const GptConfig& cfg) {
  int64_t n = 0;
  for (const auto& p : gpt_parameters(cfg)) n += p.numel;
  return n;
}

int64_t gpt_matmul_params(const GptConfig& cfg) {
  const int64_t kvd = cfg.kv_count() * cfg.head_dim();
  return cfg.layers * (2 * cfg.hidden * cfg.hidden + 2 * kvd * cfg.hidden + 3 * cfg.ffn * cfg.hidden) +
         cfg.vocab * cfg.hidden;
}

double gpt_model_flops(const GptConfig& cfg, int64_t tokens) {
  return 6.0 * static_cast<double>(gpt_matmul_params(cfg)) * static_cast<double>(tokens) +
         12.0 * static_cast<double>(cfg.layers) * static_cast<double>(cfg.seq) * static_cast<double>(cfg.hidden) *
             static_cast<double>(tokens);
}

// ---- GptModel -----------------------------------------------------------------------------
template <class Scalar, class Exec>
GptModel<Scalar, Exec>::GptModel(GptConfig cfg, int64_t max_batch)
    : cfg_(cfg), max_batch_(max_batch), params_info_(gpt_parameters(cfg)) {
  SHARDFLOW_REQUIRE_INPUT(max_batch >= 1, "GptModel: max_batch must be >= 1, got ", max_batch);
  const int64_t total = params_info_.back().offset + params_info_.back().numel;
  params_ = typename V::OwnedVec("nn::gpt_params", static_cast<size_t>(total));
  grads_ = typename V::OwnedVec("nn::gpt_grads", static_cast<size_t>(total));
  const int64_t t = max_batch * cfg.seq, h = cfg.hidden, f = cfg.ffn, s = cfg.seq, c = cfg.qkv_cols();
  auto alloc = [](const char* label, int64_t n) { return typename V::OwnedVec(std::string(label), static_cast<size_t>(n)); };
  acts_.resize(static_cast<size_t>(cfg.layers));
  for (auto& a : acts_) {
    a.x_in = alloc("nn::x_in", t * h);
    a.n1 = alloc("nn::n1", t * h);
    a.rstd1 = alloc("nn::rstd1", t);
    a.qkv = alloc("nn::qkv", t * c);
    a.probs = alloc("nn::probs", max_batch * cfg.heads * s * s);
    a.att = alloc("nn::att", t * h);
    a.x_mid = alloc("nn::x_mid", t * h);
    a.n2 = alloc("nn::n2", t * h);
    a.rstd2 = alloc("nn::rstd2", t);
    a.gu = alloc("nn::gu", t * 2 * f);
    a.h = alloc("nn::h", t * f);
  }
  x_final = alloc("nn::x_final", t * h);
  nf = alloc("nn::nf", t * h);
  rstdf = alloc("nn::rstdf", t);
  logits = alloc("nn::logits", t * cfg.vocab);
  row_max = alloc("nn::row_max", t);
  stats = alloc("nn::stats", t * 2);
  dx = alloc("nn::dx", t * h);
  dn = alloc("nn::dn", t * h);
  dh = alloc("nn::dh", t * f);
  dgu = alloc("nn::dgu", t * 2 * f);
  datt = alloc("nn::datt", t * h);
  dqkv = alloc("nn::dqkv", t * c);
  if (cfg.llama) {
    rope = alloc("nn::rope", s * cfg.head_dim());
    Rope<Scalar, Exec>::table(cfg.rope_theta, buf(rope, s, cfg.head_dim()));
  }
  dprobs = alloc("nn::dprobs", s * s);
  embed_scratch_ = typename Embedding<Scalar, Exec>::Scratch(cfg.vocab, t);
}

template <class Scalar, class Exec>
const ParamInfo& GptModel<Scalar, Exec>::info(const std::string& name) const {
  for (const auto& p : params_info_)
    if (p.name == name) return p;
  throw Error("GptModel: no parameter named '" + name + "'");
}

template <class Scalar, class Exec>
typename GptModel<Scalar, Exec>::V::Vec GptModel<Scalar, Exec>::param(const std::string& name) const {
  const ParamInfo& p = info(name);
  return typename V::Vec(params_.data() + p.offset, static_cast<size_t>(p.numel));
}

template <class Scalar, class Exec>
typename GptModel<Scalar, Exec>::V::Vec GptModel<Scalar, Exec>::grad(const std::string& name) const {
  const ParamInfo& p = info(name);
  return typename V::Vec(grads_.data() + p.offset, static_cast<size_t>(p.numel));
}

template <class Scalar, class Exec>
typename GptModel<Scalar, Exec>::V::Mat GptModel<Scalar, Exec>::mat(const std::string& name) const {
  const ParamInfo& p = info(name);
  const int64_t cols = p.shape.size() == 2 ? p.shape[1] : p.shape[0];
  const int64_t rows = p.shape.size() == 2 ? p.shape[0] : 1;
  return typename V::Mat(params_.data() + p.offset, static_cast<size_t>(rows), static_cast<size_t>(cols));
}

template <class Scalar, class Exec>
typename GptModel<Scalar, Exec>::V::Mat GptModel<Scalar, Exec>::gmat(const std::string& name) const {
  const ParamInfo& p = info(name);
  const int64_t cols = p.shape.size() == 2 ? p.shape[1] : p.shape[0];
  const int64_t rows = p.shape.size() == 2 ? p.shape[0] : 1;
  return typename V::Mat(grads_.data() + p.offset, static_cast<size_t>(rows), static_cast<size_t>(cols));
}

template <class Scalar, class Exec>
typename GptModel<Scalar, Exec>::V::Mat GptModel<Scalar, Exec>::buf(const typename V::OwnedVec& flat, int64_t rows,
                                                                    int64_t cols) const {
  return typename V::Mat(flat.data(), static_cast<size_t>(rows), static_cast<size_t>(cols));
}

template <class Scalar, class Exec>
void GptModel<Scalar, Exec>::init(uint64_t seed) {
  for (const auto& p : params_info_) Init<Scalar, Exec>::fill(param(p.name), seed, p.name, p.shape);
}

template <class Scalar, class Exec>
int64_t GptModel<Scalar, Exec>::check_batch(typename V::CTokens inputs, typename V::CTokens targets) const {
  const int64_t t = static_cast<int64_t>(inputs.extent(0));
  SHARDFLOW_REQUIRE(t % cfg_.seq == 0 && t / cfg_.seq >= 1 && t / cfg_.seq <= max_batch_ &&
                        targets.extent(0) == inputs.extent(0),
                    "GptModel: inputs has ", t, " tokens and targets ", targets.extent(0), "; want b · S with S = ",
                    cfg_.seq, " and 1 <= b <= max_batch = ", max_batch_);
  const int32_t v = static_cast<int32_t>(cfg_.vocab);
  int64_t bad = 0;
  Kokkos::parallel_reduce(
      "nn::gpt_check_tokens", Kokkos::RangePolicy<Exec>(0, t),
      KOKKOS_LAMBDA(const int64_t i, int64_t& acc) {
        acc += (inputs(i) < 0 || inputs(i) >= v || targets(i) < 0 || targets(i) >= v) ? 1 : 0;
      },
      bad);
  SHARDFLOW_REQUIRE(bad == 0, "GptModel: ", bad, " input/target tokens lie outside the vocabulary [0, ", v, ")");
  return t / cfg_.seq;
}

template <class Scalar, class Exec>
void GptModel<Scalar, Exec>::set_dropout_step(uint64_t seed, int64_t step, int64_t seq0) {
  SHARDFLOW_REQUIRE(step >= 1 && seq0 >= 0, "GptModel::set_dropout_step: step ", step, " and first sequence ", seq0,
                    " must be >= 1 and >= 0");
  drop_seed_ = seed;
  drop_step_ = step;
  drop_seq0_ = seq0;
}

template <class Scalar, class Exec>
AttnDropout GptModel<Scalar, Exec>::dropout(int64_t layer) const {
  if (cfg_.attention_dropout <= 0) return AttnDropout{};
  SHARDFLOW_REQUIRE(drop_step_ >= 1, "GptModel: attention_dropout = ", cfg_.attention_dropout,
                    " needs set_dropout_step before a training forward");
  return AttnDropout{cfg_.attention_dropout, attention_dropout_key(drop_seed_, drop_step_, layer), drop_seq0_, 0};
}

template <class Scalar, class Exec>
void GptModel<Scalar, Exec>::run_forward(typename V::CTokens inputs, int64_t b, bool train) {
  using Lin = Linear<Scalar, Exec>;
  using Norm = RmsNorm<Scalar, Exec>;
  const int64_t t = b * cfg_.seq, h = cfg_.hidden, f = cfg_.ffn;
  auto x0 = buf(cfg_.layers > 0 ? acts_[0].x_in : x_final, t, h);
  Embedding<Scalar, Exec>::forward(inputs, mat("embed.weight"), 0, x0);
  if (!cfg_.llama) PositionEmbedding<Scalar, Exec>::forward(mat("pos_embed.weight"), x0);
  const int64_t c = cfg_.qkv_cols();
  for (int64_t l = 0; l < cfg_.layers; ++l) {
    auto& a = acts_[static_cast<size_t>(l)];
    const std::string p = "layers." + std::to_string(l) + ".";
    auto x_in = buf(a.x_in, t, h), n1 = buf(a.n1, t, h), qkv = buf(a.qkv, t, c), att = buf(a.att, t, h);
    auto x_mid = buf(a.x_mid, t, h), n2 = buf(a.n2, t, h), gu = buf(a.gu, t, 2 * f), hh = buf(a.h, t, f);
    auto x_next = buf(l + 1 < cfg_.layers ? acts_[static_cast<size_t>(l + 1)].x_in : x_final, t, h);
    typename V::Vec rstd1(a.rstd1.data(), static_cast<size_t>(t)), rstd2(a.rstd2.data(), static_cast<size_t>(t));
    typename V::Ten3 probs(a.probs.data(), static_cast<size_t>(b * cfg_.heads), static_cast<size_t>(cfg_.seq),
                           static_cast<size_t>(cfg_.seq));
    Norm::forward(x_in, param(p + "attn_norm.weight"), n1, rstd1);
    if (cfg_.llama) {
      Lin::forward(n1, mat(p + "attn.q.weight"), Kokkos::subview(qkv, Kokkos::ALL(), Kokkos::pair<int64_t, int64_t>(0, h)));
      Lin::forward(n1, mat(p + "attn.kv.weight"), Kokkos::subview(qkv, Kokkos::ALL(), Kokkos::pair<int64_t, int64_t>(h, c)));
      Rope<Scalar, Exec>::forward(qkv, cfg_.heads + cfg_.kv_count(), cfg_.seq, buf(rope, cfg_.seq, cfg_.head_dim()));
    } else {
      Lin::forward(n1, mat(p + "attn.qkv.weight"), qkv);
    }
    Attention<Scalar, Exec>::forward(qkv, cfg_.heads, probs, att, DType::F32, kv_map(),
                                     train ? dropout(l) : AttnDropout{}, buf(dprobs, cfg_.seq, cfg_.seq));
    Residual<Scalar, Exec>::copy(x_in, x_mid);
    Lin::forward(att, mat(p + "attn.out.weight"), x_mid, /*accumulate=*/true);
    Norm::forward(x_mid, param(p + "mlp_norm.weight"), n2, rstd2);
    Lin::forward(n2, mat(p + "mlp.gate_up.weight"), gu);
    SwiGlu<Scalar, Exec>::forward(gu, hh);
    Residual<Scalar, Exec>::copy(x_mid, x_next);
    Lin::forward(hh, mat(p + "mlp.down.weight"), x_next, /*accumulate=*/true);
  }
  typename V::Vec rf(rstdf.data(), static_cast<size_t>(t));
  Norm::forward(buf(x_final, t, h), param("final_norm.weight"), buf(nf, t, h), rf);
  Lin::forward(buf(nf, t, h), mat(head_name()), buf(logits, t, cfg_.vocab));
}

template <class Scalar, class Exec>
double GptModel<Scalar, Exec>::forward(typename V::CTokens inputs, typename V::CTokens targets) {
  const int64_t b = check_batch(inputs, targets), t = b * cfg_.seq;
  run_forward(inputs, b, false);
  using CE = CrossEntropy<Scalar, Exec>;
  typename V::Vec rm(row_max.data(), static_cast<size_t>(t));
  auto st = buf(stats, t, 2);
  auto lg = buf(logits, t, cfg_.vocab);
  CE::local_max(lg, rm);
  CE::local_sumexp_target(lg, rm, targets, 0, st);
  return CE::loss(rm, st) / static_cast<double>(t);
}

template <class Scalar, class Exec>
double GptModel<Scalar, Exec>::forward_backward(typename V::CTokens inputs, typename V::CTokens targets,
                                                bool accumulate, double grad_scale) {
  using Lin = Linear<Scalar, Exec>;
  using Norm = RmsNorm<Scalar, Exec>;
  const int64_t b = check_batch(inputs, targets), t = b * cfg_.seq, h = cfg_.hidden, f = cfg_.ffn;
  if (grad_scale < 0) grad_scale = 1.0 / static_cast<double>(t);
  run_forward(inputs, b, true);
  const bool acc = accumulate;
  auto lg = buf(logits, t, cfg_.vocab);
  typename V::Vec rm(row_max.data(), static_cast<size_t>(t));
  const double loss_sum =
      CrossEntropy<Scalar, Exec>::forward_backward(lg, targets, grad_scale, lg, rm, buf(stats, t, 2));
  auto dxm = buf(dx, t, h), dnm = buf(dn, t, h);
  // head and final norm
  Lin::backward_weight(lg, buf(nf, t, h), gmat(head_name()), acc);
  Lin::backward_input(lg, mat(head_name()), dnm);
  typename V::Vec rf(rstdf.data(), static_cast<size_t>(t));
  Norm::backward(dnm, buf(x_final, t, h), param("final_norm.weight"), rf, dxm, grad("final_norm.weight"), false,
                 acc);
  const int64_t c = cfg_.qkv_cols();
  for (int64_t l = cfg_.layers - 1; l >= 0; --l) {
    auto& a = acts_[static_cast<size_t>(l)];
    const std::string p = "layers." + std::to_string(l) + ".";
    auto x_in = buf(a.x_in, t, h), n1 = buf(a.n1, t, h), qkv = buf(a.qkv, t, c), att = buf(a.att, t, h);
    auto x_mid = buf(a.x_mid, t, h), n2 = buf(a.n2, t, h), gu = buf(a.gu, t, 2 * f), hh = buf(a.h, t, f);
    typename V::Vec rstd1(a.rstd1.data(), static_cast<size_t>(t)), rstd2(a.rstd2.data(), static_cast<size_t>(t));
    typename V::CTen3 probs(a.probs.data(), static_cast<size_t>(b * cfg_.heads), static_cast<size_t>(cfg_.seq),
                            static_cast<size_t>(cfg_.seq));
    auto dhm = buf(dh, t, f), dgum = buf(dgu, t, 2 * f), dattm = buf(datt, t, h), dqkvm = buf(dqkv, t, c);
    // x_next = x_mid + h · downᵀ
    Lin::backward_weight(dxm, hh, gmat(p + "mlp.down.weight"), acc);
    Lin::backward_input(dxm, mat(p + "mlp.down.weight"), dhm);
    SwiGlu<Scalar, Exec>::backward(dhm, gu, dgum);
    Lin::backward_weight(dgum, n2, gmat(p + "mlp.gate_up.weight"), acc);
    Lin::backward_input(dgum, mat(p + "mlp.gate_up.weight"), dnm);
    Norm::backward(dnm, x_mid, param(p + "mlp_norm.weight"), rstd2, dxm, grad(p + "mlp_norm.weight"), true, acc);
    // x_mid = x_in + att · outᵀ
    Lin::backward_weight(dxm, att, gmat(p + "attn.out.weight"), acc);
    Lin::backward_input(dxm, mat(p + "attn.out.weight"), dattm);
    Attention<Scalar, Exec>::backward(dattm, qkv, probs, cfg_.heads, buf(dprobs, cfg_.seq, cfg_.seq), dqkvm, false,
                                      DType::F32, kv_map(), dropout(l));
    if (cfg_.llama) {
      Rope<Scalar, Exec>::backward(dqkvm, cfg_.heads + cfg_.kv_count(), cfg_.seq, buf(rope, cfg_.seq, cfg_.head_dim()));
      using Cols = Kokkos::pair<int64_t, int64_t>;
      auto dq = Kokkos::subview(dqkvm, Kokkos::ALL(), Cols(0, h));
      auto dkv = Kokkos::subview(dqkvm, Kokkos::ALL(), Cols(h, c));
      Lin::backward_weight(dq, n1, gmat(p + "attn.q.weight"), acc);
      Lin::backward_weight(dkv, n1, gmat(p + "attn.kv.weight"), acc);
      Lin::backward_input(dq, mat(p + "attn.q.weight"), dnm);
      Lin::backward_input(dkv, mat(p + "attn.kv.weight"), dnm, /*accumulate=*/true);
    } else {
      Lin::backward_weight(dqkvm, n1, gmat(p + "attn.qkv.weight"), acc);
      Lin::backward_input(dqkvm, mat(p + "attn.qkv.weight"), dnm);
    }
    Norm::backward(dnm, x_in, param(p + "attn_norm.weight"), rstd1, dxm, grad(p + "attn_norm.weight"), true, acc);
  }
  // tied: the head's gradient is already in embed's (accumulate onto it)
  Embedding<Scalar, Exec>::backward(inputs, dxm, 0, gmat("embed.weight"), embed_scratch_, acc || cfg_.tie_embeddings);
  if (!cfg_.llama) PositionEmbedding<Scalar, Exec>::backward(dxm, gmat("pos_embed.weight"), acc);
  return loss_sum / static_cast<double>(t);
}

template class GptModel<float>;
template class GptModel<double>;

}  // namespace shardflow::nn
