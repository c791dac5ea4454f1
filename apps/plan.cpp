// `shardflow plan [DECK] [options]`: the recommended mesh, every parameter's partition
// spec, and the memory per device for DP and ZeRO-1/2/3 (docs/strategies.md).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "command.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "planner/planner.hpp"

namespace {

struct PlanOptions {
  std::string deck;
  std::vector<std::string> sets;
  int devices = 0;
  int gpus_per_node = 8;
  double memory_gib = 80.0;
  std::string model_size;
  std::string params;
  int64_t vocab = 0, seq = 0, hidden = 0, heads = 0, ffn = 0, layers = 0;
  std::string mesh;
  int zero_stage = -1;
  int64_t micro_batch_size = 0;
  int64_t micro_batches = 0;
  std::string recompute;
  bool sequence_parallel = false;
  bool all_layers = false;
  bool json = false;
};

int run_plan(const PlanOptions& o) {
  using namespace shardflow;
  SHARDFLOW_REQUIRE_INPUT(o.model_size.empty() || o.params.empty(), "plan: give either --model ", o.model_size,
                          " or --params ", o.params, ", not both");
  SHARDFLOW_REQUIRE_INPUT(o.deck.empty() || (o.model_size.empty() && o.params.empty()), "plan: a deck (", o.deck,
                          ") already describes the model; drop --model/--params");
  SHARDFLOW_REQUIRE_INPUT(o.sets.empty() || !o.deck.empty(), "plan: --set needs a deck");
  PlanInput in;
  if (!o.deck.empty()) {
    in = plan_input(load_deck(o.deck, o.sets));
    in.model_label = "deck " + o.deck;
  } else if (!o.model_size.empty() || !o.params.empty()) {
    const std::string size = o.model_size.empty() ? o.params : o.model_size;
    in.model = llama_like_model(size, o.seq > 0 ? o.seq : 2048);
    in.model_label = size + " (LLaMA-like)";
    in.devices = 8;
  } else {
    in.model = ModelConfig::quickstart();
    in.model_label = "quickstart";
    in.devices = 1;
  }
  if (o.vocab > 0) in.model.vocab = o.vocab;
  if (o.seq > 0) in.model.seq = o.seq;
  if (o.hidden > 0) in.model.hidden = o.hidden;
  if (o.heads > 0) in.model.heads = o.heads;
  if (o.ffn > 0) in.model.ffn = o.ffn;
  if (o.layers > 0) in.model.layers = o.layers;
  if (o.devices != 0) {
    SHARDFLOW_REQUIRE_INPUT(o.devices >= 1, "plan: --devices ", o.devices, " must be >= 1");
    if (in.mesh && in.mesh->size() != o.devices) in.mesh.reset();  // the deck's mesh does not fit: recommend one
    in.devices = o.devices;
  }
  if (!o.mesh.empty()) {
    in.mesh = parse_mesh_text(o.mesh);
    SHARDFLOW_REQUIRE_INPUT(o.devices == 0 || in.mesh->size() == o.devices, "plan: --mesh ", o.mesh, " has ",
                            in.mesh->size(), " devices but --devices is ", o.devices);
    in.devices = in.mesh->size();
  }
  in.gpus_per_node = o.gpus_per_node;
  in.memory_per_device_gib = o.memory_gib;
  if (o.zero_stage >= 0) in.options.zero_stage = o.zero_stage;
  if (o.micro_batch_size > 0) in.micro_batch_size = o.micro_batch_size;
  if (o.micro_batches > 0) in.micro_batches = o.micro_batches;
  in.all_layers = o.all_layers;
  if (!o.recompute.empty()) {
    SHARDFLOW_REQUIRE_INPUT(o.deck.empty(), "plan: --recompute is for a model given by size; for a deck use --set "
                                            "strategy.recompute=", o.recompute);
    SHARDFLOW_REQUIRE_INPUT(recompute_from_name(o.recompute, &in.recompute), "plan: --recompute ", o.recompute,
                            " must be none, selective or full");
  }
  if (o.sequence_parallel) {
    SHARDFLOW_REQUIRE_INPUT(o.deck.empty(), "plan: --sequence-parallel is for a model given by size; for a deck use "
                                            "--set strategy.sequence_parallel=true");
    in.sequence_parallel = true;
  }
  Plan plan = make_plan(in);
  if (shardflow::app::world_rank() == 0) {
    const std::string text = o.json ? plan_to_json(plan) + "\n" : plan_to_text(plan);
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  }
  return 0;
}

shardflow::app::CommandRegistration reg(
    "plan", "recommend a mesh and show partition specs and memory per device (DP, ZeRO-1/2/3)",
    [](CLI::App& sub) {
      auto o = std::make_shared<PlanOptions>();
      sub.add_option("deck", o->deck, "input deck (TOML); its model, mesh and strategy are planned");
      sub.add_option("--set", o->sets, "override a deck key: section.key=value (repeatable)");
      sub.add_option("--devices", o->devices, "number of devices (default: the deck's mesh, else 8 for --model)");
      sub.add_option("--gpus-per-node", o->gpus_per_node, "devices per node (tensor parallelism stays inside one)");
      sub.add_option("--memory-per-device", o->memory_gib, "memory per device in GiB");
      sub.add_option("--model", o->model_size, "LLaMA-like model: 7B, 13B, 30B, 65B, 70B or any size like 350M");
      sub.add_option("--params", o->params, "LLaMA-like model with this many parameters (e.g. 7.5e9)");
      sub.add_option("--vocab", o->vocab, "vocabulary size V");
      sub.add_option("--seq", o->seq, "sequence length S (default 2048 for --model/--params)");
      sub.add_option("--hidden", o->hidden, "hidden size H");
      sub.add_option("--heads", o->heads, "attention heads A");
      sub.add_option("--ffn", o->ffn, "MLP inner size F");
      sub.add_option("--layers", o->layers, "layers L");
      sub.add_option("--mesh", o->mesh, "use this mesh instead of the recommended one, e.g. data=4,tensor=2");
      sub.add_option("--zero-stage", o->zero_stage, "ZeRO stage 0..3 for the partition specs");
      sub.add_option("--micro-batch-size", o->micro_batch_size, "sequences per micro-batch (activation memory)");
      sub.add_option("--recompute", o->recompute,
                     "activation recomputation for a model given by size: none, selective, full (activation memory)");
      sub.add_flag("--sequence-parallel", o->sequence_parallel,
                   "sequence parallelism for a model given by size (activation memory)");
      sub.add_option("--micro-batches", o->micro_batches, "micro-batches per step (activation memory)");
      sub.add_flag("--all-layers", o->all_layers, "list the parameters of every layer, not only layers.{l}");
      sub.add_flag("--json", o->json, "print a JSON object");
      return [o]() { return run_plan(*o); };
    },
    /*needs_mpi=*/false);

}  // namespace
