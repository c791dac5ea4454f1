// The seeds' three examples (JAX/Artifex "Quick Start", "Tensor Parallel Setup",
// "Multi-Dimensional Parallelism"), written with the same class names in C++, each training
// the reference GPT for a few steps:
//
//   mpiexec -n 2 build/release/apps/seed_examples quick_start    inputs/quickstart.toml
//   mpiexec -n 2 build/release/apps/seed_examples tensor_parallel inputs/quickstart.toml
//   mpiexec -n 4 build/release/apps/seed_examples multi_dim      inputs/quickstart.toml
//
// The deck gives the model, the data and the optimizer. The parallelism comes from the
// ShardingConfig / ParallelismConfig built here. Each example also trains the same
// configuration written as a deck file's [mesh] and [strategy] and checks that the losses
// agree bitwise: the seed classes are the path the deck takes too. Exit 0 when the loss falls
// and both paths agree.
#include <Kokkos_Core.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "comm/comm_set.hpp"
#include "comm/control.hpp"
#include "config/deck.hpp"
#include "core/blas.hpp"
#include "core/error.hpp"
#include "comm/mesh.hpp"
#include "strategy/device_mesh_manager.hpp"
#include "strategy/sharding_config.hpp"
#include "strategy/sharding_strategy.hpp"
#include "train/trainer.hpp"

using namespace shardflow;

namespace {

std::vector<double> train_steps(const Deck& deck, int steps) {
  Mesh mesh(deck.mesh.to_mesh_shape(), MPI_COMM_WORLD);
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  train::Trainer trainer(deck, mesh, comms);
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) losses.push_back(trainer.train_step().loss);
  return losses;
}

// Quick Start: data parallelism over every device.
ParallelismConfig quick_start(int devices) {
  ShardingConfig sharding;
  sharding.data_parallel_size = devices;
  ParallelismConfig config = ParallelismConfig::from_sharding_config(sharding);
  DataParallelStrategy dp("data");  // the batch is split on the data axis
  (void)dp.get_partition_spec({"batch", "sequence", "hidden"});
  return config;
}

// Tensor Parallel Setup: Artifex names the tensor axis "model".
ParallelismConfig tensor_parallel(int devices) {
  ParallelismConfig config;
  config.mesh_shape = {devices};
  config.mesh_axis_names = {"model"};
  config.sharding_config.tensor_parallel_size = devices;
  return config;
}

// Multi-Dimensional Parallelism: data x tensor, with FSDP (ZeRO-3) over the data axis.
ParallelismConfig multi_dim(int devices) {
  ShardingConfig sharding;
  sharding.data_parallel_size = devices / 2;
  sharding.tensor_parallel_size = 2;
  sharding.fsdp_enabled = true;
  sharding.fsdp_min_weight_size = 1024;
  ParallelismConfig config = ParallelismConfig::from_sharding_config(sharding);
  DeviceMeshManager manager;
  const MeshShape shape = manager.create_mesh_from_config(config);  // validates names and sizes
  SHARDFLOW_REQUIRE_INPUT(shape.size() == devices, "multi_dim: mesh ", shape.to_string(), " for ", devices, " devices");
  return config;
}

// The same configuration as deck keys.
std::vector<std::string> as_deck_keys(const std::string& example, int devices) {
  if (example == "quick_start") return {"mesh.data=" + std::to_string(devices)};
  if (example == "tensor_parallel") return {"mesh.data=1", "mesh.tensor=" + std::to_string(devices)};
  return {"mesh.data=" + std::to_string(devices / 2), "mesh.tensor=2", "strategy.zero_stage=3"};
}

}  // namespace

int main(int argc, char** argv) {
  ensure_best_blas_kernel(argc, argv);  // may re-execute: before MPI_Init
  comm::mpi_init(argc, argv);
  Kokkos::initialize(argc, argv);
  int rc = 0;
  {
    const int rank = comm::world_rank(), devices = comm::Control::world().size();
    try {
      SHARDFLOW_REQUIRE_INPUT(argc == 3, "usage: seed_examples quick_start|tensor_parallel|multi_dim DECK");
      const std::string example = argv[1];
      ParallelismConfig config;
      if (example == "quick_start")
        config = quick_start(devices);
      else if (example == "tensor_parallel")
        config = tensor_parallel(devices);
      else if (example == "multi_dim")
        config = multi_dim(devices);
      else
        throw InputError("seed_examples: unknown example '" + example + "'");
      const int steps = 10;
      const Deck base = load_deck(argv[2], {"train.steps=10"});
      const Deck deck = deck_from_parallelism_config(config, base);
      const std::vector<double> losses = train_steps(deck, steps);
      const std::vector<double> from_deck = train_steps(load_deck(argv[2], as_deck_keys(example, devices)), steps);
      bool same = losses == from_deck;
      if (rank == 0) {
        std::printf("%s on %s (zero_stage %d): loss %.4f -> %.4f over %d steps; deck path %s\n", example.c_str(),
                    deck.mesh.to_mesh_shape().to_string().c_str(), deck.strategy.zero_stage, losses.front(),
                    losses.back(), steps, same ? "bitwise equal" : "DIFFERS");
      }
      if (!same || !(losses.back() < losses.front())) rc = 1;
    } catch (const std::exception& e) {
      if (rank == 0) std::fprintf(stderr, "seed_examples: error: %s\n", e.what());
      rc = 2;
    }
  }
  Kokkos::finalize();
  comm::mpi_finalize();
  return rc;
}
