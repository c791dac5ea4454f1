#pragma once
// Subcommands of the `shardflow` app register themselves here: each apps/<cmd>.cpp
// defines a static CommandRegistration that adds its CLI11 subcommand and a runner.
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace shardflow::app {

struct Command {
  std::string name;
  /// Adds the subcommand's options to `sub`; returns the function that runs it (exit code).
  std::function<std::function<int()>(CLI::App& sub)> setup;
  std::string description;
  /// false: the subcommand runs without MPI when the process is alone (not one of several
  /// ranks started by mpiexec or srun): no MPI_Init, so it starts in milliseconds and works
  /// where MPI cannot start (a login node). It calls ensure_mpi() before it needs MPI.
  bool needs_mpi = true;
};

std::vector<Command>& commands();

struct CommandRegistration {
  CommandRegistration(std::string name, std::string description, std::function<std::function<int()>(CLI::App&)> setup,
                      bool needs_mpi = true) {
    commands().push_back(Command{std::move(name), std::move(setup), std::move(description), needs_mpi});
  }
};

/// World rank (0 before MPI is up).
int world_rank();

/// Starts MPI if main() did not (a subcommand registered with needs_mpi = false that reaches
/// a collective part, e.g. simulate --cluster local calibrating on first use). It may
/// re-execute the whole process first (comm::mpi_init sets UCX_MEM_EVENTS), so call it
/// before printing anything.
void ensure_mpi();

}  // namespace shardflow::app
