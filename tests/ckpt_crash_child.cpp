// Helper for test_ckpt_crash and the CLI tests: saves a synthetic state (values depend on
// the step) into DIR. `loop` saves forever, continuing after the newest committed step
// (the test kills it with SIGKILL at random moments); `once STEP` saves one checkpoint.
// Element g of tensor t at step s is ckpt_child_value(t, s, g).
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "ckpt_crash_model.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  if (argc < 3) {
    std::fprintf(stderr, "usage: ckpt_crash_child DIR loop [async] | DIR once STEP\n");
    return 2;
  }
  using namespace shardflow;
  const std::string dir = argv[1];
  const std::string mode = argv[2];
  try {
    ckpt::SaveOptions o;
    o.keep = 2;
    o.block_bytes = 64 << 10;
    o.async = mode == "loop" && argc > 3 && std::strcmp(argv[3], "async") == 0;
    ckpt::Checkpointer ck(MPI_COMM_SELF, dir, o);
    std::int64_t step = 0;
    if (mode == "once") {
      step = std::atoll(argv[3]);
    } else {
      auto done = ckpt::list_checkpoints(dir);
      if (!done.empty()) step = std::atoll(std::filesystem::path(done.back()).filename().string().substr(5).c_str()) + 1;
    }
    auto tensors = test_model::tensors();
    for (;; ++step) {
      std::vector<std::vector<float>> bufs;
      std::vector<ckpt::TensorState> ts;
      for (size_t t = 0; t < tensors.size(); ++t) {
        bufs.push_back(test_model::values(t, step));
      }
      for (size_t t = 0; t < tensors.size(); ++t)
        ts.push_back(ckpt::TensorState{tensors[t].first, Layout::replicated(tensors[t].second, MeshShape()), DType::F32,
                                       bufs[t].data()});
      ckpt::Metadata m;
      m.step = step;
      m.ints["data_position"] = step * 1000;
      m.strings["deck"] = "[train]\nsteps = 100\n";
      ck.save(ts, m);
      if (mode == "once") break;
    }
    ck.wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckpt_crash_child: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return 0;
}
