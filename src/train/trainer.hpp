#pragma once
// Trainer: compiles (deck, mesh, strategy) into this rank's task graph for one training
// step of the reference GPT (MODEL.md) and runs it step after step.
//
// Data parallelism runs over the mesh axes `data` and `fsdp` (the "dp group"); every dp
// rank takes its contiguous slice of the global batch and splits it into
// train.micro_batches micro-batches. strategy.zero_stage selects what is sharded over the
// "shard group" (the fsdp axis when the mesh has one of size > 1, else the data axis):
//   0  DP      parameters, gradients and optimizer state replicated; gradients all-reduced
//              (mean over the dp group) as soon as each layer's last backward is done.
//   1  ZeRO-1  optimizer state sharded: each rank updates its shard, then all-gathers the
//              parameters.
//   2  ZeRO-2  + gradients reduce-scattered (mean) into shards.
//   3  ZeRO-3 / FSDP  + parameters sharded at rest and all-gathered per layer (in
//              strategy.gather_dtype) ahead of use with strategy.prefetch layers of
//              look-ahead, freed after use (a ring of prefetch + 1 buffers); gradients
//              reduce-scattered per micro-batch (in strategy.grad_scatter_dtype).
// With both data and fsdp axes (HSDP) the shards are over fsdp and the sharded gradients
// are additionally all-reduced (mean) over data. Tensors with fewer than
// strategy.fsdp_min_weight_size elements stay replicated. ZeRO splits one dimension of the
// parameter's view shape (ModelDescription) with the project's uneven rule, so every shard
// is one box of the view, stored row-major.
//
// The other axes (docs/parallelism.md): `tensor` (Megatron tensor parallelism: head-aware
// qkv, rowwise attn.out / mlp.down followed by tensor all-reduces, vocabulary-parallel
// embedding and cross-entropy; with strategy.sequence_parallel the residual stream is split
// by token rows with all-gather / reduce-scatter around each block), `pipeline` (layers in
// stages, strategy.schedule gpipe or 1f1b over train.micro_batches, interleaved 1f1b with
// strategy.virtual_stages > 1; activations and their gradients as send/recv comm tasks,
// receives posted as early as their buffers allow) and `expert` (mixture-of-experts layers:
// experts split over the axis, all_to_allv dispatch and return; the axis is also a batch
// axis; with `tensor` each expert's FFN is split on F like the dense MLP). Any combination
// composes in the one graph.
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm_set.hpp"
#include "config/deck.hpp"
#include "graph/executor.hpp"
#include "graph/task_graph.hpp"
#include "layout/layout.hpp"
#include "comm/mesh.hpp"

namespace shardflow::train {

struct StepStats {
  int64_t step = 0;         // 1-based step just completed
  double loss = 0;          // mean cross-entropy over the global batch (+ aux_loss for MoE)
  double aux_loss = 0;      // MoE load-balancing loss (mean over the batch's sequences), 0 when dense
  int64_t dropped = 0;      // MoE expert choices dropped by the capacity rule this step
  double step_time_s = 0;   // wall time of the step on this rank
  double compute_s = 0;     // inside compute tasks
  double comm_wait_s = 0;   // waiting on communication with nothing to compute
  double tokens_per_s = 0;  // global tokens / step time
  double grad_norm = 0;     // global L2 norm before clipping (of the unscaled gradients)
  double loss_scale = 1;    // train.precision = f16: the loss scale this step used (else 1)
  bool skipped = false;     // f16: the gradients were not finite, no update (the scale halved)
};

/// Dynamic loss scaling's state (train.precision = f16), kept in checkpoints so that a
/// resumed run continues exactly.
struct LossScaleState {
  double scale = 1;
  int64_t clean_steps = 0;    // clean steps since the scale last changed
  int64_t skipped_steps = 0;  // steps skipped for non-finite gradients, in all
};

/// A tensor of the training state as this rank holds it: its layout over the mesh and
/// the local box's data (row-major), for checkpoints.
struct StateTensor {
  std::string name;  // parameter name, or "<name>.adam_m" / "<name>.adam_v"
  Layout layout;
  float* data = nullptr;
  int64_t numel = 0;  // local elements (box numel)
};

struct MemoryStats {
  int64_t params = 0, grads = 0, optimizer = 0;  // persistent bytes this rank holds
  int64_t transient = 0;                         // gather/reduce buffers, staging
  int64_t activations = 0;                       // saved activations and backward scratch
  int64_t model_state() const { return params + grads + optimizer; }
};

class Trainer {
 public:
  /// Builds the graph and initialises the parameters from the deck's seed. Collective over
  /// the mesh. Throws InputError for a deck this mesh or strategy cannot run.
  Trainer(const Deck& deck, const Mesh& mesh, comm::CommSet& comms);
  /// With evaluate = true the step is the forwards and the loss only (no gradients, no
  /// update; the deck's train.data is not read): use evaluate(), not train_step().
  Trainer(const Deck& deck, const Mesh& mesh, comm::CommSet& comms, bool evaluate);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  /// Runs the next step (1, 2, ...). Collective.
  StepStats train_step();
  /// The summed cross-entropy of the model on one global batch (train.global_batch
  /// sequences of model.seq tokens, row-major; every rank passes the whole batch and takes
  /// its slice), without changing anything. Collective. Needs a trainer built to evaluate.
  double evaluate(const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets);
  /// Steps completed.
  int64_t step() const;
  /// Sets the number of completed steps (after restoring a checkpoint).
  void set_step(int64_t completed);
  /// The loss scale's state (scale 1 and no counts unless train.precision = f16).
  LossScaleState loss_scale_state() const;
  /// Continues from a saved state (after restoring a checkpoint of an f16 run); ignored
  /// unless this run is f16.
  void set_loss_scale_state(const LossScaleState& s);

  /// The whole parameter `name` on every rank (collective over the mesh).
  std::vector<float> gather_parameter(const std::string& name);
  /// Parameter names in MODEL.md order.
  std::vector<std::string> parameter_names() const;

  /// Parameters and AdamW moments as this rank holds them (for checkpoints): the layout of
  /// each and a pointer to the local data, which stays valid for the trainer's lifetime.
  std::vector<StateTensor> state_tensors();

  graph::TaskGraph& graph();
  graph::Executor& executor();
  MemoryStats memory() const;
  /// The most bytes the framework held at once since this trainer was constructed (Kokkos
  /// allocations and checkpoint staging, core/memory.hpp; what other code in the process
  /// allocated meanwhile counts too), or -1 when a Kokkos tools library owns the callbacks.
  int64_t measured_peak_bytes() const;
  /// With train.memory_limit_gib set: throws InputError on every rank (collective) when the
  /// measured peak has passed it, naming the largest parts and a configuration that fits.
  void check_measured_memory() const;
  /// The same, predicted from the compiled step (compile::predict_peak): the buffers and
  /// staging, plus the largest of initialisation, a staged restore's copy of the state
  /// (staged_restore; `train --resume` restores in place) and an async save's snapshot (its
  /// bytes: ckpt::save_bytes of the saved tensors; 0 for sync saves).
  int64_t predicted_peak_bytes(bool staged_restore, int64_t async_snapshot_bytes) const;
  /// Model FLOPs of one step (forward + backward over the global batch).
  double model_flops_per_step() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardflow::train
