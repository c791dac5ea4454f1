#pragma once
// Shared by the resume tests: run a deck for a range of steps on a sub-group of the world,
// restoring from and saving to checkpoints, and return the losses of the steps run.
#include <gtest/gtest.h>
#include <mpi.h>

#include <filesystem>
#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "comm/comm_set.hpp"
#include "config/deck.hpp"
#include "comm/mesh.hpp"
#include "support/test_util.hpp"
#include "train/trainer.hpp"

namespace shardflow::test {

/// The trainer's state tensors (parameters, optimizer moments) as checkpoint tensors.
inline std::vector<ckpt::TensorState> checkpoint_states(train::Trainer& t) {
  std::vector<ckpt::TensorState> ts;
  for (auto& s : t.state_tensors()) ts.push_back({s.name, s.layout, DType::F32, s.data});
  return ts;
}

/// What one run does: the deck (TOML text and a name for messages), how many of the world's
/// ranks it uses, the steps it runs, and the checkpoints it reads and writes.
struct ResumeRun {
  std::string deck_text;
  std::string name;
  int ranks = 1;
  int from_step = 0;        // > 0: restore `restore_dir` first (it must hold this step)
  int to_step = 0;          // run steps from_step + 1 .. to_step
  std::string restore_dir;  // read when from_step > 0
  std::string save_dir;     // when not empty: save after step `save_at`
  int save_at = 0;
};

/// Runs r on the first r.ranks ranks of the world (the others only take part in the
/// communicator split) and returns the losses of the steps run (rank 0 of the sub-job has
/// them; broadcast to the world).
inline std::vector<double> run_resumable(const ResumeRun& r) {
  const int me = world_rank();
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, me < r.ranks ? 0 : 1, me, &sub);
  std::vector<double> losses(static_cast<size_t>(r.to_step - r.from_step), 0.0);
  if (me < r.ranks) {
    Deck deck = parse_deck(r.deck_text, r.name);
    Mesh mesh(deck.mesh.to_mesh_shape(), sub);
    comm::CommSet comms(mesh, comm::Backend::Mpi);
    train::Trainer t(deck, mesh, comms);
    if (r.from_step > 0) {
      auto meta = ckpt::restore(mesh.world(), r.restore_dir, checkpoint_states(t));
      EXPECT_EQ(meta.step, r.from_step) << r.name;
      t.set_step(meta.step);
    }
    for (int s = r.from_step; s < r.to_step; ++s) {
      losses[static_cast<size_t>(s - r.from_step)] = t.train_step().loss;
      if (!r.save_dir.empty() && t.step() == r.save_at) {
        ckpt::Checkpointer cp(mesh.world(), r.save_dir);
        ckpt::Metadata meta;
        meta.step = t.step();
        cp.save(checkpoint_states(t), meta);
      }
    }
  }
  MPI_Bcast(losses.data(), static_cast<int>(losses.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  MPI_Comm_free(&sub);
  return losses;
}

/// An empty scratch directory `<TempDir>/<prefix>_<world size>_<tag>` (rank 0 clears it).
inline std::string fresh_scratch_dir(const std::string& prefix, const std::string& tag) {
  std::string d = ::testing::TempDir() + "/" + prefix + "_" + std::to_string(world_size()) + "_" + tag;
  if (world_rank() == 0) std::filesystem::remove_all(d);
  MPI_Barrier(MPI_COMM_WORLD);
  return d;
}

}  // namespace shardflow::test
