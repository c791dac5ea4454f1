#include "config/deck.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "core/error.hpp"
#include "model/model_description.hpp"
#include "parallel/layout_plan.hpp"
#include "strategy/sharding_config.hpp"
#include "mesh/axes.hpp"

namespace shardflow {

namespace {

enum class KeyType { Int, Float, Bool, String };

struct KeySpec {
  const char* section;
  const char* key;
  KeyType type;
};

const std::vector<KeySpec>& schema() {
  static const std::vector<KeySpec> s{
      {"mesh", "data", KeyType::Int},
      {"mesh", "fsdp", KeyType::Int},
      {"mesh", "tensor", KeyType::Int},
      {"mesh", "pipeline", KeyType::Int},
      {"mesh", "expert", KeyType::Int},
      {"mesh", "context", KeyType::Int},
      {"model", "family", KeyType::String},
      {"model", "kv_heads", KeyType::Int},
      {"model", "rope_theta", KeyType::Float},
      {"model", "tie_embeddings", KeyType::Bool},
      {"model", "vocab", KeyType::Int},
      {"model", "seq", KeyType::Int},
      {"model", "hidden", KeyType::Int},
      {"model", "heads", KeyType::Int},
      {"model", "ffn", KeyType::Int},
      {"model", "layers", KeyType::Int},
      {"model", "experts", KeyType::Int},
      {"model", "top_k", KeyType::Int},
      {"model", "moe_every", KeyType::Int},
      {"model", "capacity_factor", KeyType::Float},
      {"model", "aux_loss_coef", KeyType::Float},
      {"model", "attention_dropout", KeyType::Float},
      {"train", "steps", KeyType::Int},
      {"train", "global_batch", KeyType::Int},
      {"train", "micro_batches", KeyType::Int},
      {"train", "lr", KeyType::Float},
      {"train", "warmup", KeyType::Int},
      {"train", "seed", KeyType::Int},
      {"train", "data", KeyType::String},
      {"train", "memory_limit_gib", KeyType::Float},
      {"train", "precision", KeyType::String},
      {"train", "loss_scale", KeyType::Float},
      {"train", "loss_scale_window", KeyType::Int},
      {"strategy", "zero_stage", KeyType::Int},
      {"strategy", "fsdp_min_weight_size", KeyType::Int},
      {"strategy", "gather_dtype", KeyType::String},
      {"strategy", "grad_scatter_dtype", KeyType::String},
      {"strategy", "activation_comm_dtype", KeyType::String},
      {"strategy", "prefetch", KeyType::Int},
      {"strategy", "schedule", KeyType::String},
      {"strategy", "virtual_stages", KeyType::Int},
      {"strategy", "sequence_parallel", KeyType::Bool},
      {"strategy", "recompute", KeyType::String},
      {"checkpoint", "dir", KeyType::String},
      {"checkpoint", "every", KeyType::Int},
      {"checkpoint", "keep", KeyType::Int},
      {"checkpoint", "async", KeyType::Bool},
  };
  return s;
}

const std::vector<std::string>& sections() {
  static const std::vector<std::string> s{"mesh", "model", "train", "strategy", "checkpoint"};
  return s;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

std::vector<std::string> keys_of(const std::string& section) {
  std::vector<std::string> out;
  for (const auto& k : schema())
    if (section == k.section) out.emplace_back(k.key);
  return out;
}

const KeySpec* find_key(const std::string& section, const std::string& key) {
  for (const auto& k : schema())
    if (section == k.section && key == k.key) return &k;
  return nullptr;
}

const char* type_word(KeyType t) {
  switch (t) {
    case KeyType::Int:
      return "an integer";
    case KeyType::Float:
      return "a number";
    case KeyType::Bool:
      return "a boolean (true or false)";
    case KeyType::String:
      return "a string";
  }
  return "?";
}

std::string node_type_word(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    default:
      return "a date/time";
  }
}

/// The shortest decimal text that reads back as exactly x.
std::string shortest_double(double x) {
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

/// A value as written in TOML: strings double-quoted, numbers in their shortest form.
std::string node_text(const toml::node& n) {
  if (auto s = n.value_exact<std::string>()) return "\"" + *s + "\"";
  if (auto i = n.value_exact<int64_t>()) return std::to_string(*i);
  if (auto f = n.value_exact<double>()) return shortest_double(*f);
  if (auto b = n.value_exact<bool>()) return *b ? "true" : "false";
  std::ostringstream os;
  n.visit([&](const auto& v) { os << v; });
  return os.str();
}

/// One parsed value, with where it came from.
struct Value {
  KeyType type;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::string text;   // as written, for messages
  std::string where;  // "file:line" or "--set ..."
  bool from_deck = false;
};

class DeckBuilder {
 public:
  DeckBuilder(std::string source, std::string base_dir) : source_(std::move(source)), base_dir_(std::move(base_dir)) {}

  void read_table(const toml::table& root) {
    for (const auto& [sec_key, sec_node] : root) {
      const std::string sec(sec_key.str());
      const std::string at = loc(sec_node);
      SHARDFLOW_REQUIRE_INPUT(std::find(sections().begin(), sections().end(), sec) != sections().end(), at,
                              ": unknown section [", sec, "] (known sections: ", join(sections()), ")");
      const toml::table* tbl = sec_node.as_table();
      SHARDFLOW_REQUIRE_INPUT(tbl != nullptr, at, ": '", sec, "' must be a section [", sec, "], not ",
                              node_type_word(sec_node));
      for (const auto& [key_key, node] : *tbl) {
        const std::string key(key_key.str());
        const std::string kat = loc(node);
        const KeySpec* spec = find_key(sec, key);
        SHARDFLOW_REQUIRE_INPUT(spec != nullptr, kat, ": unknown key '", sec, ".", key, "' (known keys of [", sec,
                                "]: ", join(keys_of(sec)), ")");
        Value v;
        v.type = spec->type;
        v.text = node_text(node);
        v.where = kat;
        v.from_deck = true;
        bool ok = false;
        switch (spec->type) {
          case KeyType::Int:
            if (auto x = node.value_exact<int64_t>()) v.i = *x, ok = true;
            break;
          case KeyType::Float:
            if (node.is_integer())
              v.f = static_cast<double>(*node.value_exact<int64_t>()), ok = true;
            else if (auto x = node.value_exact<double>())
              v.f = *x, ok = true;
            SHARDFLOW_REQUIRE_INPUT(!ok || std::isfinite(v.f), kat, ": ", sec, ".", key, " = ", v.text,
                                    " is not a finite number");
            break;
          case KeyType::Bool:
            if (auto x = node.value_exact<bool>()) v.b = *x, ok = true;
            break;
          case KeyType::String:
            if (auto x = node.value_exact<std::string>()) v.s = *x, ok = true;
            break;
        }
        SHARDFLOW_REQUIRE_INPUT(ok, kat, ": ", sec, ".", key, " = ", v.text, " has the wrong type: expected ",
                                type_word(spec->type), ", got ", node_type_word(node));
        values_[sec + "." + key] = v;
      }
    }
  }

  void apply_override(const std::string& text) {
    const std::string at = "--set " + text;
    const auto eq = text.find('=');
    SHARDFLOW_REQUIRE_INPUT(eq != std::string::npos, at, ": expected section.key=value");
    const std::string full = text.substr(0, eq);
    std::string val = text.substr(eq + 1);
    const auto dot = full.find('.');
    SHARDFLOW_REQUIRE_INPUT(dot != std::string::npos, at, ": expected section.key=value");
    const std::string sec = full.substr(0, dot), key = full.substr(dot + 1);
    SHARDFLOW_REQUIRE_INPUT(std::find(sections().begin(), sections().end(), sec) != sections().end(), at,
                            ": unknown section [", sec, "] (known sections: ", join(sections()), ")");
    const KeySpec* spec = find_key(sec, key);
    SHARDFLOW_REQUIRE_INPUT(spec != nullptr, at, ": unknown key '", full, "' (known keys of [", sec,
                            "]: ", join(keys_of(sec)), ")");
    Value v;
    v.type = spec->type;
    v.text = val;
    v.where = at;
    auto bad = [&]() {
      throw InputError(
          detail::concat(at, ": ", full, " = ", val, " has the wrong type: expected ", type_word(spec->type)));
    };
    switch (spec->type) {
      case KeyType::Int: {
        if (val.empty()) bad();
        char* end = nullptr;
        errno = 0;
        const long long x = std::strtoll(val.c_str(), &end, 10);
        if (errno != 0 || end != val.c_str() + val.size()) bad();
        v.i = x;
        break;
      }
      case KeyType::Float: {
        if (val.empty()) bad();
        char* end = nullptr;
        const double x = std::strtod(val.c_str(), &end);
        if (end != val.c_str() + val.size()) bad();
        SHARDFLOW_REQUIRE_INPUT(std::isfinite(x), at, ": ", full, " = ", val, " is not a finite number");
        v.f = x;
        break;
      }
      case KeyType::Bool:
        if (val == "true")
          v.b = true;
        else if (val == "false")
          v.b = false;
        else
          bad();
        break;
      case KeyType::String:
        if (val.size() >= 2 && (val.front() == '"' || val.front() == '\'') && val.back() == val.front())
          val = val.substr(1, val.size() - 2);
        v.s = val;
        break;
    }
    values_[full] = v;
  }

  Deck build(int world_size) {
    Deck d;
    d.path = source_;
    for (const auto& kv : values_) d.origin[kv.first] = kv.second.where;
    // [mesh]
    get_int("mesh.data", d.mesh.data, 1);
    get_int("mesh.fsdp", d.mesh.fsdp, 1);
    get_int("mesh.tensor", d.mesh.tensor, 1);
    get_int("mesh.pipeline", d.mesh.pipeline, 1);
    get_int("mesh.expert", d.mesh.expert, 1);
    get_int("mesh.context", d.mesh.context, 1);
    // the job's size first: a mesh of the wrong size is the error to report, not what it
    // makes of the batch or the model
    if (world_size > 0) check_world_size(d, world_size);
    // [model]
    if (auto* v = find("model.family")) {
      try {
        d.model.family = parse_model_family(v->s);
      } catch (const InputError& e) {
        throw InputError(v->where + ": " + e.what());
      }
    }
    get_i64("model.kv_heads", d.model.kv_heads, 0);
    if (auto* v = find("model.rope_theta")) {
      SHARDFLOW_REQUIRE_INPUT(std::isfinite(v->f) && v->f > 1, v->where, ": model.rope_theta = ", v->text,
                              " must be a finite number > 1");
      SHARDFLOW_REQUIRE_INPUT(d.model.is_llama(), v->where, ": model.rope_theta = ", v->text,
                              " needs model.family = \"llama\" (the gpt has learned positions)");
      d.model.rope_theta = v->f;
    }
    if (auto* v = find("model.tie_embeddings")) d.model.tie_embeddings = v->b;
    get_i64("model.vocab", d.model.vocab, 1);
    get_i64("model.seq", d.model.seq, 1);
    get_i64("model.hidden", d.model.hidden, 1);
    get_i64("model.heads", d.model.heads, 1);
    get_i64("model.ffn", d.model.ffn, 1);
    get_i64("model.layers", d.model.layers, 1);
    get_i64("model.experts", d.model.experts, 0);
    get_i64("model.top_k", d.model.top_k, 0);
    get_i64("model.moe_every", d.model.moe_every, 0);
    // MoE capacity factor (> 0) and load-balancing coefficient (>= 0); a dense model keeps the defaults
    auto moe_float = [&](const char* key, double& out, double lowest, bool strict, double dflt) {
      const Value* v = find(key);
      if (v == nullptr) return;
      SHARDFLOW_REQUIRE_INPUT(std::isfinite(v->f) && (strict ? v->f > lowest : v->f >= lowest), v->where, ": ", key,
                              " = ", v->text, " must be a finite number ", strict ? "> " : ">= ", lowest);
      SHARDFLOW_REQUIRE_INPUT(d.model.experts > 0 || v->f == dflt, v->where, ": ", key, " = ", v->text,
                              " needs model.experts > 0 (the model is dense with experts = 0)");
      out = v->f;
    };
    moe_float("model.capacity_factor", d.model.capacity_factor, 0.0, true, ModelConfig::default_capacity_factor);
    moe_float("model.aux_loss_coef", d.model.aux_loss_coef, 0.0, false, ModelConfig::default_aux_loss_coef);
    if (auto* v = find("model.attention_dropout")) {
      SHARDFLOW_REQUIRE_INPUT(std::isfinite(v->f) && v->f >= 0 && v->f < 1, v->where,
                              ": model.attention_dropout = ", v->text, " must be a number in [0, 1)");
      d.model.attention_dropout = v->f;
    }
    SHARDFLOW_REQUIRE_INPUT(d.model.hidden % d.model.heads == 0, loc_of("model.heads"),
                            ": model.heads = ", d.model.heads, " does not divide model.hidden = ", d.model.hidden);
    try {
      d.model.validate();
    } catch (const InputError& e) {
      const std::string msg = e.what();
      const bool kv = msg.find("kv_heads") != std::string::npos || msg.find("llama") != std::string::npos;
      const bool tie = msg.find("tie_embeddings") != std::string::npos;
      throw InputError((tie  ? loc_of("model.tie_embeddings")
                        : kv ? loc_of("model.kv_heads", "model.family")
                             : loc_of("model.experts")) +
                       ": " + msg);
    }
    // [train]
    get_i64("train.steps", d.train.steps, 0);
    get_i64("train.global_batch", d.train.global_batch, 1);
    get_i64("train.micro_batches", d.train.micro_batches, 1);
    if (auto* v = find("train.lr")) {
      SHARDFLOW_REQUIRE_INPUT(v->f > 0, v->where, ": train.lr = ", v->text, " must be > 0");
      d.train.lr = v->f;
    }
    get_i64("train.warmup", d.train.warmup, 0);
    get_i64("train.seed", d.train.seed, 0);
    d.train.data = path_value("train.data", "");
    if (auto* v = find("train.memory_limit_gib")) {
      SHARDFLOW_REQUIRE_INPUT(std::isfinite(v->f) && v->f >= 0, v->where, ": train.memory_limit_gib = ", v->text,
                              " must be a finite number >= 0 (0: the node's available memory)");
      d.train.memory_limit_gib = v->f;
    }
    d.train.precision = float_dtype("train.precision", d.train.precision);
    if (auto* v = find("train.loss_scale")) {
      SHARDFLOW_REQUIRE_INPUT(std::isfinite(v->f) && v->f >= 1, v->where, ": train.loss_scale = ", v->text,
                              " must be a finite number >= 1");
      d.train.loss_scale = v->f;
    }
    get_i64("train.loss_scale_window", d.train.loss_scale_window, 1);
    const int64_t dp = d.data_parallel_size();
    SHARDFLOW_REQUIRE_INPUT(d.train.global_batch % (dp * d.train.micro_batches) == 0, loc_of("train.global_batch"),
                            ": train.global_batch = ", d.train.global_batch,
                            " is not divisible by data-parallel size x micro_batches = ", dp, " x ",
                            d.train.micro_batches, " = ", dp * d.train.micro_batches,
                            " (data-parallel size = mesh.data x mesh.fsdp x mesh.expert)");
    // [strategy]
    get_int("strategy.zero_stage", d.strategy.zero_stage, 0);
    if (auto* v = find("strategy.zero_stage"))
      SHARDFLOW_REQUIRE_INPUT(v->i <= 3, v->where, ": strategy.zero_stage = ", v->text, " must be in 0..3");
    get_i64("strategy.fsdp_min_weight_size", d.strategy.fsdp_min_weight_size, 0);
    d.strategy.gather_dtype = float_dtype("strategy.gather_dtype", d.strategy.gather_dtype);
    d.strategy.grad_scatter_dtype = float_dtype("strategy.grad_scatter_dtype", d.strategy.grad_scatter_dtype);
    d.strategy.activation_comm_dtype =
        float_dtype("strategy.activation_comm_dtype", d.strategy.activation_comm_dtype);
    get_int("strategy.prefetch", d.strategy.prefetch, 0);
    if (auto* v = find("strategy.schedule")) {
      if (v->s == "gpipe")
        d.strategy.schedule = PipelineSchedule::GPipe;
      else if (v->s == "1f1b")
        d.strategy.schedule = PipelineSchedule::OneFOneB;
      else
        throw InputError(v->where + ": strategy.schedule = " + v->text + " must be \"gpipe\" or \"1f1b\"");
    }
    if (auto* v = find("strategy.sequence_parallel")) d.strategy.sequence_parallel = v->b;
    if (auto* v = find("strategy.recompute")) {
      if (!recompute_from_name(v->s, &d.strategy.recompute))
        throw InputError(v->where + ": strategy.recompute = " + v->text +
                         " must be \"none\", \"selective\" or \"full\"");
      SHARDFLOW_REQUIRE_INPUT(d.strategy.recompute != Recompute::Full || d.model.experts == 0, v->where,
                              ": strategy.recompute = ", v->text, " is not available for MoE models yet (model.experts = ",
                              d.model.experts, "): their routing and expert dispatch are not re-run (\"selective\" is)");
    }
    get_int("strategy.virtual_stages", d.strategy.virtual_stages, 1);
    if (const Value* v = find("strategy.virtual_stages"); v != nullptr && d.strategy.virtual_stages > 1) {
      const int vs = d.strategy.virtual_stages, p = d.mesh.pipeline;
      SHARDFLOW_REQUIRE_INPUT(p > 1, v->where, ": strategy.virtual_stages = ", vs, " needs mesh.pipeline > 1");
      SHARDFLOW_REQUIRE_INPUT(d.strategy.schedule == PipelineSchedule::OneFOneB, v->where,
                              ": strategy.virtual_stages = ", vs, " interleaves the 1f1b schedule, not ",
                              schedule_name(d.strategy.schedule));
      SHARDFLOW_REQUIRE_INPUT(d.train.micro_batches % p == 0, v->where, ": strategy.virtual_stages = ", vs,
                              " needs train.micro_batches = ", d.train.micro_batches,
                              " to be a multiple of mesh.pipeline = ", p);
      SHARDFLOW_REQUIRE_INPUT(int64_t{p} * vs <= d.model.layers, v->where, ": strategy.virtual_stages = ", vs,
                              ": mesh.pipeline = ", p, " x ", vs, " chunks but only model.layers = ", d.model.layers);
    }
    // [checkpoint]
    d.checkpoint.dir = path_value("checkpoint.dir", d.checkpoint.dir);
    get_i64("checkpoint.every", d.checkpoint.every, 0);
    get_i64("checkpoint.keep", d.checkpoint.keep, 1);
    if (auto* v = find("checkpoint.async")) d.checkpoint.async = v->b;
    if (world_size > 0) check_fits_at_all(d, world_size);
    // The corpus must hold one sequence and its next-token target (MODEL.md's sampler).
    if (!d.train.data.empty()) {
      std::error_code ec;
      const auto bytes = std::filesystem::file_size(d.train.data, ec);
      if (!ec)
        SHARDFLOW_REQUIRE_INPUT(static_cast<int64_t>(bytes) >= d.model.seq + 2, loc_of("model.seq", "train.data"),
                                ": model.seq = ", d.model.seq, " needs a corpus of at least model.seq + 2 = ",
                                d.model.seq + 2, " bytes, but train.data '", d.train.data, "' holds ", bytes);
    }
    // The model must shard on the mesh (tensor <= heads, pipeline <= layers, experts): the
    // layout plan the trainer will use decides.
    {
      const MeshShape shape = d.mesh.to_mesh_shape();
      SHARDFLOW_REQUIRE_INPUT(!(d.strategy.zero_stage == 0 && shape.axis_size_or_1("fsdp") > 1),
                              loc_of("strategy.zero_stage", "mesh.fsdp"), ": mesh.fsdp = ", shape.axis_size_or_1("fsdp"),
                              " shards the model, which needs strategy.zero_stage >= 1 (it is 0)");
    }
    try {
      StrategyOptions so;
      so.zero_stage = d.strategy.zero_stage;
      so.fsdp_min_weight_size = d.strategy.fsdp_min_weight_size;
      parallel::LayoutPlan(ModelDescription(d.model), d.mesh.to_mesh_shape(), so, d.strategy.virtual_stages);
    } catch (const InputError& e) {
      throw InputError(loc_of("mesh.tensor", "mesh.pipeline", "mesh.expert") + ": mesh " +
                       d.mesh.to_mesh_shape().to_string() + " cannot shard model " + d.model.to_string() + ": " +
                       e.what());
    }
    return d;
  }

 private:
  std::string loc(const toml::node& n) const {
    const auto& src = n.source();
    if (src.begin.line == 0) return source_;
    return source_ + ":" + std::to_string(src.begin.line);
  }
  const Value* find(const std::string& key) const {
    auto it = values_.find(key);
    return it == values_.end() ? nullptr : &it->second;
  }
  template <typename... K>
  std::string loc_of(const std::string& key, const K&... more) const {
    if (auto* v = find(key)) return v->where;
    if constexpr (sizeof...(more) > 0) return loc_of(more...);
    return source_;
  }
  /// Where the largest of the integer `keys` is given, --set before the deck (the value
  /// that makes a size absurd is the one to point at); the deck when none is given.
  std::string loc_overridden_first(std::initializer_list<const char*> keys) const {
    for (bool overrides : {true, false}) {
      const Value* best = nullptr;
      for (const char* k : keys)
        if (auto* v = find(k); v && (!overrides || v->where.rfind("--set", 0) == 0) && (!best || v->i > best->i))
          best = v;
      if (best) return best->where;
    }
    return source_;
  }
  // A job whose model cannot fit even fully sharded is refused in O(1), before anything
  // the size of the model (the layout plan's per-layer records, then the buffers) is built:
  // at least 16 bytes a parameter (f32 weight, gradient and two Adam moments) spread over
  // all ranks, against the memory of this node (or train.memory_limit_gib). The trainer's
  // exact check (every buffer of the compiled step) follows once the plan exists.
  void check_fits_at_all(const Deck& d, int world_size) const {
    const double V = static_cast<double>(d.model.vocab), S = static_cast<double>(d.model.seq);
    const double H = static_cast<double>(d.model.hidden), F = static_cast<double>(d.model.ffn);
    const double L = static_cast<double>(d.model.layers);
    const double embed = (V + S) * H, blocks = L * (4 * H * H + 3 * H * F);  // MoE layers hold more
    const double bytes = 16 * (embed + blocks) / world_size;
    double limit = d.train.memory_limit_gib * 1024.0 * 1024.0 * 1024.0;
    if (limit <= 0) limit = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
    if (!(bytes > limit)) return;
    char b[160];
    std::snprintf(b, sizeof b, "%.3g parameters need at least %.3g GiB per rank even fully sharded over the job's %d ranks",
                  embed + blocks, bytes / (1024.0 * 1024.0 * 1024.0), world_size);
    const bool blocks_big = blocks >= embed;
    const std::string keys = blocks_big ? detail::concat("model.layers = ", d.model.layers, ", model.hidden = ",
                                                         d.model.hidden, ", model.ffn = ", d.model.ffn)
                                        : detail::concat("model.vocab = ", d.model.vocab, ", model.seq = ", d.model.seq,
                                                         ", model.hidden = ", d.model.hidden);
    throw InputError(detail::concat(
        blocks_big ? loc_overridden_first({"model.layers", "model.hidden", "model.ffn"})
                   : loc_overridden_first({"model.vocab", "model.hidden", "model.seq"}),
        ": ", keys, ": ", b, " (16 bytes a parameter: f32 weight, gradient, two Adam moments), more than ",
        d.train.memory_limit_gib > 0 ? "train.memory_limit_gib = " : "this node's memory of ",
        limit / (1024.0 * 1024.0 * 1024.0), " GiB"));
  }
  void get_i64(const std::string& key, int64_t& out, int64_t min) {
    if (auto* v = find(key)) {
      SHARDFLOW_REQUIRE_INPUT(v->i >= min, v->where, ": ", key, " = ", v->text, " must be >= ", min);
      out = v->i;
    }
  }
  void get_int(const std::string& key, int& out, int64_t min) {
    int64_t x = out;
    get_i64(key, x, min);
    if (auto* v = find(key))
      SHARDFLOW_REQUIRE_INPUT(x <= INT_MAX, v->where, ": ", key, " = ", v->text, " is too large");
    out = static_cast<int>(x);
  }
  DType float_dtype(const std::string& key, DType def) {
    auto* v = find(key);
    if (!v) return def;
    if (v->s == "f32") return DType::F32;
    if (v->s == "bf16") return DType::BF16;
    if (v->s == "f16") return DType::F16;
    throw InputError(v->where + ": " + key + " = " + v->text + " must be one of \"f32\", \"bf16\", \"f16\"");
  }
  std::string path_value(const std::string& key, const std::string& def) {
    auto* v = find(key);
    if (!v) return def.empty() ? def : resolve(def);
    if (v->s.empty() || !v->from_deck) return v->s;  // --set paths are taken as given
    return resolve(v->s);
  }
  std::string resolve(const std::string& p) const {
    std::filesystem::path path(p);
    if (path.is_absolute()) return path.lexically_normal().string();
    return (std::filesystem::path(base_dir_) / path).lexically_normal().string();
  }

  std::string source_;
  std::string base_dir_;
  std::map<std::string, Value> values_;
};

}  // namespace

std::string schedule_name(PipelineSchedule s) { return s == PipelineSchedule::GPipe ? "gpipe" : "1f1b"; }
std::string recompute_name(Recompute r) {
  return r == Recompute::Full ? "full" : r == Recompute::Selective ? "selective" : "none";
}
bool recompute_from_name(const std::string& name, Recompute* out) {
  for (Recompute r : {Recompute::None, Recompute::Selective, Recompute::Full})
    if (recompute_name(r) == name) {
      *out = r;
      return true;
    }
  return false;
}

MeshShape MeshSection::to_mesh_shape() const {
  // the seeds' path: a ShardingConfig, its ParallelismConfig, that config's mesh; a deck's
  // mesh always has a data axis (of size 1 when nothing else is data parallel)
  ShardingConfig sc;
  sc.data_parallel_size = data;
  sc.fsdp_parallel_size = fsdp;
  sc.tensor_parallel_size = tensor;
  sc.pipeline_parallel_size = pipeline;
  sc.expert_parallel_size = expert;
  sc.context_parallel_size = context;
  ParallelismConfig pc = ParallelismConfig::from_sharding_config(sc);
  if (pc.mesh_axis_names.front() != axis::data) {
    pc.mesh_axis_names.insert(pc.mesh_axis_names.begin(), axis::data);
    pc.mesh_shape.insert(pc.mesh_shape.begin(), 1);
  }
  return pc.to_mesh_shape();
}

Deck deck_from_parallelism_config(const ParallelismConfig& config, const Deck& base) {
  const MeshShape shape = config.to_mesh_shape();  // InputError naming what is wrong
  Deck d = base;
  d.mesh = MeshSection{};
  for (int i = 0; i < shape.ndim(); ++i) {
    const std::string& n = shape.axis_names()[static_cast<size_t>(i)];
    const int s = shape.sizes()[static_cast<size_t>(i)];
    if (n == axis::data) d.mesh.data = s;
    if (n == axis::fsdp) d.mesh.fsdp = s;
    if (n == axis::tensor) d.mesh.tensor = s;
    if (n == axis::pipeline) d.mesh.pipeline = s;
    if (n == axis::expert) d.mesh.expert = s;
    if (n == axis::context) d.mesh.context = s;
  }
  const ShardingConfig& sc = config.sharding_config;
  // FSDP on: ZeRO-3 over the fsdp axis, or over data when there is no fsdp axis
  if (sc.fsdp_enabled && d.strategy.zero_stage == 0) d.strategy.zero_stage = 3;
  d.strategy.fsdp_min_weight_size = sc.fsdp_min_weight_size;
  // every deck rule applies: the same validation as a deck file
  return parse_deck(deck_to_toml(d), "ParallelismConfig(" + shape.to_string() + ")", ".");
}

std::string Deck::where(const std::string& key) const {
  auto it = origin.find(key);
  return it == origin.end() ? (path.empty() ? std::string("<deck>") : path) : it->second;
}

Deck parse_deck(const std::string& text, const std::string& source, const std::string& base_dir,
                const std::vector<std::string>& overrides, int world_size) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& b = e.source().begin;
    throw InputError(detail::concat(source, ":", b.line, ":", b.column, ": TOML syntax error: ", e.description()));
  }
  DeckBuilder builder(source, base_dir);
  builder.read_table(root);
  for (const auto& o : overrides) builder.apply_override(o);
  return builder.build(world_size);
}

Deck load_deck(const std::string& path, const std::vector<std::string>& overrides, int world_size) {
  std::error_code ec;
  SHARDFLOW_REQUIRE_INPUT(!std::filesystem::is_directory(path, ec), "input deck '", path,
                          "' is a directory, not a TOML file");
  std::ifstream in(path, std::ios::binary);
  SHARDFLOW_REQUIRE_INPUT(in.good(), "cannot open input deck '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  return parse_deck(ss.str(), path, dir, overrides, world_size);
}

void check_world_size(const Deck& deck, int world_size) {
  const int n = deck.mesh.size();
  std::string at = deck.path.empty() ? std::string("<deck>") : deck.path;
  for (const char* key : {"mesh.data", "mesh.fsdp", "mesh.pipeline", "mesh.expert", "mesh.context", "mesh.tensor"})
    if (deck.origin.count(key)) {
      at = deck.where(key);
      break;
    }
  SHARDFLOW_REQUIRE_INPUT(n == world_size, at, ": [mesh] ", deck.mesh.to_mesh_shape().to_string(), " has ", n,
                          " devices but the job has ", world_size, " ranks");
}

std::string deck_to_toml(const Deck& d) {
  std::ostringstream os;
  os << "[mesh]\ndata = " << d.mesh.data << "\nfsdp = " << d.mesh.fsdp << "\ntensor = " << d.mesh.tensor
     << "\npipeline = " << d.mesh.pipeline << "\nexpert = " << d.mesh.expert << "\ncontext = " << d.mesh.context
     << "\n\n";
  os << "[model]\nfamily = \"" << model_family_name(d.model.family) << "\"\n";
  if (d.model.is_llama())
    os << "kv_heads = " << d.model.kv_head_count() << "\nrope_theta = " << toml::value<double>(d.model.rope_theta)
       << "\ntie_embeddings = " << (d.model.tie_embeddings ? "true" : "false") << "\n";
  os << "vocab = " << d.model.vocab << "\nseq = " << d.model.seq << "\nhidden = " << d.model.hidden
     << "\nheads = " << d.model.heads << "\nffn = " << d.model.ffn << "\nlayers = " << d.model.layers
     << "\nexperts = " << d.model.experts << "\ntop_k = " << d.model.top_k << "\nmoe_every = " << d.model.moe_every
     << "\ncapacity_factor = " << toml::value<double>(d.model.capacity_factor)
     << "\naux_loss_coef = " << toml::value<double>(d.model.aux_loss_coef)
     << "\nattention_dropout = " << toml::value<double>(d.model.attention_dropout) << "\n\n";
  os << "[train]\nsteps = " << d.train.steps << "\nglobal_batch = " << d.train.global_batch
     << "\nmicro_batches = " << d.train.micro_batches << "\nlr = " << toml::value<double>(d.train.lr)
     << "\nwarmup = " << d.train.warmup << "\nseed = " << d.train.seed
     << "\ndata = " << toml::value<std::string>(d.train.data)
     << "\nmemory_limit_gib = " << toml::value<double>(d.train.memory_limit_gib) << "\nprecision = \""
     << dtype_name(d.train.precision) << "\"\nloss_scale = " << toml::value<double>(d.train.loss_scale)
     << "\nloss_scale_window = " << d.train.loss_scale_window << "\n\n";
  os << "[strategy]\nzero_stage = " << d.strategy.zero_stage
     << "\nfsdp_min_weight_size = " << d.strategy.fsdp_min_weight_size << "\ngather_dtype = \""
     << dtype_name(d.strategy.gather_dtype) << "\"\ngrad_scatter_dtype = \""
     << dtype_name(d.strategy.grad_scatter_dtype) << "\"\nactivation_comm_dtype = \""
     << dtype_name(d.strategy.activation_comm_dtype) << "\"\nprefetch = " << d.strategy.prefetch << "\nschedule = \""
     << schedule_name(d.strategy.schedule) << "\"\nvirtual_stages = " << d.strategy.virtual_stages
     << "\nsequence_parallel = " << (d.strategy.sequence_parallel ? "true" : "false") << "\nrecompute = \""
     << recompute_name(d.strategy.recompute) << "\"\n\n";
  os << "[checkpoint]\ndir = " << toml::value<std::string>(d.checkpoint.dir) << "\nevery = " << d.checkpoint.every
     << "\nkeep = " << d.checkpoint.keep << "\nasync = " << (d.checkpoint.async ? "true" : "false") << "\n";
  return os.str();
}

}  // namespace shardflow
