// `shardflow calibrate [--output FILE] [--quick]`: measures this machine (the GEMM rate by size
// through the model's gemm path, memory bandwidth, the elementwise kernels, and, under
// mpiexec -n 2 or more, the MPI link between ranks 0 and 1) and writes a cluster file
// (default: the path `--cluster local` reads, sim/calibrate.hpp).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <mpi.h>

#include "command.hpp"
#include "core/error.hpp"
#include "sim/calibrate.hpp"

namespace {

struct CalibrateOptions {
  std::string output;
  bool quick = false;
};

int run_calibrate(const CalibrateOptions& o) {
  using namespace shardflow;
  const std::string path = o.output.empty() ? sim::local_cluster_path() : o.output;
  sim::CalibrationOptions co;
  co.quick = o.quick;
  const std::string text = sim::calibrate_local(MPI_COMM_WORLD, co);
  if (app::world_rank() == 0) {
    const std::filesystem::path p(path);
    std::error_code ec;
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
    std::ofstream f(path);
    SHARDFLOW_REQUIRE_INPUT(f.good(), "calibrate: cannot write ", path);
    f << text;
    SHARDFLOW_REQUIRE_INPUT(f.good(), "calibrate: writing ", path, " failed");
    std::printf("%s\nwritten to %s\n", text.c_str(), path.c_str());
    std::fflush(stdout);
  }
  return 0;
}

shardflow::app::CommandRegistration reg(
    "calibrate", "measure this machine (GEMM, memory, MPI link) and write the cluster file `--cluster local` uses",
    [](CLI::App& sub) {
      auto o = std::make_shared<CalibrateOptions>();
      sub.add_option("--output", o->output, "where to write (default: $SHARDFLOW_CLUSTERS/local.toml or ~/.cache/shardflow/local.toml)");
      sub.add_flag("--quick", o->quick, "fewer repetitions");
      return [o]() { return run_calibrate(*o); };
    });

}  // namespace
