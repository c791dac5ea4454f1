// bench_recompute: what activation recomputation (strategy.recompute, issue 12) costs and
// saves, on a deck (default inputs/bench.toml) and its mesh (--set to change it):
//  - step time of none / selective / full, measured round-robin (one batch of steps per
//    mode per round, the median over rounds), the overhead against none next to the
//    analytic extra FLOPs: full re-runs every layer's forward (its matmuls and attention
//    core), selective the attention core alone (QKᵀ and P·V: 4·b·s²·h a layer);
//  - each rank's activation bytes per mode (train --summary's memory_bytes_rank0.activations),
//    against the per-layer f32 set the compiler allocates;
//  - #wrong: steps whose loss differs from none's (recomputation must be bitwise the same);
//  - train.precision bf16 and f16 (no recomputation) against f32: step time, activation
//    bytes, and how far their losses are from f32's (16-bit rounding: close, not equal);
//  - what one layer keeps for its backward per micro-batch (rank 0's compiled buffers: the
//    act slot of its first layer, buffers shared with another layer excluded) in f32 and
//    bf16, against Korthikanti et al. 2022's 16-bit formulas: s·b·h·(34 + 5·a·s/h) without
//    recomputation, 34·s·b·h selective, 2·s·b·h full (the layer input alone).
//
//   mpiexec -n N bench_recompute [deck] [--set k=v ...] [--steps S] [--rounds R]
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm_set.hpp"
#include "compile/compiler.hpp"
#include "comm/control.hpp"
#include "comm/mesh.hpp"
#include "config/deck.hpp"
#include "core/blas.hpp"
#include "core/threads.hpp"
#include "bench_deck_args.hpp"
#include "train/trainer.hpp"

using namespace shardflow;

namespace {

struct Mode {
  const char* name;
  std::unique_ptr<Deck> deck;
  std::unique_ptr<Mesh> mesh;
  std::unique_ptr<comm::CommSet> comms;
  std::unique_ptr<train::Trainer> trainer;
  std::vector<double> losses, times;
};

// Bytes the first local layer of `rank` keeps for its backward in one act slot: its act
// buffers that no other layer shares (full recomputation's scratch set and selective's
// probabilities are shared: they are the step's, not the layer's).
double layer_kept_bytes(const Deck& d, int rank) {
  const compile::StepProgram prog = compile::compile_step(d, compile::layout_plan(d, d.mesh.to_mesh_shape()), rank);
  const auto& acts = prog.buffers.acts;
  if (acts.size() < 2) return -1;
  auto ids = [](const compile::ActBuffers& a) {
    return std::vector<int>{a.x_in, a.n1, a.rstd1, a.qkv, a.probs, a.att, a.x_mid, a.n2, a.rstd2, a.gu, a.h};
  };
  const std::vector<int> mine = ids(acts[0][0]), next = ids(acts[1][0]);
  double b = 0;
  for (int id : mine)
    if (id >= 0 && std::find(next.begin(), next.end(), id) == next.end())
      b += static_cast<double>(prog.buffers.spec(id).bytes());
  return b;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  ensure_best_blas_kernel(argc, argv);  // may re-execute: first thing
  comm::mpi_init(argc, argv);
  limit_blas_threads();
  Kokkos::initialize(argc, argv);
  int rc = 0;
  try {
    int steps = 3, rounds = 5;
    const perf::DeckArgs args =
        perf::parse_deck_args(argc, argv, SHARDFLOW_BENCH_DECK, {{"--steps", &steps}, {"--rounds", &rounds}});
    const std::string& deck_path = args.deck;
    const std::vector<std::string>& sets = args.sets;
    const comm::Control control = comm::Control::world();
    const int rank = control.rank();
    std::vector<Mode> modes;
    for (const char* m : {"none", "selective", "full", "bf16", "f16"}) {
      Mode md;
      md.name = m;
      std::vector<std::string> s = sets;
      const bool precision = std::string(m) == "bf16" || std::string(m) == "f16";
      s.push_back(precision ? std::string("train.precision=\"") + m + "\""
                            : std::string("strategy.recompute=\"") + m + "\"");
      md.deck = std::make_unique<Deck>(load_deck(deck_path, s, control.size()));
      md.mesh = std::make_unique<Mesh>(md.deck->mesh.to_mesh_shape());
      md.comms = std::make_unique<comm::CommSet>(*md.mesh, comm::Backend::Mpi);
      md.trainer = std::make_unique<train::Trainer>(*md.deck, *md.mesh, *md.comms);
      md.losses.push_back(md.trainer->train_step().loss);  // warm-up, also compared
      modes.push_back(std::move(md));
    }
    for (int r = 0; r < rounds; ++r)
      for (auto& md : modes) {
        (void)control.max(0);  // start together
        const auto t0 = std::chrono::steady_clock::now();
        for (int s = 0; s < steps; ++s) md.losses.push_back(md.trainer->train_step().loss);
        const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
        md.times.push_back(control.max(t));
      }
    const Deck& d = *modes[0].deck;
    const double B = static_cast<double>(d.train.global_batch), S = static_cast<double>(d.model.seq);
    const double H = static_cast<double>(d.model.hidden), F = static_cast<double>(d.model.ffn);
    const double L = static_cast<double>(d.model.layers), N = B * S;
    const double layer_mm = 2 * N * (4 * H * H + 3 * H * F);  // qkv, out, gate_up, down
    const double core = 4 * B * S * S * H;                    // QKᵀ and P·V
    const double total = modes[0].trainer->model_flops_per_step();
    const double t_none = median(modes[0].times);
    long wrong = 0;
    for (size_t k = 0; k < 3; ++k)
      for (size_t i = 0; i < modes[k].losses.size(); ++i) wrong += modes[k].losses[i] != modes[0].losses[i];
    std::vector<double> acts;
    for (auto& md : modes) acts.push_back(control.max(static_cast<double>(md.trainer->memory().activations)));
    if (rank == 0) {
      std::printf("# bench_recompute: %s | mesh %s | %d ranks | %s | %s | median of %d rounds x %d steps\n",
                  deck_path.c_str(), modes[0].mesh->shape().to_string().c_str(), control.size(),
                  d.model.to_string().c_str(), blas_info().summary().c_str(), rounds, steps);
      std::printf("# model FLOPs per step %.4g (layer forward matmuls %.4g, attention core %.4g, x %g layers)\n", total,
                  layer_mm, core, L);
      std::printf("# %-10s %10s %9s %14s %12s %14s %10s\n", "recompute", "step_ms", "overhead", "analytic_extra",
                  "meas/anal", "activations_B", "vs_none");
      for (size_t k = 0; k < 3; ++k) {
        const double t = median(modes[k].times);
        const double extra = k == 0 ? 0 : k == 1 ? L * core / total : L * (layer_mm + core) / total;
        const double over = t / t_none - 1;
        char ratio[32] = "-";
        if (k > 0) std::snprintf(ratio, sizeof ratio, "%.2f", over / extra);
        std::printf("  %-10s %10.2f %+8.1f%% %13.1f%% %12s %14.0f %10.3f\n", modes[k].name, t * 1e3, 100 * over,
                    100 * extra, ratio, acts[k], acts[k] / acts[0]);
      }
      std::printf("# #wrong %ld (steps whose loss differs from none's, bitwise)\n", wrong);
      std::printf("# %-10s %10s %9s %14s %10s %16s\n", "precision", "step_ms", "vs_f32", "activations_B", "vs_f32",
                  "max_loss_rel_diff");
      std::printf("  %-10s %10.2f %9.3f %14.0f %10.3f %16s\n", "f32", t_none * 1e3, 1.0, acts[0], 1.0, "0");
      for (size_t k = 3; k < modes.size(); ++k) {
        double diff = 0;
        for (size_t i = 0; i < modes[k].losses.size(); ++i)
          diff = std::max(diff, std::abs(modes[k].losses[i] - modes[0].losses[i]) / modes[0].losses[i]);
        const double t = median(modes[k].times);
        std::printf("  %-10s %10.2f %9.3f %14.0f %10.3f %16.2e\n", modes[k].name, t * 1e3, t / t_none, acts[k],
                    acts[k] / acts[0], diff);
      }
    }
    if (rank == 0) {
      const double sb = static_cast<double>(d.micro_batch_size()) * S;
      const double a = static_cast<double>(d.model.heads);
      const double korth[3] = {sb * H * (34 + 5 * a * S / H), 34 * sb * H, 2 * sb * H};
      std::printf("# one layer's kept bytes per micro-batch (rank 0) vs Korthikanti et al. (16-bit), s·b = %.0f\n", sb);
      std::printf("# %-10s %14s %14s %14s %10s %10s\n", "recompute", "f32_B", "bf16_B", "korthikanti_B", "f32/K",
                  "bf16/K");
      for (size_t k = 0; k < 3; ++k) {
        Deck f = *modes[k].deck;
        const double b32 = layer_kept_bytes(f, 0);
        f.train.precision = DType::BF16;
        const double b16 = layer_kept_bytes(f, 0);
        std::printf("  %-10s %14.0f %14.0f %14.0f %10.3f %10.3f\n", modes[k].name, b32, b16, korth[k], b32 / korth[k],
                    b16 / korth[k]);
      }
    }
    if (wrong) rc = 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_recompute: %s\n", e.what());
    rc = 1;
  }
  Kokkos::finalize();
  comm::mpi_finalize();
  return rc;
}
