// `shardflow ckpt inspect DIR | verify DIR | consolidate DIR OUT.h5 | reshard DIR OUT
// [--set key=value]...`: look into, check, flatten and re-layout sharded checkpoints. DIR
// is a checkpoint root (its `latest` is used) or a step directory. verify spreads the
// shards over the ranks when run under mpiexec; reshard runs on the new mesh's ranks.
#include <mpi.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "ckpt/tools.hpp"
#include "comm/comm_set.hpp"
#include "command.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "mesh/mesh.hpp"
#include "train/trainer.hpp"

namespace {

struct CkptArgs {
  std::string dir, out;
  bool all = false;
  std::vector<std::string> overrides;
};

/// Reads the checkpoint's deck, applies the overrides (typically [mesh] and [strategy]),
/// builds the training state's layouts for that deck on this job's ranks, restores the
/// checkpoint into them (the gather path) and saves it under `out` with the new layouts.
int run_reshard(const CkptArgs& a) {
  using namespace shardflow;
  const int rank = app::world_rank();
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  std::string text, dir, err;
  if (rank == 0) {
    try {
      dir = ckpt::resolve_checkpoint_dir(a.dir);
      ckpt::Manifest m = ckpt::read_manifest(dir);
      auto it = m.meta.strings.find("deck");
      SHARDFLOW_REQUIRE_INPUT(it != m.meta.strings.end(), "ckpt reshard: checkpoint ", dir,
                              " carries no deck (metadata string 'deck'); it was not saved by shardflow train");
      text = it->second;
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  int ok = err.empty(), all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!all_ok) throw InputError(err.empty() ? "ckpt reshard: rank 0 could not read the checkpoint" : err);
  for (std::string* s : {&text, &dir}) {
    long long n = static_cast<long long>(s->size());
    MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
    s->resize(static_cast<size_t>(n));
    MPI_Bcast(s->data(), static_cast<int>(n), MPI_CHAR, 0, MPI_COMM_WORLD);
  }
  Deck deck = parse_deck(text, dir + "/manifest.json (deck)", ".", a.overrides);
  check_world_size(deck, world);
  Mesh mesh(deck.mesh.to_mesh_shape());
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  train::Trainer trainer(deck, mesh, comms);
  std::vector<ckpt::TensorState> ts;
  for (auto& t : trainer.state_tensors()) ts.push_back({t.name, t.layout, DType::F32, t.data});
  ckpt::Metadata meta = ckpt::restore(mesh.world(), dir, ts);
  meta.strings["deck"] = deck_to_toml(deck);
  meta.strings["mesh"] = mesh.shape().to_string();
  meta.ints["world_size"] = world;
  ckpt::Checkpointer out(mesh.world(), a.out);
  const std::string written = out.save(ts, meta);
  if (rank == 0)
    std::printf("resharded %s (step %lld) onto %s: %s\n", dir.c_str(), static_cast<long long>(meta.step),
                mesh.shape().to_string().c_str(), written.c_str());
  return 0;
}

shardflow::app::CommandRegistration reg(
    "ckpt", "inspect, verify, consolidate or reshard a sharded checkpoint", [](CLI::App& sub) {
      auto args = std::make_shared<CkptArgs>();
      sub.require_subcommand(1);
      CLI::App* inspect = sub.add_subcommand("inspect", "print the step, metadata, tensors, layouts and shards");
      inspect->add_option("dir", args->dir, "checkpoint root or step directory")->required();
      CLI::App* verify = sub.add_subcommand(
          "verify", "check every checksum, every dataset, and that every tensor is covered exactly once");
      verify->add_option("dir", args->dir, "checkpoint root or step directory")->required();
      CLI::App* cons = sub.add_subcommand(
          "consolidate", "write one HDF5 file with one f32 dataset per parameter at its full MODEL.md shape (plus metadata)");
      cons->add_option("dir", args->dir, "checkpoint root or step directory")->required();
      cons->add_option("out", args->out, "output .h5 file")->required();
      cons->add_flag("--all", args->all, "also write the optimizer moments (model checkpoints write parameters only)");
      CLI::App* resh = sub.add_subcommand(
          "reshard", "rewrite a checkpoint for another mesh/strategy (run with the new mesh's number of ranks)");
      resh->add_option("dir", args->dir, "checkpoint root or step directory (saved by shardflow train)")->required();
      resh->add_option("out", args->out, "new checkpoint root")->required();
      resh->add_option("--set", args->overrides, "deck override key=value, e.g. mesh.data=2 (repeatable)");
      return [args, inspect, verify, cons, resh]() -> int {
        if (resh->parsed()) return run_reshard(*args);
        const int rank = shardflow::app::world_rank();
        if (inspect->parsed()) {
          std::string text = shardflow::ckpt::describe(args->dir);
          if (rank == 0) std::fputs(text.c_str(), stdout);
          return 0;
        }
        if (verify->parsed()) {
          shardflow::ckpt::VerifyReport r = shardflow::ckpt::verify(MPI_COMM_WORLD, args->dir);
          if (rank == 0) {
            for (const auto& p : r.problems) std::fprintf(stdout, "PROBLEM: %s\n", p.c_str());
            std::fprintf(stdout, "%s: %s (%lld tensors, %lld shards, %lld blocks, %lld bytes checked)\n", r.dir.c_str(),
                         r.ok() ? "OK" : "FAILED", static_cast<long long>(r.tensors), static_cast<long long>(r.shards),
                         static_cast<long long>(r.blocks), static_cast<long long>(r.bytes));
          }
          return r.ok() ? 0 : 1;
        }
        shardflow::ckpt::consolidate(MPI_COMM_WORLD, args->dir, args->out, args->all);
        if (rank == 0) std::printf("wrote %s\n", args->out.c_str());
        return 0;
      };
    });

}  // namespace
