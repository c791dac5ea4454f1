// bench_memory: what each ZeRO stage holds per rank against the ZeRO paper's formulas,
// and the measured allocation peak against the compiled step's prediction (issue 12), on
// a deck (default inputs/bench.toml) with the ZeRO group over `data` on every rank.
//  - model state (params + grads + AdamW moments, f32) per rank, the largest rank, over
//    DP's, next to (8 + 8/N)/16, (4 + 12/N)/16 and 1/N;
//  - memory_measured_peak (core/memory.hpp) and memory_predicted_peak (compile::predict_peak)
//    of the largest rank, after a few steps;
//  - #wrong: a stage more than 0.01 off its formula, or a prediction more than 10 % off.
//
//   mpiexec -n N bench_memory [deck] [--set k=v ...] [--steps S]
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm_set.hpp"
#include "comm/control.hpp"
#include "comm/mesh.hpp"
#include "config/deck.hpp"
#include "core/blas.hpp"
#include "core/threads.hpp"
#include "bench_deck_args.hpp"
#include "train/trainer.hpp"

using namespace shardflow;

int main(int argc, char** argv) {
  ensure_best_blas_kernel(argc, argv);  // may re-execute: first thing
  comm::mpi_init(argc, argv);
  limit_blas_threads();
  Kokkos::initialize(argc, argv);
  int rc = 0;
  try {
    int steps = 2;
    const perf::DeckArgs args = perf::parse_deck_args(argc, argv, SHARDFLOW_BENCH_DECK, {{"--steps", &steps}});
    const std::string& deck_path = args.deck;
    const comm::Control control = comm::Control::world();
    const int n = control.size();
    double state[4] = {0, 0, 0, 0}, measured[4] = {0, 0, 0, 0}, predicted[4] = {0, 0, 0, 0};
    std::string model;
    for (int z = 0; z <= 3; ++z) {
      std::vector<std::string> s = args.sets;
      s.push_back("mesh.data=" + std::to_string(n));
      s.push_back("strategy.zero_stage=" + std::to_string(z));
      s.push_back("strategy.fsdp_min_weight_size=0");  // the paper's accounting shards every tensor
      const Deck deck = load_deck(deck_path, s, n);
      model = deck.model.to_string();
      Mesh mesh(deck.mesh.to_mesh_shape());
      comm::CommSet comms(mesh, comm::Backend::Mpi);
      train::Trainer t(deck, mesh, comms);
      for (int k = 0; k < steps; ++k) t.train_step();
      state[z] = control.max(static_cast<double>(t.memory().model_state()));
      measured[z] = control.max(static_cast<double>(t.measured_peak_bytes()));
      predicted[z] = control.max(static_cast<double>(t.predicted_peak_bytes(false, 0)));
    }
    const double want[4] = {1.0, (8 + 8.0 / n) / 16, (4 + 12.0 / n) / 16, 1.0 / n};
    long wrong = 0;
    if (control.rank() == 0) {
      std::printf("# bench_memory: %s | data=%d, ZeRO over data | %s | f32 AdamW, fsdp_min_weight_size 0 | %d steps\n",
                  deck_path.c_str(), n, model.c_str(), steps);
      std::printf("# %-6s %14s %9s %9s %16s %16s %9s\n", "stage", "state_B", "vs_DP", "paper", "measured_peak_B",
                  "predicted_peak_B", "pred/meas");
    }
    for (int z = 0; z <= 3; ++z) {
      const double ratio = state[z] / state[0], pm = predicted[z] / measured[z];
      const bool bad = std::fabs(ratio - want[z]) > 0.01 || !(std::fabs(pm - 1) <= 0.10);
      wrong += bad;
      if (control.rank() == 0)
        std::printf("  ZeRO-%d %14.0f %9.4f %9.4f %16.0f %16.0f %9.4f%s\n", z, state[z], ratio, want[z], measured[z],
                    predicted[z], pm, bad ? "  WRONG" : "");
    }
    if (control.rank() == 0) std::printf("# #wrong %ld\n", wrong);
    if (wrong) rc = 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_memory: %s\n", e.what());
    rc = 1;
  }
  Kokkos::finalize();
  comm::mpi_finalize();
  return rc;
}
