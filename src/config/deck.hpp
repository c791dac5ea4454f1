#pragma once
// The input deck: a TOML file with the sections [mesh], [model], [train], [strategy] and
// [checkpoint] (docs/strategies.md has the key table). Every key has a default; unknown
// sections and keys, wrong types and bad values are InputErrors that name the key, the
// value and the deck's file:line. `--set section.key=value` overrides any key; the value is
// parsed with the key's type.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "mesh/mesh_shape.hpp"
#include "strategy/sharding_config.hpp"
#include "model/model_config.hpp"

namespace shardflow {

struct MeshSection {
  int data = 1;
  int fsdp = 1;
  int tensor = 1;
  int pipeline = 1;
  int expert = 1;
  int context = 1;
  int size() const { return data * fsdp * tensor * pipeline * expert * context; }
  /// Axes data, fsdp, pipeline, expert, context, tensor with size > 1 (data always, even of size 1).
  MeshShape to_mesh_shape() const;
};

struct TrainSection {
  int64_t steps = 200;
  int64_t global_batch = 16;
  int64_t micro_batches = 1;
  double lr = 3e-3;
  int64_t warmup = 20;
  int64_t seed = 1234;
  /// The corpus file; a relative path in the deck is resolved against the deck's directory.
  std::string data;
  /// Memory one rank may use, GiB; 0: the node's available memory (MemAvailable) shared by
  /// the ranks on the node. A step whose compiled buffers exceed it is refused up front.
  double memory_limit_gib = 0;
  /// Mixed precision: F32 (everything in f32), BF16 or F16: every matmul operand and the
  /// kept activations qkv, probs, att, gu, h in that 16-bit type, f32 accumulation, f32
  /// master weights, gradients and optimizer state (docs/memory.md).
  DType precision = DType::F32;
  /// F16 only: the dynamic loss scale's start; it halves on a step whose gradients are not
  /// finite (the step is skipped) and doubles after loss_scale_window clean steps.
  double loss_scale = 65536;
  int64_t loss_scale_window = 1000;
};

enum class PipelineSchedule { GPipe, OneFOneB };
std::string schedule_name(PipelineSchedule s);
/// Activation recomputation: none keeps every activation of a layer for its backward;
/// selective keeps everything but the attention probabilities and recomputes them (the
/// attention core, from the kept q, k, v) right before the attention backward (Korthikanti
/// et al. 2022); full keeps only the layer's input and re-runs its forward (and its
/// tensor/sequence-parallel collectives) at the start of its backward (Megatron's full).
enum class Recompute { None, Selective, Full };
std::string recompute_name(Recompute r);
/// The Recompute that recompute_name gives `name` ("none", "selective", "full"); false for
/// any other name.
bool recompute_from_name(const std::string& name, Recompute* out);

struct StrategySection {
  int zero_stage = 0;
  int64_t fsdp_min_weight_size = 1024;
  DType gather_dtype = DType::F32;
  DType grad_scatter_dtype = DType::F32;
  /// The wire dtype of the activations and their gradients that tensor parallelism moves
  /// (the partial-sum all-reduces and reduce-scatters, the sequence-parallel all-gathers).
  DType activation_comm_dtype = DType::F32;
  int prefetch = 1;
  PipelineSchedule schedule = PipelineSchedule::OneFOneB;
  /// Virtual stages per pipeline rank: > 1 interleaves the 1f1b schedule (layers in
  /// mesh.pipeline × virtual_stages chunks, chunk c on stage c mod pipeline).
  int virtual_stages = 1;
  bool sequence_parallel = false;
  Recompute recompute = Recompute::None;
};

struct CheckpointSection {
  std::string dir = "checkpoints";  // resolved against the deck's directory when relative
  int64_t every = 0;                // 0: only at the end
  int64_t keep = 2;
  bool async = false;
};

struct Deck {
  std::string path;  // the deck file ("" for text parsed without a file)
  MeshSection mesh;
  ModelConfig model;
  TrainSection train;
  StrategySection strategy;
  CheckpointSection checkpoint;
  /// "section.key" → where its value came from ("deck.toml:12" or "--set train.lr=...").
  std::map<std::string, std::string> origin;

  /// Where `key` ("section.key") was set, or the deck path when it was left at its default.
  std::string where(const std::string& key) const;
  /// Data-parallel size: data × fsdp × expert (every such rank takes its own batch slice).
  int64_t data_parallel_size() const { return int64_t{mesh.data} * mesh.fsdp * mesh.expert; }
  /// Sequences per micro-batch on one rank.
  int64_t micro_batch_size() const { return train.global_batch / (data_parallel_size() * train.micro_batches); }
};

/// The deck `base` on the mesh of a ParallelismConfig (the seeds' API: Quick Start, Tensor
/// Parallel Setup, Multi-Dimensional Parallelism). sharding_config.fsdp_enabled selects
/// ZeRO-3 when base's zero_stage is 0, and fsdp_min_weight_size is taken from it. The result
/// is validated like a deck file (InputError naming the key and the value).
Deck deck_from_parallelism_config(const ParallelismConfig& config, const Deck& base);

/// Reads and validates a deck file. Overrides are "section.key=value". With world_size > 0
/// the mesh must have that many devices (check_world_size), checked before anything else
/// is validated.
Deck load_deck(const std::string& path, const std::vector<std::string>& overrides = {}, int world_size = 0);
/// Parses deck text; `source` names it in errors, relative paths resolve against base_dir.
Deck parse_deck(const std::string& text, const std::string& source, const std::string& base_dir = ".",
                const std::vector<std::string>& overrides = {}, int world_size = 0);
/// Throws InputError when the deck's mesh does not have exactly world_size devices,
/// naming the mesh, both numbers and the deck's [mesh] location.
void check_world_size(const Deck& deck, int world_size);
/// The deck as TOML text (every key, with its effective value).
std::string deck_to_toml(const Deck& deck);

}  // namespace shardflow
