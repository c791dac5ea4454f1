// `shardflow train DECK`: trains the reference GPT on the deck's mesh and strategy.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include <Kokkos_Core.hpp>

#include <csignal>

#include "ckpt/checkpoint.hpp"
#include "ckpt/lock.hpp"
#include "command.hpp"
#include "train_state.hpp"
#include "comm/control.hpp"
#include "comm/comm_set.hpp"
#include "config/deck.hpp"
#include "core/blas.hpp"
#include "core/gemm.hpp"
#include "core/error.hpp"
#include "graph/observer.hpp"
#include "comm/mesh.hpp"
#include "train/trainer.hpp"

namespace {

using namespace shardflow;

// SIGUSR1 / SIGTERM (Slurm's warning before preemption or the time limit): finish the
// current step, save a checkpoint, exit with kExitCheckpointed so the batch script requeues.
constexpr int kExitCheckpointed = 99;
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

struct TrainOptions {
  std::string deck;
  std::string resume;
  std::vector<std::string> overrides;
  std::string summary, trace_dir, dump_graph;
  bool quiet = false;
  double peak_gflops = 0;  // per-rank peak for model-FLOPs utilisation; 0: measure sgemm
};

/// The best single-core sgemm rate (GFLOP/s) this process can reach: 512³ through each host
/// GEMM library the build has (measured once by blas_info(), whose line the header prints),
/// the faster one. The MFU denominator is the best sgemm on the CPU, not the rate of
/// whichever library the model happens to use.
double best_sgemm_gflops() {
  const BlasInfo& b = blas_info();
  return std::max(b.sgemm_gflops_openblas, b.sgemm_gflops_onednn);
}

int64_t max_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

std::string human_bytes(double b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) {
    b /= 1024;
    ++i;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", b, u[i]);
  return buf;
}

std::string human_time(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s) / 3600, (static_cast<int>(s) / 60) % 60);
  return buf;
}

// Every path the run will write is checked, and created, before step 1 on every rank that
// writes it, and the ranks agree on the first failure: no training is lost to a path that
// would only fail at the end (issue 15 item 3).
void check_output_paths(const TrainOptions& o, const Deck& deck, const comm::Control& control) {
  namespace fs = std::filesystem;
  std::string err;
  auto writable_file = [](const std::string& what, const std::string& path) {
    std::error_code ec;
    SHARDFLOW_REQUIRE_INPUT(!fs::is_directory(path, ec), what, " '", path, "' is a directory");
    const bool existed = fs::exists(path, ec);
    { std::ofstream probe(path, std::ios::app); SHARDFLOW_REQUIRE_INPUT(probe.good(), what, ": cannot write '", path, "'"); }
    if (!existed) fs::remove(path, ec);
  };
  auto make_dir = [](const std::string& what, const std::string& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    SHARDFLOW_REQUIRE_INPUT(!ec && fs::is_directory(dir, ec), what, " '", dir, "' cannot be created: ",
                            ec ? ec.message() : std::string("a file is in the way"));
    const std::string probe = (fs::path(dir) / (".shardflow-probe-" + std::to_string(::getpid()))).string();
    { std::ofstream f(probe); SHARDFLOW_REQUIRE_INPUT(f.good(), what, " '", dir, "' is not writable"); }
    fs::remove(probe, ec);
  };
  try {
    if (control.rank() == 0) {
      if (!o.summary.empty()) writable_file("--summary", o.summary);
      if (!o.dump_graph.empty() && control.size() == 1) writable_file("--dump-graph", o.dump_graph);
      if (deck.train.steps > 0) {
        make_dir("checkpoint.dir", deck.checkpoint.dir);
        std::error_code ec;
        const std::string latest = (fs::path(deck.checkpoint.dir) / "latest").string();
        SHARDFLOW_REQUIRE_INPUT(!fs::is_directory(latest, ec), "checkpoint.dir '", deck.checkpoint.dir,
                                "': its 'latest' is a directory, not the pointer file shardflow writes");
      }
    }
    if (!o.trace_dir.empty()) make_dir("--trace", o.trace_dir);  // every rank writes its own trace
    if (!o.dump_graph.empty() && control.size() > 1)
      writable_file("--dump-graph", o.dump_graph + ".rank" + std::to_string(control.rank()));
  } catch (const std::exception& e) {
    err = e.what();
  }
  control.agree(err);
}

// `shardflow train` computes on the host CPUs and communicates with MPI: the CUDA and NCCL
// paths compile and link but are not wired into training. A job that was given GPUs says
// so instead of leaving them idle in silence (issue 15 item 8).
std::string gpus_given() {
  std::string given;
  for (const char* var : {"SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES",
                          "ROCR_VISIBLE_DEVICES"}) {
    const char* v = std::getenv(var);
    if (!v || !*v) continue;
    const std::string s = v;
    if (s == "0" && std::string(var) == "SLURM_GPUS_ON_NODE") continue;
    if (s == "-1" || s == "NoDevFiles" || s == "none") continue;
    given += (given.empty() ? "" : ", ") + std::string(var) + "=" + printable(s, 40);
  }
  return given;
}

int run_train(const TrainOptions& o) {
  // first of all: a preemption signal that arrives while the job starts (the deck, the
  // restore) is acted on after the first step, instead of killing this rank with the
  // default action while the others wait for it
  std::signal(SIGUSR1, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  const int rank = app::world_rank();
  const comm::Control control = comm::Control::world();
  const int world = control.size();
  Deck deck = load_deck(o.deck, o.overrides, world);  // the job's size checked first
  if (const std::string g = gpus_given(); !g.empty() && rank == 0) {
    std::fprintf(stderr,
                 "shardflow train: warning: this job was given GPUs (%s), but training runs on the host CPUs with "
                 "MPI: the CUDA/NCCL paths are built but not used by `train` yet, so the GPUs stay idle\n",
                 g.c_str());
    std::fflush(stderr);
  }
  check_output_paths(o, deck, control);
  // one run per checkpoint directory: claimed before the restore reads it or a step runs
  std::unique_ptr<ckpt::RootLock> lock;
  if (deck.train.steps > 0) {
    std::string err;
    if (rank == 0) {
      try {
        ckpt::LockOptions lo;
        if (const char* hb = std::getenv("SHARDFLOW_LOCK_HEARTBEAT_S")) lo.heartbeat_s = std::atof(hb);
        SHARDFLOW_REQUIRE_INPUT(lo.heartbeat_s > 0, "SHARDFLOW_LOCK_HEARTBEAT_S='",
                                std::getenv("SHARDFLOW_LOCK_HEARTBEAT_S"), "' is not a positive number of seconds");
        lock = std::make_unique<ckpt::RootLock>(deck.checkpoint.dir, lo);
      } catch (const std::exception& e) {
        err = e.what();
      }
    }
    control.agree(err);
  }
  // measured before the trainer exists, so that its buffers are not in the trainer's peak
  double peak = o.peak_gflops;
  if (peak <= 0) {
    double local = best_sgemm_gflops();
    // bf16: the best rate for 16-bit operands, oneDNN's bf16 matmul when it was measured
    // (core/gemm.hpp); an error in its setting is reported by the trainer, on every rank
    if (deck.train.precision == DType::BF16) {
      try {
        local = std::max(local, bf16_gemm_policy().bf16_gflops);
      } catch (const std::exception&) {
      }
    }
    peak = control.min(local);
  }
  Mesh mesh(deck.mesh.to_mesh_shape());
  comm::CommSet comms(mesh, comm::Backend::Mpi);
  train::Trainer trainer(deck, mesh, comms);
  auto ckpt_tensors = [&trainer] { return app::checkpoint_tensors(trainer); };
  int64_t resumed_at = -1;
  std::string resumed_from;
  if (!o.resume.empty()) {
    const std::string path = o.resume == "latest" ? deck.checkpoint.dir : o.resume;
    ckpt::RestoreStats restored;
    ckpt::RestoreOptions ro;
    ro.stats = &restored;
    ro.in_place = true;  // the trainer's buffers hold only the initial values; a failed restore ends the run
    const auto meta = ckpt::restore(mesh.world(), path, ckpt_tensors(), ro);
    app::restore_trainer_state(trainer, meta);
    trainer.check_measured_memory();  // what the restore read (in place) and HDF5 held meanwhile
    resumed_at = meta.step;
    resumed_from = restored.step_dir;
    if (rank == 0 && !o.quiet)
      std::printf("resumed from %s at step %lld\n", resumed_from.c_str(), static_cast<long long>(meta.step));
  }
  // What checkpoint.dir already holds: nothing for a fresh run, and nothing later than the
  // step resumed from (saving there would mix two histories, and stop at "step-N exists
  // already" later): refused now, before a step runs.
  {
    std::string err;
    if (rank == 0 && std::filesystem::is_directory(deck.checkpoint.dir)) {
      const auto existing = ckpt::list_checkpoints(deck.checkpoint.dir);
      const std::string newest = existing.empty() ? "" : std::filesystem::path(existing.back()).filename().string();
      int64_t newest_step = -1;
      if (!existing.empty()) ckpt::parse_step_dir_name(newest, &newest_step);
      if (resumed_at < 0 && !existing.empty())
        err = detail::concat("checkpoint.dir '", deck.checkpoint.dir, "' already holds ", existing.size(),
                             " checkpoint(s) (newest: ", existing.back(),
                             "): continue with --resume latest, or start afresh with another directory "
                             "(--set checkpoint.dir=...)");
      else if (newest_step > resumed_at)
        err = detail::concat("checkpoint.dir '", deck.checkpoint.dir, "' holds ", newest, ", later than the step ",
                             resumed_at, " resumed from '", resumed_from,
                             "': saving there would mix two histories. Resume from its latest "
                             "(--resume latest), or train into another directory (--set checkpoint.dir=...)");
    }
    control.agree(err);
  }
  ckpt::SaveOptions save_opts;
  save_opts.keep = static_cast<int>(deck.checkpoint.keep);
  save_opts.async = deck.checkpoint.async;
  std::unique_ptr<ckpt::Checkpointer> checkpointer;
  int64_t last_saved = resumed_at;  // never re-save the checkpoint we resumed from
  int64_t last_committed = resumed_at;  // the newest checkpoint known to be committed
  std::string in_flight;                // an async save not yet committed
  int64_t in_flight_step = -1;
  double last_loss = 0;
  // an async save is committed by the next save() or wait(): say so when it lands
  auto landed = [&] {
    if (in_flight.empty()) return;
    last_committed = in_flight_step;
    if (rank == 0 && !o.quiet) {
      std::printf("checkpoint %s committed\n", in_flight.c_str());
      std::fflush(stdout);
    }
    in_flight.clear();
  };
  auto save = [&] {
    if (trainer.step() == last_saved) return;
    std::string lost;  // never save into a directory whose lock another run took over
    if (lock) {
      try {
        lock->check();
      } catch (const std::exception& e) {
        lost = e.what();
      }
    }
    control.agree(lost);
    if (!checkpointer) checkpointer = std::make_unique<ckpt::Checkpointer>(mesh.world(), deck.checkpoint.dir, save_opts);
    const auto meta = app::checkpoint_metadata(deck, mesh, trainer, last_loss);
    const std::string dir = checkpointer->save(ckpt_tensors(), meta);
    landed();
    last_saved = trainer.step();
    if (save_opts.async) {
      in_flight = dir;
      in_flight_step = last_saved;
    } else {
      last_committed = last_saved;
    }
    if (rank == 0 && !o.quiet) {
      std::printf("checkpoint %s%s\n", dir.c_str(), save_opts.async ? " (writing in the background)" : "");
      std::fflush(stdout);
    }
  };
  auto wait_saves = [&] {
    if (!checkpointer) return;
    checkpointer->wait();
    landed();
  };
  if (!o.dump_graph.empty()) {
    const std::string path = world > 1 ? o.dump_graph + ".rank" + std::to_string(rank) : o.dump_graph;
    std::ofstream os(path);
    SHARDFLOW_REQUIRE_INPUT(os.good(), "--dump-graph: cannot write '", path, "'");
    trainer.graph().dump(os);
  }
  graph::ChromeTraceObserver tracer(rank);
  if (!o.trace_dir.empty()) trainer.executor().add_observer(&tracer);

  const auto mem = trainer.memory();
  if (rank == 0 && !o.quiet) {
    std::printf("shardflow train: %s | mesh %s | %d ranks | zero_stage %d | precision %s | %s\n", o.deck.c_str(),
                mesh.shape().to_string().c_str(), world, deck.strategy.zero_stage,
                dtype_name(deck.train.precision).c_str(), deck.model.to_string().c_str());
    std::printf("%s\n", blas_info().summary().c_str());
    if (deck.train.precision == DType::BF16) std::printf("%s\n", bf16_gemm_summary().c_str());
    std::printf("per-rank model state: params %s, grads %s, optimizer %s; transient %s; activations %s\n",
                human_bytes(static_cast<double>(mem.params)).c_str(), human_bytes(static_cast<double>(mem.grads)).c_str(),
                human_bytes(static_cast<double>(mem.optimizer)).c_str(),
                human_bytes(static_cast<double>(mem.transient)).c_str(),
                human_bytes(static_cast<double>(mem.activations)).c_str());
    std::fflush(stdout);
  }
  nlohmann::json steps = nlohmann::json::array();
  double total_time = 0, final_loss = 0;
  int64_t steps_run = 0;
  const int64_t total = deck.train.steps;
  for (int64_t s = trainer.step(); s < total; s = trainer.step()) {
    // the host products of the step as it ran them: time, and their FLOPs for the rate
    GemmTally products;
    auto st = trainer.train_step();
    trainer.check_measured_memory();  // with train.memory_limit_gib: stop cleanly past it
    total_time += st.step_time_s;
    final_loss = st.loss;
    last_loss = st.loss;
    // slowest rank's time and the largest footprint decide what the job sees; the products'
    // rate is the slowest rank's (max of its negative)
    const double products_rate = products.seconds() > 0 ? products.flops() / products.seconds() / 1e9 : 0.0;
    double t_local[5] = {st.step_time_s, st.comm_wait_s, st.compute_s, products.seconds(), -products_rate}, t_max[5];
    std::copy(t_local, t_local + 5, t_max);
    control.max(t_max, 5);
    const int64_t rss_max = control.max(static_cast<int64_t>(max_rss_bytes()));
    const double tps = static_cast<double>(deck.train.global_batch * deck.model.seq) / t_max[0];
    steps.push_back({{"step", st.step}, {"loss", st.loss}, {"step_time_s", t_max[0]}, {"tokens_per_s", tps},
                     {"comm_wait_s", t_max[1]}, {"compute_s", t_max[2]},
                     {"mfu", trainer.model_flops_per_step() / t_max[0] / (peak * 1e9 * world)},
                     {"grad_norm", st.grad_norm}});
    if (t_max[3] > 0) {  // host products ran (not on a device)
      steps.back()["products_s"] = t_max[3];
      steps.back()["products_gflops_per_rank"] = -t_max[4];
    }
    if (deck.train.precision == DType::F16) {
      steps.back()["loss_scale"] = st.loss_scale;
      steps.back()["skipped"] = st.skipped;
    }
    if (deck.model.is_moe()) {
      steps.back()["aux_loss"] = st.aux_loss;
      steps.back()["dropped_tokens"] = st.dropped;
    }
    if (rank == 0 && !o.quiet) {
      const double eta = total_time / static_cast<double>(++steps_run) * static_cast<double>(total - st.step);
      std::printf("step %*lld/%lld  loss %.4f  %8.0f tok/s  step %.3fs  comm-wait %4.1f%%  peak/rank %s  eta %s\n",
                  static_cast<int>(std::to_string(total).size()), static_cast<long long>(st.step),
                  static_cast<long long>(total), st.loss, tps, t_max[0], 100.0 * t_max[1] / std::max(t_max[0], 1e-12),
                  human_bytes(static_cast<double>(rss_max)).c_str(), human_time(eta).c_str());
      if (st.skipped)
        std::printf("      f16: gradients not finite at loss scale %g: step skipped, scale now %g\n", st.loss_scale,
                    trainer.loss_scale_state().scale);
      if (deck.model.is_moe())
        std::printf("      moe: aux loss %.4f, dropped %lld token choices\n", st.aux_loss,
                    static_cast<long long>(st.dropped));
      std::fflush(stdout);
    }
    if (deck.checkpoint.every > 0 && trainer.step() % deck.checkpoint.every == 0) save();
    const int any_sig = control.max(static_cast<int>(g_stop_signal));
    if (any_sig) {
      save();
      wait_saves();
      if (rank == 0)
        std::printf("stopped by signal %d after step %lld; checkpoint saved, exiting with %d (requeue me)\n", any_sig,
                    static_cast<long long>(trainer.step()), kExitCheckpointed);
      std::fflush(stdout);
      return kExitCheckpointed;
    }
  }
  if (trainer.step() > 0) save();
  wait_saves();
  if (!o.trace_dir.empty()) tracer.write(o.trace_dir + "/trace.rank" + std::to_string(rank) + ".json");
  const std::vector<int64_t> peaks = control.gather(static_cast<int64_t>(max_rss_bytes()), 0);
  const std::vector<int64_t> states = control.gather(static_cast<int64_t>(mem.model_state()), 0);
  // the framework's own allocations (core/memory.hpp) against the compiled step's prediction
  const std::vector<int64_t> measured = control.gather(trainer.measured_peak_bytes(), 0);
  const std::vector<int64_t> predicted =
      control.gather(trainer.predicted_peak_bytes(
                         false, save_opts.async ? ckpt::save_bytes(ckpt_tensors(), rank) : 0),
                     0);
  if (rank == 0 && !o.summary.empty()) {
    nlohmann::json j;
    j["deck"] = o.deck;
    j["world_size"] = world;
    nlohmann::json m;
    for (size_t i = 0; i < mesh.shape().axis_names().size(); ++i)
      m[mesh.shape().axis_names()[i]] = mesh.shape().sizes()[i];
    j["mesh"] = m;
    j["zero_stage"] = deck.strategy.zero_stage;
    j["resumed_from_step"] = resumed_at >= 0 ? nlohmann::json(resumed_at) : nlohmann::json(nullptr);
    j["last_committed_step"] = last_committed >= 0 ? nlohmann::json(last_committed) : nlohmann::json(nullptr);
    const char* restarts = std::getenv("SLURM_RESTART_COUNT");
    j["restart_count"] = restarts ? std::atoi(restarts) : 0;
    j["steps"] = steps;
    j["final_loss"] = final_loss;
    j["peak_memory_bytes"] = peaks;
    j["model_state_bytes"] = states;
    j["memory_measured_peak_bytes"] = measured;
    j["memory_predicted_peak_bytes"] = predicted;
    j["precision"] = dtype_name(deck.train.precision);
    if (deck.train.precision == DType::F16) {
      const auto ls = trainer.loss_scale_state();
      j["loss_scale_final"] = ls.scale;
      j["skipped_steps"] = ls.skipped_steps;
    }
    j["model_flops_per_step"] = trainer.model_flops_per_step();
    j["peak_gflops_per_rank"] = peak;
    j["peak_gflops_source"] = o.peak_gflops > 0                     ? "--peak-gflops"
                              : deck.train.precision == DType::BF16 ? "measured single-core sgemm and bf16 matmul"
                                                                    : "measured single-core sgemm";
    // steady state: the median over the steps after the first (warm-up) one (the only
    // step, when there is one), of the step and, where the products ran on the host, of
    // their time and rate (MFU counts every FLOP against the step; the products' rate
    // against the peak says how much of the gap is their own speed)
    std::vector<double> times, ps, pr;
    for (size_t i = steps.size() > 1 ? 1 : 0; i < steps.size(); ++i) {
      times.push_back(steps[i]["step_time_s"].get<double>());
      if (steps[i].contains("products_s")) {
        ps.push_back(steps[i]["products_s"].get<double>());
        pr.push_back(steps[i]["products_gflops_per_rank"].get<double>());
      }
    }
    const auto median = [](std::vector<double>& v) {
      std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
      return v[v.size() / 2];
    };
    if (!times.empty()) {
      const double med = median(times);
      j["median_step_time_s"] = med;
      j["tokens_per_s"] = static_cast<double>(deck.train.global_batch * deck.model.seq) / med;
      j["mfu"] = trainer.model_flops_per_step() / med / (peak * 1e9 * world);
    }
    if (!ps.empty()) {
      j["median_products_s"] = median(ps);
      j["products_vs_peak"] = median(pr) / peak;
    }
    const auto tot = trainer.executor().totals();
    j["breakdown_s"] = {{"total", tot.total_s}, {"compute", tot.compute_s}, {"comm_wait", tot.comm_wait_s},
                        {"other", std::max(0.0, tot.total_s - tot.compute_s - tot.comm_wait_s)}};
    j["memory_bytes_rank0"] = {{"params", mem.params}, {"grads", mem.grads}, {"optimizer", mem.optimizer},
                               {"transient", mem.transient}, {"activations", mem.activations}};
    std::ofstream os(o.summary);
    SHARDFLOW_REQUIRE_INPUT(os.good(), "--summary: cannot write '", o.summary, "'");
    os << j.dump(2) << "\n";
  }
  return 0;
}

app::CommandRegistration reg("train", "train the reference GPT on a deck (run under mpiexec -n N or srun)",
                             [](CLI::App& sub) {
                               auto o = std::make_shared<TrainOptions>();
                               sub.add_option("deck", o->deck, "input deck (TOML)")->required();
                               sub.add_option("--set", o->overrides, "override a deck key: section.key=value")
                                   ->take_all();
                               sub.add_option("--summary", o->summary, "write a JSON summary to FILE");
                               sub.add_option("--trace", o->trace_dir, "write Chrome traces (one per rank) to DIR");
                               sub.add_option("--dump-graph", o->dump_graph, "write the step's task graph (DOT)");
                               sub.add_flag("--quiet", o->quiet, "no progress lines");
                               sub.add_option("--resume", o->resume,
                                              "restore a checkpoint (a step directory, a checkpoint root, or "
                                              "'latest' for the deck's checkpoint.dir) onto this mesh first");
                               sub.add_option("--peak-gflops", o->peak_gflops,
                                              "per-rank peak GFLOP/s for MFU (default: measured sgemm rate)");
                               return [o] { return run_train(*o); };
                             });

}  // namespace
