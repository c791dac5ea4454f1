#pragma once
// What `shardflow train` puts into a checkpoint, shared by `train` and `ckpt reshard`.
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "config/deck.hpp"
#include "comm/mesh.hpp"
#include "train/trainer.hpp"

namespace shardflow::app {

/// The trainer's parameters and AdamW moments as checkpoint tensors (this rank's boxes).
std::vector<ckpt::TensorState> checkpoint_tensors(train::Trainer& trainer);

/// Step, data position, seed, model sizes, world size, loss, the deck (TOML), the mesh, and
/// each parameter's MODEL.md shape ("model_shape:<name>", which `ckpt consolidate` uses).
/// With train.precision = f16 also the loss scale's state (loss_scale, loss_scale_clean_steps,
/// skipped_steps).
ckpt::Metadata checkpoint_metadata(const Deck& deck, const Mesh& mesh, train::Trainer& trainer, double loss);

/// Continues the trainer from restored metadata: its step and, for an f16 run from an f16
/// checkpoint, the loss scale (a checkpoint of another precision leaves the deck's start).
void restore_trainer_state(train::Trainer& trainer, const ckpt::Metadata& meta);

}  // namespace shardflow::app

namespace shardflow::app {
/// `shardflow ckpt reshard DIR OUT --set k=v ...`: restores the checkpoint DIR (a root or a
/// step directory) onto the layouts of its own deck with the overrides applied (another mesh,
/// another ZeRO stage ...), on this job's ranks (their number must match the new mesh), and
/// saves it as a new checkpoint root OUT. Collective.
void reshard_checkpoint(const std::string& dir, const std::string& out, const std::vector<std::string>& overrides);
}  // namespace shardflow::app
