#include "train_state.hpp"

#include <map>

#include "comm/control.hpp"
#include "comm/comm_set.hpp"
#include "core/error.hpp"
#include "model/model_description.hpp"

namespace shardflow::app {

std::vector<ckpt::TensorState> checkpoint_tensors(train::Trainer& trainer) {
  std::vector<ckpt::TensorState> ts;
  for (auto& t : trainer.state_tensors()) ts.push_back({t.name, t.layout, DType::F32, t.data});
  return ts;
}

ckpt::Metadata checkpoint_metadata(const Deck& deck, const Mesh& mesh, train::Trainer& trainer, double loss) {
  ckpt::Metadata meta;
  meta.step = trainer.step();
  meta.ints["data_position"] = trainer.step();  // the loader is counter-based: the next step's index
  meta.ints["seed"] = deck.train.seed;
  for (const auto& kv : std::map<std::string, int64_t>{{"model.vocab", deck.model.vocab},
                                                       {"model.seq", deck.model.seq},
                                                       {"model.hidden", deck.model.hidden},
                                                       {"model.heads", deck.model.heads},
                                                       {"model.kv_heads", deck.model.kv_head_count()},
                                                       {"model.ffn", deck.model.ffn},
                                                       {"model.layers", deck.model.layers},
                                                       {"world_size", mesh.size()}})
    meta.ints[kv.first] = kv.second;
  meta.reals["loss"] = loss;
  if (deck.train.precision == DType::F16) {  // dynamic loss scaling continues where it was
    const auto ls = trainer.loss_scale_state();
    meta.reals["loss_scale"] = ls.scale;
    meta.ints["loss_scale_clean_steps"] = ls.clean_steps;
    meta.ints["skipped_steps"] = ls.skipped_steps;
  }
  meta.strings["deck"] = deck_to_toml(deck);
  meta.strings["mesh"] = mesh.shape().to_string();
  // Every trained parameter with its shape in the model description (MODEL.md's [out, in];
  // it may be saved over a view of it, e.g. qkv as [3, A, D, H]).
  const ModelDescription desc(deck.model);
  for (const auto& n : trainer.parameter_names()) meta.strings["model_shape:" + n] = shape_to_string(desc.param(n).shape);
  return meta;
}

void restore_trainer_state(train::Trainer& trainer, const ckpt::Metadata& meta) {
  trainer.set_step(meta.step);
  auto scale = meta.reals.find("loss_scale");
  if (scale == meta.reals.end()) return;
  train::LossScaleState ls;
  ls.scale = scale->second;
  auto clean = meta.ints.find("loss_scale_clean_steps");
  auto skipped = meta.ints.find("skipped_steps");
  ls.clean_steps = clean == meta.ints.end() ? 0 : clean->second;
  ls.skipped_steps = skipped == meta.ints.end() ? 0 : skipped->second;
  trainer.set_loss_scale_state(ls);
}

}  // namespace shardflow::app

namespace shardflow::app {

void reshard_checkpoint(const std::string& dir, const std::string& out, const std::vector<std::string>& overrides) {
  const std::string step_dir = ckpt::resolve_checkpoint_dir(dir);
  const auto manifest = ckpt::read_manifest(step_dir);
  auto it = manifest.meta.strings.find("deck");
  SHARDFLOW_REQUIRE_INPUT(it != manifest.meta.strings.end(), "checkpoint ", step_dir,
                          " has no deck in its metadata: it was not written by `shardflow train`");
  const int world = comm::Control::world().size();
  const Deck deck = parse_deck(it->second, step_dir + "/manifest.json (deck)", ".", overrides, world);
  Mesh mesh(deck.mesh.to_mesh_shape());
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  train::Trainer trainer(deck, mesh, comms);  // its layouts are the target layouts
  ckpt::RestoreOptions ro;
  ro.in_place = true;  // fresh buffers (initial values only): nothing to keep on a failure
  const auto meta = ckpt::restore(mesh.world(), step_dir, checkpoint_tensors(trainer), ro);
  restore_trainer_state(trainer, meta);
  const double loss = meta.reals.count("loss") ? meta.reals.at("loss") : 0.0;
  ckpt::Checkpointer cp(mesh.world(), out);
  cp.save(checkpoint_tensors(trainer), checkpoint_metadata(deck, mesh, trainer, loss));
}

}  // namespace shardflow::app
