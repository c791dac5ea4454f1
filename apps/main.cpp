// shardflow: the command-line front end. Every subcommand runs under MPI (a singleton
// without mpiexec/srun), except those registered with needs_mpi = false (simulate, plan,
// report, version), which start MPI only when launched as one of several ranks or when
// they reach a collective part (ensure_mpi). Errors are printed once (by rank 0, or by the
// failing rank when rank 0 did not fail) and every rank exits non-zero; when only some ranks
// failed, the job is aborted so that no rank hangs waiting for one that already failed.
#include <mpi.h>

#include "core/blas.hpp"
#include "core/process.hpp"
#include "core/threads.hpp"

#include <Kokkos_Core.hpp>
#include <chrono>
#include <cstdio>
#include <thread>

#include "command.hpp"
#include "comm/control.hpp"
#include "core/error.hpp"

namespace shardflow::app {

std::vector<Command>& commands() {
  static std::vector<Command> c;
  return c;
}

int world_rank() { return comm::world_rank(); }

namespace {
int g_argc = 0;
char** g_argv = nullptr;

// The subcommand named on the command line (the first argument that is not an option), if
// it is registered.
const Command* named_command(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (argv[i][0] == '-') continue;
    for (const auto& c : commands())
      if (c.name == argv[i]) return &c;
    return nullptr;
  }
  return nullptr;
}
}  // namespace

void ensure_mpi() {
  if (!comm::mpi_up()) comm::mpi_init(g_argc, g_argv);
}
}  // namespace shardflow::app

int main(int argc, char** argv) {
  using namespace shardflow;
  shardflow::ensure_best_blas_kernel(argc, argv);  // may re-execute: before MPI_Init
  app::g_argc = argc;
  app::g_argv = argv;
  const app::Command* named = app::named_command(argc, argv);
  const bool without_mpi = (named == nullptr || !named->needs_mpi) && !comm::launched_as_one_of_many();
  if (!without_mpi) {
    try {
      comm::mpi_init(argc, argv);
    } catch (const std::exception& e) {  // no MPI: this process is alone with its error
      std::fprintf(stderr, "shardflow: error: %s\n", e.what());
      return 1;
    }
  }
  shardflow::limit_blas_threads();
  const int rank = app::world_rank();
  CLI::App cli{"shardflow: sharded large-model training on MPI ranks (Kokkos kernels, MPI/NCCL collectives)"};
  cli.require_subcommand(1);
  std::function<int()> runner;
  for (auto& c : app::commands()) {
    CLI::App* sub = cli.add_subcommand(c.name, c.description);
    auto make = c.setup;
    auto run_holder = std::make_shared<std::function<int()>>();
    *run_holder = make(*sub);
    sub->callback([run_holder, &runner] { runner = *run_holder; });
  }
  int rc = 0;
  bool failed = false;
  std::string message;
  try {
    try {
      cli.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      if (rank == 0) rc = cli.exit(e);
      else rc = e.get_exit_code();
      comm::mpi_finalize();
      return rc;
    }
    Kokkos::initialize(argc, argv);
    try {
      rc = runner ? runner() : 0;
    } catch (...) {
      Kokkos::finalize();
      throw;
    }
    Kokkos::finalize();
  } catch (const std::exception& e) {
    failed = true;
    message = e.what();
  }
  if (failed) {
    bool collective = comm::all_ranks_arrive(3.0);
    if (rank == 0 || !collective) {
      if (collective) std::fprintf(stderr, "shardflow: error: %s\n", message.c_str());
      else std::fprintf(stderr, "shardflow: error on rank %d: %s\n", rank, message.c_str());
      std::fflush(stderr);
    }
    if (!collective) comm::mpi_abort(1);
    comm::mpi_finalize();
    shardflow::keep_output_open_past_exit();
    return 1;
  }
  comm::mpi_finalize();
  if (rc != 0) shardflow::keep_output_open_past_exit();  // so that mpiexec reports it
  return rc;
}
