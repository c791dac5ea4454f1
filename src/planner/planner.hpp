#pragma once
// The planner behind `shardflow plan`: recommends a mesh (DeviceMeshManager's transformer
// rule), lists every parameter's default partition spec on the mesh, and estimates the
// memory per device for plain data parallelism and ZeRO-1/2/3.
//
// Layouts (the parameter rows) come from parallel::LayoutPlan, the layout decider the trainer
// uses. For a deck (`shardflow plan DECK`), the memory rows count exactly the f32 buffers
// the trainer allocates on rank 0 for each ZeRO stage on the deck's mesh (the same numbers
// as `train --summary`'s memory_bytes_rank0). For a model given by size:
// Model states follow the ZeRO paper for mixed-precision Adam (K = 12): fp16 parameters
// 2Ψ, fp16 gradients 2Ψ, fp32 master weights + momentum + variance 12Ψ, so with N
// data-parallel ranks: DP 16Ψ, ZeRO-1 4Ψ + 12Ψ/N, ZeRO-2 2Ψ + 14Ψ/N, ZeRO-3 16Ψ/N.
// For a concrete model on a mesh, Ψ is counted exactly per rank from the layouts (the
// rank holding the most), with the data and fsdp axes merged into one ZeRO group of N.
//
// Activations (Korthikanti et al. 2022, 2-byte activations, no recomputation), per layer
// and micro-batch of b sequences of length s, hidden h, a heads, tensor parallel t:
//   no tensor parallelism      s·b·h·(34 + 5·a·s/h)
//   tensor parallel t          s·b·h·(10 + 24/t + 5·a·s/(h·t))
//   + sequence parallel        s·b·h·(34 + 5·a·s/h) / t
// times the layers of the first stage (ceil(L/p)) times the micro-batches it holds at
// once: 1 without pipelining, min(p, m) with 1F1B, m with GPipe (m micro-batches).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/deck.hpp"
#include "strategy/device_mesh_manager.hpp"
#include "model/model_description.hpp"

namespace shardflow {

/// Model-state bytes per device for ZeRO stage 0 (plain DP) .. 3 with Ψ parameters on n ranks.
double zero_model_state_bytes(double psi, int64_t n, int stage);

/// Activation bytes of one layer for one micro-batch, 16-bit activations (Korthikanti et
/// al. 2022, Table 2): without recomputation s·b·h·(34 + 5as/h), with tensor parallelism
/// s·b·h·(10 + 24/t + 5as/(ht)), with sequence parallelism too s·b·h·(34 + 5as/h)/t;
/// selective recomputation drops the 5as/h term; full keeps only the layer input, 2·s·b·h
/// (divided by t under sequence parallelism).
double layer_activation_bytes(int64_t seq, int64_t micro_batch, int64_t hidden, int64_t heads, int tensor,
                              bool sequence_parallel, Recompute recompute = Recompute::None);

struct PlanInput {
  ModelConfig model;
  std::string model_label;  // "deck", "7B (LLaMA-like)", ...
  int devices = 1;
  int gpus_per_node = 8;
  double memory_per_device_gib = 80.0;
  std::optional<MeshShape> mesh;  // use this mesh instead of the recommended one
  StrategyOptions options;
  int64_t micro_batch_size = 1;
  int64_t micro_batches = 1;
  PipelineSchedule schedule = PipelineSchedule::OneFOneB;
  bool sequence_parallel = false;
  Recompute recompute = Recompute::None;
  bool all_layers = false;  // list layers.{l} parameters of every layer, not only layer 0
  int virtual_stages = 1;
  /// The deck's own configuration: memory rows count the trainer's f32 buffers exactly (from
  /// the LayoutPlan the trainer uses), for rank 0 like `train --summary`'s memory_bytes_rank0.
  /// Otherwise (a model given by size) the rows are the ZeRO paper's mixed-precision estimate.
  bool exact_state = false;
  /// The deck itself (plan_input): on its own mesh, each row's activations are its compiled
  /// step's, rank 0 (what `train --summary` reports as memory_bytes_rank0.activations).
  std::optional<Deck> deck;
};

struct PlanParam {
  std::string name;
  Shape shape;
  std::string kind;
  Shape view_shape;
  std::string spec;
  std::string pinned;  // "stage 2" or ""
  Shape max_local_view_shape;
  std::string rule;
};

struct PlanMemory {
  std::string strategy;  // "DP", "ZeRO-1", ...
  int stage = 0;
  bool configured = false;       // the deck's own zero_stage
  std::string accounting;        // "f32 trainer buffers, rank 0" or "mixed-precision Adam (ZeRO paper), largest rank"
  double max_rank_state = 0;     // largest params + grads + optimizer over the ranks
  double params = 0, grads = 0, optimizer = 0, activations = 0;  // bytes per device (max over ranks)
  double total() const { return params + grads + optimizer + activations; }
  /// A deck on its own mesh: what `train --summary` reports as memory_predicted_peak_bytes
  /// (compile::predict_peak, a fresh run with sync saves) for the ranks listed (every rank
  /// up to 64 ranks, else rank 0 only).
  std::vector<int> predicted_peak_ranks;
  std::vector<int64_t> predicted_peak_bytes;
};

struct Plan {
  PlanInput input;
  TransformerMeshPlan recommendation;
  MeshShape mesh;  // the mesh the specs and memory are for
  int64_t parameter_count = 0;
  int64_t zero_group = 1;  // N: data x fsdp
  std::vector<PlanParam> params;
  std::vector<PlanMemory> memory;
};

/// Builds the plan; throws InputError when the model cannot be sharded on the mesh.
/// The planner's input for a deck: its model, mesh, ZeRO stage, fsdp_min_weight_size,
/// micro-batching, schedule and sequence parallelism (model_label "deck").
PlanInput plan_input(const Deck& deck);
Plan make_plan(const PlanInput& input);
std::string plan_to_text(const Plan& plan);
/// A JSON object (nlohmann-json, 2-space indent).
std::string plan_to_json(const Plan& plan);
/// A MODEL.md-shaped model with LLaMA-like sizes for a model size ("7B", "350M", "2e9").
ModelConfig llama_like_model(const std::string& model_size, int64_t seq);
/// Parses "data=4,tensor=2" into a MeshShape (InputError naming the text otherwise).
MeshShape parse_mesh_text(const std::string& text);

}  // namespace shardflow
