// `shardflow ckpt inspect DIR | verify DIR | consolidate DIR OUT.h5`: look into, check and
// flatten sharded checkpoints. DIR is a checkpoint root (its `latest` is used) or a step
// directory. verify spreads the shards over the ranks when run under mpiexec.
#include <mpi.h>

#include <cstdio>
#include <memory>
#include <string>

#include "ckpt/checkpoint.hpp"
#include "ckpt/tools.hpp"
#include "command.hpp"
#include "train_state.hpp"

namespace {

struct CkptArgs {
  std::string dir, out;
  bool all = false;
  std::vector<std::string> overrides;
};

shardflow::app::CommandRegistration reg(
    "ckpt", "inspect, verify or consolidate a sharded checkpoint", [](CLI::App& sub) {
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
      CLI::App* reshard = sub.add_subcommand(
          "reshard", "rewrite a checkpoint for another mesh or strategy (run on the new mesh's number of ranks)");
      reshard->add_option("dir", args->dir, "checkpoint root or step directory")->required();
      reshard->add_option("out", args->out, "new checkpoint root")->required();
      reshard->add_option("--set", args->overrides, "deck overrides, e.g. mesh.data=1 mesh.fsdp=4 strategy.zero_stage=3")
          ->take_all();
      return [args, inspect, verify, cons, reshard]() -> int {
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
        if (reshard->parsed()) {
          shardflow::app::reshard_checkpoint(args->dir, args->out, args->overrides);
          if (rank == 0) std::printf("resharded %s into %s\n", args->dir.c_str(), args->out.c_str());
          return 0;
        }
        shardflow::ckpt::consolidate(MPI_COMM_WORLD, args->dir, args->out, args->all);
        if (rank == 0) std::printf("wrote %s\n", args->out.c_str());
        return 0;
      };
    });

}  // namespace
