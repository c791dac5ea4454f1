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
};

std::vector<Command>& commands();

struct CommandRegistration {
  CommandRegistration(std::string name, std::string description,
                      std::function<std::function<int()>(CLI::App&)> setup) {
    commands().push_back(Command{std::move(name), std::move(setup), std::move(description)});
  }
};

/// World rank (0 before MPI is up).
int world_rank();

}  // namespace shardflow::app
