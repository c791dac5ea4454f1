#pragma once
// StepShape: what one rank of one mesh computes in a training step, derived from the deck,
// the LayoutPlan and the rank alone (no MPI, no memory: any rank of any mesh). The step
// compiler (compile/compiler.hpp) emits its tasks from it, the trainer sizes its kernels'
// operands from it, and `shardflow compile` prints it.
//
// Nomenclature
//   chunk         a run of layers of a pipeline stage (LayoutPlan::layer_chunk); this rank
//                 runs its stage's v chunks, chunk vc being global chunk vc·p + stage.
//   act slot      one micro-batch's activations of a chunk, alive from its forward to its
//                 backward; a chunk with `slots` act slots uses [slot_base, slot_base + slots)
//                 of the rank's act slots (compile::in_flight decides how many).
//   gather ring   ZeRO-3: prefetch + 1 buffers, each holding one unit's gathered parameters
//                 (a parameter at offset `ring_offset` of its unit).
//   grad ring     ZeRO-3: 2 buffers for one unit's full gradients before their reduce-scatter.
//   box           a parameter as this rank holds it after the tensor and expert splits (lext
//                 at loff of the view); ZeRO splits view dim dz of the box, seen as [O, R, I],
//                 into rows [r0, r0 + nr).
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "compile/schedule.hpp"
#include "config/deck.hpp"
#include "core/dtype.hpp"
#include "layout/layout.hpp"
#include "parallel/layout_plan.hpp"

namespace shardflow::compile {

/// One parameter as this rank holds it.
struct ParamShape {
  std::string name;
  Shape shape, view;
  int dt = -1;       // view dim split over tensor (-1: replicated over tensor)
  Shape lext, loff;  // the box of the view after the tensor and expert splits
  int64_t lnumel = 0;
  bool decay = false;
  bool gain = false;    // norm gain
  /// Replicated over tensor with a gradient that is a partial sum over tensor (all-reduced
  /// there): a norm gain under sequence parallelism, or a key/value weight whose kv heads
  /// the tensor split cannot align with the query heads (kv_heads_aligned).
  bool tensor_partial = false;
  bool expert = false;  // an expert weight [E, ...]
  /// Its gradient is final once the layer's backward has passed its MLP half (the MLP norm
  /// gain, the MLP's or the experts' and router's weights): its sync can start while the
  /// attention half's backward runs.
  bool mlp_half = false;
  int de = -1;          // view dim split over expert
  int unit = 0, stage = 0;
  bool here = true;      // this rank's pipeline stage holds it
  bool zero_split = false;  // ZeRO splits it (zero_dim >= 0)
  int dz = -1;
  int64_t O = 1, R = 1, I = 1, r0 = 0, nr = 0;
  int64_t ring_offset = -1;  // ZeRO-2/3: offset in its unit's grad ring (and ZeRO-3 gather ring) buffer
  int64_t shard_numel() const { return O * nr * I; }
  /// The parameter is stored as its ZeRO shard (ZeRO-3 and zero_split).
  bool shard_stored(int zero) const { return zero == 3 && zero_split; }
  /// Its gradient is held only as its ZeRO shard (ZeRO-2 and 3, zero_split): the backward
  /// writes the full gradient into the grad ring, whose reduce-scatter adds it into the shard.
  bool grad_shard_stored(int zero) const { return zero >= 2 && zero_split; }
};

struct ChunkShape {
  int gc = 0;                          // global chunk index
  int layer_begin = 0, layer_end = 0;  // its layers [begin, end)
  int slots = 1, slot_base = 0;        // its act slots
};

/// Train: forward, backward, gradient sync, optimizer. Evaluate: the forwards and the loss
/// only (`shardflow eval`: the same block program, no gradients).
enum class StepMode : uint8_t { Train, Evaluate };

struct StepShape {
  int rank = 0, world = 1;
  bool evaluate = false;  // StepMode::Evaluate
  MeshShape mesh;
  parallel::AxisGroups groups;
  // model
  int64_t vocab = 0, seq = 0, hidden = 0, heads = 0, head_dim = 0, ffn = 0;
  bool llama = false;        // model.family = llama: RoPE, grouped-query attention, no position table
  int64_t kv_heads = 0;      // K (= heads for the gpt)
  double rope_theta = 10000.0;
  bool tied = false;         // model.tie_embeddings: the head is embed.weight
  int layers = 0;
  int64_t experts = 0, top_k = 0, moe_every = 0;
  double attention_dropout = 0;  // in training (0 when evaluating)
  bool moe_layer(int l) const { return experts > 0 && moe_every > 0 && (l + 1) % moe_every == 0; }
  // strategy
  int zero = 0, prefetch = 1;
  DType gather_dtype = DType::F32, scatter_dtype = DType::F32;
  DType act_comm_dtype = DType::F32;  // strategy.activation_comm_dtype (tensor-parallel activations)
  PipelineSchedule schedule = PipelineSchedule::OneFOneB;
  // tensor / sequence parallel
  int tp = 1, tc = 0;
  bool sp = false;
  Recompute recompute = Recompute::None;  // strategy.recompute (None in evaluation steps)
  DType precision = DType::F32;            // train.precision (matmul operands, kept activations)
  int64_t A_l = 0, H_l = 0, F_l = 0, V_l = 0, v0 = 0;  // local heads, head columns, ffn, vocab slice
  int64_t a0 = 0;           // first local head
  int64_t K_l = 0, k0 = 0;  // local key/value heads [k0, k0 + K_l) (all K when replicated over tensor)
  /// Columns of the local q|k|v activation: (A_l + 2·K_l) · D (3·H_l for the gpt).
  int64_t qkv_cols() const { return (A_l + 2 * K_l) * head_dim; }
  // expert parallel
  int ep = 1, ec = 0;
  int64_t E_l = 0, e0 = 0;        // this rank's experts [e0, e0 + E_l)
  std::vector<int> expert_owner;  // expert -> expert coordinate
  // pipeline
  int pp = 1, stage = 0;
  bool first_stage = true, last_stage = true;
  int vstages = 1, nchunks = 1;
  int mb_group = 0;                // micro-batches per round of the interleaved order (0: pp; CompileOptions::mb_group)
  std::vector<ChunkShape> chunks;  // this rank's, by virtual stage
  std::vector<int> layer_chunk;    // global layer -> global chunk
  std::vector<int> local_layer;    // global layer -> local layer index (-1: on another stage)
  int total_slots = 1;
  std::vector<PipelineStep> order;  // this stage's schedule
  int slot_of(int vc, int mb) const {
    const ChunkShape& c = chunks[static_cast<size_t>(vc)];
    return c.slot_base + mb % c.slots;
  }
  // context parallel: the sequence of every micro-batch is split into 2·cp chunks of
  // seq / (2·cp) positions; context rank cc holds chunks cc and 2·cp − 1 − cc (load balance
  // for causal attention), seq_local = seq / cp positions of each of its sequences
  int cp = 1, cc = 0;
  int64_t seq_local = 0;
  // batch
  int64_t global_batch = 0, micro = 1, mb_seqs = 1, local_seqs = 1, tokens_mb = 1;  // tokens_mb = mb_seqs · seq_local
  int64_t Tr = 0, t0 = 0;  // residual-stream rows this rank holds: [t0, t0 + Tr) of tokens_mb
  // data-parallel groups
  int sample_size = 1;  // ranks the global batch's sequences are split over (samples)
  int dp_size = 1, dpx_size = 1, shard_size = 1, shard_index = 0, repl_size = 1, replx_size = 1;
  // parameters, in ModelDescription order
  std::vector<ParamShape> params;
  std::unordered_map<std::string, int> index;  // name -> params index (hashed: 768 names of a 128-layer model)
  std::vector<std::vector<int>> units;  // unit -> parameter indices
  int64_t ring_numel = 0;               // ZeRO-2/3: one ring buffer (the largest unit on this rank)
  const ParamShape& param(const std::string& n) const { return params[static_cast<size_t>(index.at(n))]; }
};

/// Which parameters a shape describes: every parameter of the model (what the trainer and
/// its checkpoints use), only its pipeline stage's (`here`: all that the step's program and
/// its buffers use; the simulator's shapes), or none (params, index, units and ring_numel
/// left empty: take_params moves them in from another shape of the same rank and plan).
enum class ShapeParams { All, Stage, None };

/// The strategy options of a deck (zero stage, fsdp_min_weight_size) as the LayoutPlan takes them.
StrategyOptions strategy_options(const Deck& deck);

/// Rank `rank`'s step. `plan` must be the deck's (LayoutPlan(ModelDescription(deck.model),
/// mesh, strategy_options(deck), deck.strategy.virtual_stages)). Throws InputError naming
/// the deck key and value when the step cannot be built (batch not divisible, ...).
/// `params`: which parameters it describes (ShapeParams); `mb_group`: micro-batches per round
/// of an interleaved schedule (CompileOptions::mb_group).
StepShape make_step_shape(const Deck& deck, const parallel::LayoutPlan& plan, int rank, StepMode mode = StepMode::Train,
                          ShapeParams params = ShapeParams::All, int mb_group = 0);

/// Moves `from`'s parameters into `to` (the simulator's shape of the deck for its memory
/// figure, from the program it compiled with fewer micro-batches). They depend only on the
/// rank and the plan (its mesh, splits and ZeRO stage), never on the batch or the schedule;
/// the two shapes must be of the same rank, tensor and expert coordinates and ZeRO shard.
void take_params(StepShape& to, StepShape&& from);

}  // namespace shardflow::compile
