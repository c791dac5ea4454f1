// The simulator (src/sim/): cluster files, the cost model on hand-checkable cases, and the
// replay's pipeline bubble and exposed communication.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>

#include "compile/compiler.hpp"
#include "compile/summary.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "nn/kernels.hpp"
#include "sim/cluster.hpp"
#include "sim/simulator.hpp"

using namespace shardflow;

namespace {

// A cluster whose numbers make the arithmetic easy; links as given.
std::string cluster_text(double intra_gbs, double inter_gbs, int devices_per_node, double latency_us = 0,
                         const std::string& extra_device = "") {
  std::ostringstream os;
  os << "name = \"test\"\n[device]\npeak_tflops = { f32 = 10.0, bf16 = 100.0, f16 = 100.0 }\nmemory_gib = 16.0\n"
     << "memory_bandwidth_gbs = 1000.0\nelementwise_efficiency = 1.0\n"
     << extra_device << "[node]\ndevices = " << devices_per_node << "\n[link.intra]\nbandwidth_gbs = " << intra_gbs
     << "\nlatency_us = " << latency_us << "\nhop_latency_us = " << latency_us
     << "\nefficiency = 1.0\n[link.inter]\nbandwidth_gbs = " << inter_gbs << "\nlatency_us = " << latency_us
     << "\nhop_latency_us = " << latency_us << "\nefficiency = 1.0\n";
  return os.str();
}

std::string deck_text(const std::string& mesh, const std::string& train_extra = "",
                      const std::string& strategy = "", int layers = 4) {
  return "[mesh]\n" + mesh + "\n[model]\nvocab = 256\nseq = 128\nhidden = 256\nheads = 4\nffn = 688\nlayers = " +
         std::to_string(layers) + "\n[train]\nsteps = 1\nglobal_batch = 16\n" + train_extra + "[strategy]\n" + strategy;
}

Deck deck_of(const std::string& text) { return parse_deck(text, "test-deck"); }

}  // namespace

TEST(ClusterFiles, BundledOnesLoadWithTheirDatasheetNumbers) {
  setenv("SHARDFLOW_CLUSTERS", SHARDFLOW_CLUSTERS_DIR, 1);
  const sim::Cluster a = sim::load_cluster("a100-80gb");
  EXPECT_EQ(a.peak_bf16, 312.0);
  EXPECT_EQ(a.memory_bandwidth_gbs, 2039.0);
  EXPECT_EQ(a.devices_per_node, 8);
  EXPECT_EQ(a.inter.bandwidth_gbs, 25.0);
  const sim::Cluster h = sim::load_cluster("h100-80gb");
  EXPECT_EQ(h.peak_bf16, 989.5);
  EXPECT_EQ(h.intra.bandwidth_gbs, 450.0);
  const sim::Cluster h2 = sim::load_cluster("h200");
  EXPECT_EQ(h2.memory_bandwidth_gbs, 4800.0);
  EXPECT_NEAR(h2.memory_gib, 131.3, 1e-9);
  // a path works too, and every bundled file cites a datasheet
  for (const char* n : {"a100-80gb", "h100-80gb", "h200"}) {
    const std::string path = std::string(SHARDFLOW_CLUSTERS_DIR) + "/" + n + ".toml";
    EXPECT_EQ(sim::load_cluster(path).name, n);
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    EXPECT_NE(ss.str().find("datasheet"), std::string::npos) << n;
  }
}

TEST(ClusterFiles, BadValuesAreRefusedByName) {
  auto refused = [](const std::string& text, const std::string& what) {
    try {
      (void)sim::parse_cluster(text, "bad.toml");
      ADD_FAILURE() << "accepted: " << what;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad.toml"), std::string::npos) << e.what();
    }
  };
  refused(cluster_text(0, 10, 8), "bandwidth_gbs");
  refused(cluster_text(10, 10, 0), "devices");
  refused(cluster_text(10, 10, 8, 0, "gemm_efficiency = [[100, 0.5], [50, 0.6]]\n"), "gemm_efficiency");
  refused(cluster_text(10, 10, 8, 0, "gemm_efficiency = [[100, 1.5]]\n"), "gemm_efficiency");
  refused(cluster_text(10, 10, 8, 0, "sixteen_bit_as_f32 = 1\n"), "sixteen_bit_as_f32 must be true or false");
  refused("name = \"x\"\n", "[device]");
  refused("name = ", "bad.toml");
  try {
    (void)sim::load_cluster("no-such-cluster");
    ADD_FAILURE() << "an unknown name was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-cluster"), std::string::npos) << e.what();
  }
}

TEST(CostModel, GemmEfficiencyInterpolatesInLogSize) {
  const sim::Cluster c = sim::parse_cluster(
      cluster_text(10, 10, 8, 0, "gemm_efficiency = [[100, 0.1], [10000, 0.9]]\n"), "t.toml");
  EXPECT_NEAR(c.gemm_fraction(1000, 1000, 1000), 0.5, 1e-12);  // size 1000: halfway in log
  EXPECT_NEAR(c.gemm_fraction(10, 10, 10), 0.1, 1e-12);        // clamped below
  EXPECT_NEAR(c.gemm_fraction(1e6, 1e6, 1e6), 0.9, 1e-12);     // and above
  // 2·m·n·k FLOPs at peak × fraction
  EXPECT_NEAR(c.gemm_seconds(1000, 1000, 1000, DType::BF16), 2e9 / (100e12 * 0.5), 1e-18);
  EXPECT_NEAR(c.gemm_seconds(1000, 1000, 1000, DType::F32), 2e9 / (10e12 * 0.5), 1e-18);
  EXPECT_NEAR(c.bytes_seconds(1e9), 1e-3, 1e-15);
}

// Every cost of a one-device step is a GEMM at peak or bytes at the memory bandwidth: twice
// both rates, half the step.
TEST(Simulate, OneDeviceScalesWithTheDevice) {
  const Deck d = deck_of(deck_text("data = 1"));
  const sim::Cluster slow = sim::parse_cluster(cluster_text(10, 10, 8), "slow.toml");
  std::string fast_text = cluster_text(10, 10, 8);
  fast_text.replace(fast_text.find("f32 = 10.0, bf16 = 100.0, f16 = 100.0"), 37, "f32 = 20.0, bf16 = 200.0, f16 = 200.0");
  fast_text.replace(fast_text.find("memory_bandwidth_gbs = 1000.0"), 29, "memory_bandwidth_gbs = 2000.0");
  const sim::Cluster fast = sim::parse_cluster(fast_text, "fast.toml");
  const sim::SimResult a = sim::simulate(d, slow), b = sim::simulate(d, fast);
  ASSERT_GT(a.step_time_s, 0);
  EXPECT_NEAR(b.step_time_s, a.step_time_s / 2, 1e-12 * a.step_time_s);
  EXPECT_EQ(a.bubble_fraction, 0);
  EXPECT_TRUE(a.exposed_comm_s.empty());
  // the model FLOPs of the deck over one device and the step time
  EXPECT_NEAR(a.mfu * 10e12 * a.step_time_s, a.model_tflops_per_gpu * 1e12 * a.step_time_s, 1e-6);
  // memory is the compiled step's prediction
  const auto prog = compile::compile_step(d, compile::layout_plan(d, d.mesh.to_mesh_shape()), 0);
  EXPECT_EQ(a.memory.peak, static_cast<double>(compile::predict_peak(prog, 0, 0).peak()));
  EXPECT_TRUE(a.fits);
}

// Data parallelism over two nodes without latency: the data axis is busy exactly the ring
// all-reduce time of every gradient, 2·(n−1)/n · bytes / bandwidth, and a slower link
// leaves more of it exposed.
TEST(Simulate, DataParallelAllReduceCostsTheRingFormula) {
  const Deck d = deck_of(deck_text("data = 2"));
  const sim::Cluster c = sim::parse_cluster(cluster_text(100, 1, 1), "t.toml");  // one device per node
  const sim::SimResult r = sim::simulate(d, c);
  const auto prog = compile::compile_step(d, compile::layout_plan(d, d.mesh.to_mesh_shape()), 0);
  double bytes = 0;
  for (const auto& t : prog.tasks)
    if (t.is_comm && t.comm.kind == comm::CollectiveKind::AllReduce &&
        t.comm.axes == parallel::Axes{"data"})
      bytes += static_cast<double>(t.comm.tensor_bytes());
  ASSERT_GT(bytes, 1e6);
  ASSERT_TRUE(r.comm_busy_s.count("data"));
  EXPECT_NEAR(r.comm_busy_s.at("data"), bytes / 1e9, 1e-9 * bytes / 1e9);  // 2·(1/2)·bytes / (1 GB/s)
  EXPECT_GT(r.exposed_comm_s.at("data"), 0);
  const sim::SimResult slower = sim::simulate(d, sim::parse_cluster(cluster_text(100, 0.5, 1), "t.toml"));
  EXPECT_GT(slower.step_time_s, r.step_time_s);
  EXPECT_GT(slower.exposed_comm_s.at("data"), r.exposed_comm_s.at("data"));
  // inside one node (fast link) the same all-reduces cost 100 times less
  const sim::SimResult node = sim::simulate(d, sim::parse_cluster(cluster_text(100, 1, 2), "t.toml"));
  EXPECT_NEAR(node.comm_busy_s.at("data"), bytes / 100e9, 1e-9 * bytes / 100e9);
}

// strategy.activation_comm_dtype: the tensor axis's activation all-reduces move half the
// bytes on a bf16 wire and pay their casts through staging at memory speed; the loss
// statistics stay f32. Two tensor ranks in one node, no latency: each all-reduce costs its
// bytes over the link, plus twice its staging over the memory bandwidth.
TEST(Simulate, TensorActivationsOnASixteenBitWire) {
  const std::string mesh = "data = 1\ntensor = 2";
  const Deck f32 = deck_of(deck_text(mesh, "precision = \"bf16\"\n"));
  const Deck b16 = deck_of(deck_text(mesh, "precision = \"bf16\"\n", "activation_comm_dtype = \"bf16\"\n"));
  const sim::Cluster c = sim::parse_cluster(cluster_text(100, 1, 2), "t.toml");
  auto expected = [&](const Deck& d, double* act_bytes) {
    const auto prog = compile::compile_step(d, compile::layout_plan(d, d.mesh.to_mesh_shape()), 0);
    double seconds = 0;
    *act_bytes = 0;
    for (const auto& t : prog.tasks) {
      if (!t.is_comm || t.comm.axes != parallel::Axes{"tensor"}) continue;
      EXPECT_EQ(t.comm.kind, comm::CollectiveKind::AllReduce) << t.name;
      const double bytes = static_cast<double>(t.comm.tensor_bytes());
      if (t.comm.dtype == DType::F64) {  // the loss and gradient-norm sums
        seconds += bytes / 100e9;
        continue;
      }
      const bool stats = t.name.find("loss.") != std::string::npos;
      EXPECT_EQ(t.comm.dtype, stats ? DType::F32 : d.strategy.activation_comm_dtype) << t.name;
      if (!stats) *act_bytes += bytes;
      seconds += bytes / 100e9 + 2.0 * static_cast<double>(t.comm.staging_bytes) / 1000e9;
    }
    return seconds;
  };
  double a32 = 0, a16 = 0;
  const double want32 = expected(f32, &a32), want16 = expected(b16, &a16);
  ASSERT_GT(a32, 1e6);
  EXPECT_DOUBLE_EQ(a16, a32 / 2);
  const sim::SimResult r32 = sim::simulate(f32, c), r16 = sim::simulate(b16, c);
  EXPECT_NEAR(r32.comm_busy_s.at("tensor"), want32, 1e-9 * want32);
  EXPECT_NEAR(r16.comm_busy_s.at("tensor"), want16, 1e-9 * want16);
  EXPECT_LT(r16.comm_busy_s.at("tensor"), 0.8 * r32.comm_busy_s.at("tensor"));
  EXPECT_LT(r16.step_time_s, r32.step_time_s);
}

// The pipeline bubble of 1F1B and GPipe on p stages and m micro-batches is about
// (p − 1) / (m + p − 1) when the links are free; interleaving shrinks it.
TEST(Simulate, PipelineBubbleFollowsTheSchedule) {
  const sim::Cluster c = sim::parse_cluster(cluster_text(1e6, 1e6, 8), "t.toml");
  auto bubble = [&](int m, const std::string& strategy) {
    const Deck d = deck_of(deck_text("data = 1\npipeline = 2", "micro_batches = " + std::to_string(m) + "\n",
                                     strategy, 16));
    return sim::simulate(d, c).bubble_fraction;
  };
  for (int m : {4, 8, 16}) {
    const double ideal = 1.0 / (m + 1);
    const double b1 = bubble(m, "schedule = \"1f1b\"\n"), bg = bubble(m, "schedule = \"gpipe\"\n");
    EXPECT_NEAR(b1, ideal, 0.2 * ideal) << "1f1b m=" << m;
    EXPECT_NEAR(bg, ideal, 0.2 * ideal) << "gpipe m=" << m;
    const double bi = bubble(m, "schedule = \"1f1b\"\nvirtual_stages = 2\n");
    EXPECT_LT(bi, b1) << "interleaved m=" << m;
  }
  EXPECT_LT(bubble(16, "schedule = \"1f1b\"\n"), bubble(4, "schedule = \"1f1b\"\n"));
}

TEST(Simulate, TraceHasEveryTaskOfEveryStage) {
  const Deck d = deck_of(deck_text("data = 1\npipeline = 2", "micro_batches = 4\n"));
  const sim::Cluster c = sim::parse_cluster(cluster_text(100, 10, 8, 5), "t.toml");
  sim::SimOptions o;
  o.trace_file = ::testing::TempDir() + "sim_trace.json";
  const sim::SimResult r = sim::simulate(d, c, o);
  std::ifstream f(o.trace_file);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string t = ss.str();
  size_t tasks = 0;
  const MeshShape mesh = d.mesh.to_mesh_shape();
  const auto plan = compile::layout_plan(d, mesh);
  for (int st = 0; st < 2; ++st) tasks += compile::compile_step(d, plan, mesh.rank_of({0, st})).tasks.size();
  size_t events = 0;
  for (size_t at = t.find("\"ph\":\"X\""); at != std::string::npos; at = t.find("\"ph\":\"X\"", at + 1)) ++events;
  EXPECT_EQ(events, tasks);
  EXPECT_EQ(r.roles, 2);
}

// The block replay (SimOptions::Replay::Blocks: each class of alike stages compiled once with
// few micro-batches, the schedule replayed group by group) against the task replay of every
// task of every stage: the same step within 0.5 %, the same memory, the same bubble within
// 0.02, on 1F1B, interleaved (with more stages than a class program's micro-batches too),
// GPipe, data-parallel (ZeRO-0 and 1), tensor with sequence parallelism, expert and
// context-parallel pipelines; Auto takes it there, and keeps the task replay for a trace and
// for ZeRO-3.
TEST(Simulate, BlockReplayMatchesTheTaskReplay) {
  const sim::Cluster c = sim::parse_cluster(cluster_text(100, 10, 2, 5), "t.toml");
  const std::string llama = "family = \"llama\"\nkv_heads = 2\n";
  auto with_model = [](std::string text, const std::string& extra) { return text.insert(text.find("vocab"), extra); };
  auto batch = [](std::string text, int global) {
    const std::string key = "global_batch = 16";
    return text.replace(text.find(key), key.size(), "global_batch = " + std::to_string(global));
  };
  const std::vector<std::pair<std::string, std::string>> decks = {
      {"1f1b pp4 m16", deck_text("data = 1\npipeline = 4", "micro_batches = 16\n", "", 8)},
      {"1f1b pp3 uneven layers m16", deck_text("data = 1\npipeline = 3", "micro_batches = 16\n", "", 7)},
      {"interleaved pp4 v2 m16",
       deck_text("data = 1\npipeline = 4", "micro_batches = 16\n", "virtual_stages = 2\n", 8)},
      {"interleaved pp2 v2 m16 (x and dx share one peer)",
       deck_text("data = 1\npipeline = 2", "micro_batches = 16\n", "virtual_stages = 2\n", 8)},
      {"1f1b pp12 m16 (class programs all warm-up)",
       deck_text("data = 1\npipeline = 12", "micro_batches = 16\n", "", 12)},
      {"gpipe pp4 m16", deck_text("data = 1\npipeline = 4", "micro_batches = 16\n", "schedule = \"gpipe\"\n", 8)},
      {"dp2 pp4 m8", deck_text("data = 2\npipeline = 4", "micro_batches = 8\n", "", 8)},
      {"dp2 pp4 zero1 full recompute m8",
       deck_text("data = 2\npipeline = 4", "micro_batches = 8\n", "zero_stage = 1\nrecompute = \"full\"\n", 8)},
      {"tp2 sp pp4 selective m16", deck_text("tensor = 2\npipeline = 4", "micro_batches = 16\n",
                                             "sequence_parallel = true\nrecompute = \"selective\"\n", 8)},
      {"ep2 pp4 m8", with_model(deck_text("expert = 2\npipeline = 4", "micro_batches = 8\n", "", 8),
                                "experts = 4\ntop_k = 2\nmoe_every = 2\n")},
      {"llama cp2 pp4 m16", with_model(deck_text("context = 2\npipeline = 4", "micro_batches = 16\n", "", 8), llama)},
      // more stages than kBlockMicroBatches: class programs of 8 micro-batches in one round
      {"interleaved pp12 v2 m24 (class programs in one round of 8)",
       batch(deck_text("data = 1\npipeline = 12", "micro_batches = 24\n", "virtual_stages = 2\n", 24), 24)},
      {"dp2 interleaved pp12 v2 m24",
       batch(deck_text("data = 2\npipeline = 12", "micro_batches = 24\n", "virtual_stages = 2\n", 24), 48)},
      {"tp2 sp interleaved pp10 v3 m20 selective",
       batch(deck_text("tensor = 2\npipeline = 10", "micro_batches = 20\n",
                       "virtual_stages = 3\nsequence_parallel = true\nrecompute = \"selective\"\n", 30),
             20)},
  };
  for (const auto& [what, text] : decks) {
    const Deck d = deck_of(text);
    sim::SimOptions tasks, blocks;
    tasks.replay = sim::SimOptions::Replay::Tasks;
    blocks.replay = sim::SimOptions::Replay::Blocks;
    const sim::SimResult t = sim::simulate(d, c, tasks), b = sim::simulate(d, c, blocks), a = sim::simulate(d, c);
    EXPECT_EQ(t.replay, "tasks") << what;
    EXPECT_EQ(b.replay, "blocks") << what;
    EXPECT_EQ(a.replay, "blocks") << what << ": Auto";
    EXPECT_LE(b.stages_compiled, 3) << what << ": first, middle and last stage";
    EXPECT_NEAR(b.step_time_s / t.step_time_s, 1.0, 0.005) << what;
    EXPECT_EQ(b.memory.peak, t.memory.peak) << what;
    EXPECT_EQ(b.memory.activations, t.memory.activations) << what;
    EXPECT_EQ(b.fits, t.fits) << what;
    EXPECT_NEAR(b.bubble_fraction, t.bubble_fraction, 0.02) << what;
    EXPECT_NEAR(b.achieved_tflops_per_gpu / t.achieved_tflops_per_gpu, 1.0, 0.005) << what;
    for (const auto& [key, s] : t.exposed_comm_s)
      EXPECT_NEAR(b.exposed_comm_s.count(key) ? b.exposed_comm_s.at(key) : 0.0, s, 0.05 * t.step_time_s)
          << what << " exposed " << key;
    for (const auto& [key, s] : t.comm_busy_s)  // the pipeline's: its messages' link time (docs)
      if (key != "pipeline") {
        EXPECT_NEAR(b.comm_busy_s.count(key) ? b.comm_busy_s.at(key) : 0.0, s, 1e-3 * s) << what << " busy " << key;
      }
  }
  // Auto: a trace needs the tasks; ZeRO-3 moves parameters and gradients in every group
  const Deck d = deck_of(decks[0].second);
  sim::SimOptions traced;
  traced.trace_file = ::testing::TempDir() + "sim_blocks_trace.json";
  EXPECT_EQ(sim::simulate(d, c, traced).replay, "tasks");
  const Deck z3 = deck_of(deck_text("data = 2\npipeline = 4", "micro_batches = 8\n", "zero_stage = 3\n", 8));
  EXPECT_EQ(sim::simulate(z3, c).replay, "tasks");
}

// The stages compiled on several threads: the same step, memory and trace as one thread,
// and a stage the compiler refuses is refused with the same message.
TEST(Simulate, StagesCompiledOnThreadsGiveTheSameStep) {
  const Deck d = deck_of(deck_text("data = 1\npipeline = 4", "micro_batches = 8\n", "virtual_stages = 2\n", 8));
  const sim::Cluster c = sim::parse_cluster(cluster_text(100, 10, 2, 5), "t.toml");
  auto run = [&](int threads, std::string* trace) {
    sim::SimOptions o;
    o.threads = threads;
    o.trace_file = ::testing::TempDir() + "sim_threads_" + std::to_string(threads) + ".json";
    const sim::SimResult r = sim::simulate(d, c, o);
    std::ifstream f(o.trace_file);
    std::stringstream ss;
    ss << f.rdbuf();
    *trace = ss.str();
    return r;
  };
  std::string t1, t3;
  const sim::SimResult one = run(1, &t1), three = run(3, &t3);
  EXPECT_EQ(one.roles, 4);
  EXPECT_EQ(three.step_time_s, one.step_time_s);
  EXPECT_EQ(three.bubble_fraction, one.bubble_fraction);
  EXPECT_EQ(three.memory.peak, one.memory.peak);
  EXPECT_EQ(three.exposed_comm_s, one.exposed_comm_s);
  EXPECT_EQ(t3, t1) << "every task of every stage at the same time";
  Deck bad = d;  // set past the deck's own checks: the compiler refuses it for every stage
  bad.strategy.prefetch = -1;
  std::string m1, m3;
  for (int threads : {1, 3}) {
    sim::SimOptions o;
    o.threads = threads;
    try {
      sim::simulate(bad, c, o);
      ADD_FAILURE() << "strategy.prefetch = -1 was accepted (threads " << threads << ")";
    } catch (const InputError& e) {
      (threads == 1 ? m1 : m3) = e.what();
    }
  }
  EXPECT_NE(m1.find("strategy.prefetch = -1 must be >= 0"), std::string::npos) << m1;
  EXPECT_EQ(m3, m1);
}

// --search: the counts add up, the list is sorted and each entry's --set reproduces it; a
// device too small for any configuration leaves nothing.
TEST(Search, RanksValidConfigurationsThatFit) {
  const Deck d = deck_of(deck_text("data = 4"));
  const sim::Cluster c = sim::parse_cluster(cluster_text(100, 10, 4, 5), "t.toml");
  sim::SearchOptions o;
  o.top = 5;
  const sim::SearchResult r = sim::search(d, c, 4, o);
  EXPECT_GT(r.enumerated, 50);
  EXPECT_EQ(r.enumerated, r.invalid + r.pruned_memory + r.simulated + r.bounded);
  ASSERT_EQ(r.best.size(), 5u);
  // the bound prunes, and the list is the exhaustive search's; every bound is a lower bound
  o.exhaustive = true;
  o.top = 1000;
  const sim::SearchResult all = sim::search(d, c, 4, o);
  EXPECT_EQ(all.bounded, 0);
  EXPECT_GT(r.bounded, 0);
  EXPECT_LT(r.simulated, all.simulated);
  ASSERT_GE(all.best.size(), r.best.size());
  for (size_t i = 0; i < r.best.size(); ++i) {
    EXPECT_EQ(r.best[i].sets, all.best[i].sets);
    EXPECT_EQ(r.best[i].result.tokens_per_s, all.best[i].result.tokens_per_s);
  }
  for (const auto& cand : all.best) EXPECT_LE(cand.bound_s, cand.result.step_time_s * (1 + 1e-12)) << cand.sets;
  for (size_t i = 1; i < r.best.size(); ++i)
    EXPECT_GE(r.best[i - 1].result.tokens_per_s, r.best[i].result.tokens_per_s);
  for (const auto& cand : r.best) {
    std::vector<std::string> sets;
    std::istringstream in(cand.sets);
    for (std::string kv; in >> kv;) sets.push_back(kv);
    const Deck again = parse_deck(deck_text("data = 4"), "test-deck", ".", sets);
    EXPECT_DOUBLE_EQ(sim::simulate(again, c).tokens_per_s, cand.result.tokens_per_s) << cand.sets;
    EXPECT_TRUE(cand.result.fits);
  }
  // nothing fits in 1 MiB
  std::string tiny = cluster_text(100, 10, 4, 5);
  tiny.replace(tiny.find("memory_gib = 16.0"), 17, "memory_gib = 0.001");
  const sim::SearchResult none = sim::search(d, sim::parse_cluster(tiny, "tiny.toml"), 4, o);
  EXPECT_TRUE(none.best.empty());
  EXPECT_EQ(none.simulated, 0);
  EXPECT_EQ(none.pruned_memory, none.enumerated - none.invalid);
}

// [node] comm_on_compute_core (CPU ranks): collectives run on the compute stream, so all of
// their time is exposed and the step is longer than with overlap.
TEST(Simulate, CommunicationOnTheComputeCoreIsAllExposed) {
  const Deck d = deck_of(deck_text("data = 2"));
  std::string text = cluster_text(100, 1, 1, 5);
  const sim::SimResult overlap = sim::simulate(d, sim::parse_cluster(text, "t.toml"));
  text.replace(text.find("[node]\ndevices = 1\n"), 19, "[node]\ndevices = 1\ncomm_on_compute_core = true\n");
  const sim::SimResult core = sim::simulate(d, sim::parse_cluster(text, "t.toml"));
  EXPECT_NEAR(core.exposed_comm_s.at("data"), core.comm_busy_s.at("data"), 1e-12);
  EXPECT_NEAR(core.comm_busy_s.at("data"), overlap.comm_busy_s.at("data"), 1e-12);
  EXPECT_LT(overlap.exposed_comm_s.at("data"), overlap.comm_busy_s.at("data"));
  EXPECT_GT(core.step_time_s, overlap.step_time_s);
}

// [device] sixteen_bit_as_f32 (what `calibrate` writes for this machine's kernels): a bf16
// step costs the f32 step's elementwise bytes plus its rounding passes (every weight per use
// and every matmul output, 8 bytes an element; backward: the weight, dy and dx), the packs
// of what a layer keeps (qkv, probabilities, attention output, gate_up output and h: 10
// bytes) and their unpacks (6 bytes). With GEMMs free, the difference to f32 is exactly those
// bytes over the bandwidth; without the key a bf16 step moves 2-byte activations, and an f32
// step is the same either way.
TEST(Simulate, SixteenBitAsRoundedF32CostsItsPasses) {
  const std::string free_gemm = "f32 = 1e9, bf16 = 1e9, f16 = 1e9";
  std::string gpu = cluster_text(100, 100, 8);
  gpu.replace(gpu.find("f32 = 10.0, bf16 = 100.0, f16 = 100.0"), 37, free_gemm);
  std::string host = gpu;
  host.replace(host.find("[node]"), 6, "sixteen_bit_as_f32 = true\n[node]");
  const sim::Cluster cg = sim::parse_cluster(gpu, "gpu.toml"), ch = sim::parse_cluster(host, "host.toml");
  EXPECT_FALSE(cg.sixteen_bit_as_f32);
  ASSERT_TRUE(ch.sixteen_bit_as_f32);
  const Deck f32 = deck_of(deck_text("data = 1")), bf16 = deck_of(deck_text("data = 1", "precision = \"bf16\"\n"));
  const double t32 = sim::simulate(f32, ch).step_time_s;
  EXPECT_EQ(t32, sim::simulate(f32, cg).step_time_s);
  const double bf_gpu = sim::simulate(bf16, cg).step_time_s, bf_host = sim::simulate(bf16, ch).step_time_s;
  EXPECT_LT(bf_gpu, t32);  // 2-byte activations
  // deck_text: T = 16 · 128 tokens, H = 256, F = 688, V = 256, 4 heads, 4 layers, one micro-batch
  const double T = 16 * 128, H = 256, F = 688, V = 256, P = 16 * 4 * 128.0 * 128, L = 4;
  auto fwd = [&](double out, double in) { return 8 * (out * in + T * out); };
  auto bwd = [&](double out, double in) { return 8 * (out * in + T * out + T * in); };
  const double layer = fwd(3 * H, H) + fwd(H, H) + fwd(2 * F, H) + fwd(H, F) +  // forward roundings
                       10 * (T * 3 * H + P + T * H + T * 3 * F) +               // packs
                       bwd(H, F) + bwd(2 * F, H) + bwd(H, H) + bwd(3 * H, H) +  // backward roundings
                       6 * (T * 3 * H + P + T * H + T * 3 * F);                 // unpacks
  const double bytes = L * layer + fwd(V, H) + bwd(V, H);                       // and the head
  EXPECT_NEAR(bf_host - t32, bytes / 1000e9, 1e-9 * t32) << "host bf16 " << bf_host << " s, f32 " << t32 << " s";
}

// Attention dropout costs the compiled step's passes over the probabilities: the dropped P'
// made from P in every attention forward (P read, P' written: 2 elements) and again in the
// backward for dV (2 more); selective recomputation runs the attention core forward twice.
TEST(Simulate, AttentionDropoutCostsItsPasses) {
  std::string text = cluster_text(100, 100, 8);
  text.replace(text.find("f32 = 10.0, bf16 = 100.0, f16 = 100.0"), 37, "f32 = 1e9, bf16 = 1e9, f16 = 1e9");
  const sim::Cluster c = sim::parse_cluster(text, "free-gemm.toml");
  // deck_text: 16 sequences × 4 heads of 128 × 128 probabilities per layer, 4 layers, f32
  const double P = 16 * 4 * 128.0 * 128, L = 4;
  for (const std::string recompute : {"none", "selective"}) {
    const std::string strategy = "recompute = \"" + recompute + "\"\n";
    const double plain = sim::simulate(deck_of(deck_text("data = 1", "", strategy)), c).step_time_s;
    const std::string drop = deck_text("data = 1", "", strategy);
    const double dropped = sim::simulate(deck_of(drop.substr(0, drop.find("[train]")) + "attention_dropout = 0.1\n" +
                                                 drop.substr(drop.find("[train]"))),
                                         c)
                               .step_time_s;
    const double forwards = recompute == "selective" ? 2 : 1;
    EXPECT_NEAR(dropped - plain, L * P * 4 * 2 * (forwards + 1) / 1000e9, 1e-9 * plain) << recompute;
    // a CPU file's mask cost (dropout_mask_ns): each causal triangle's elements, once per
    // forward and twice in the backward
    std::string cpu = text;
    cpu.replace(cpu.find("[node]"), 6, "dropout_mask_ns = 2.5\n[node]");
    const sim::Cluster cc = sim::parse_cluster(cpu, "cpu.toml");
    EXPECT_EQ(cc.dropout_mask_ns, 2.5);
    EXPECT_EQ(sim::simulate(deck_of(deck_text("data = 1", "", strategy)), cc).step_time_s, plain);
    const double masked = sim::simulate(deck_of(drop.substr(0, drop.find("[train]")) + "attention_dropout = 0.1\n" +
                                                drop.substr(drop.find("[train]"))),
                                        cc)
                              .step_time_s;
    // a row's mask is made 64 elements at a time: 12,288 elements for a 128-row triangle
    ASSERT_EQ(nn::attention_dropout_generated(128), 12288);
    EXPECT_NEAR(masked - dropped, L * 16 * 4 * 12288.0 * 2.5e-9 * (forwards + 2), 1e-9 * plain) << recompute;
  }
  std::string bad = text;
  bad.replace(bad.find("[node]"), 6, "dropout_mask_ns = -1\n[node]");
  EXPECT_THROW(sim::parse_cluster(bad, "bad.toml"), InputError);
}

// The Llama family and context parallelism go through the same compiled step: on c context
// ranks each rank's attention work is its share of the causal square (3 of the (2c)² chunk
// pairs for its own block, 2 for every other), its ring messages are the key/value blocks
// (c − 1 per layer and micro-batch forward, 2c − 1 backward, 2·K·D columns), and a fast
// link hides them behind the blocks' compute.
TEST(Simulate, LlamaContextParallelRingIsCostedAndHidden) {
  const std::string llama = "family = \"llama\"\nkv_heads = 2\n";
  std::string text = deck_text("data = 1\ncontext = 2");
  text.insert(text.find("vocab"), llama);
  const Deck d = deck_of(text);
  const sim::Cluster c = sim::parse_cluster(cluster_text(1000, 1000, 8), "t.toml");
  const sim::SimResult r = sim::simulate(d, c);
  ASSERT_GT(r.step_time_s, 0);
  ASSERT_TRUE(r.comm_busy_s.count("context"));
  // bytes: tokens_mb · 2·K·D · 4 per message, (1 + 3) messages per layer on 2 ranks, 4
  // layers; the busy time counts each message's send and its receive
  const double T = 16.0 * 128 / 2, bytes = T * 2 * 2 * 64 * 4, msgs = 2 * 4.0 * (1 + 3);
  EXPECT_NEAR(r.comm_busy_s.at("context"), msgs * bytes / 1000e9, 1e-3 * msgs * bytes / 1000e9);
  // a fast link: forward kv blocks hide behind compute, backward dK|dV cannot (it follows its block's compute)
  EXPECT_LT(r.exposed_comm_s.at("context"), r.comm_busy_s.at("context"));
  // one rank runs the whole sequence: the two context ranks are each faster
  std::string one = text;
  one.replace(one.find("context = 2"), 11, "context = 1");
  const sim::SimResult r1 = sim::simulate(deck_of(one), c);
  EXPECT_LT(r.step_time_s, r1.step_time_s);
  EXPECT_GT(r.step_time_s, r1.step_time_s / 2);  // the ring's diagonal pairs are whole C x C products
}

// An MoE model's search also splits the batch over an expert axis (up to the experts), and
// each such entry's --set reproduces it.
TEST(Search, MixtureOfExpertsTriesTheExpertAxis) {
  std::string text = deck_text("data = 4");
  text.insert(text.find("layers"), "experts = 4\ntop_k = 2\nmoe_every = 2\n");
  const Deck d = deck_of(text);
  const sim::Cluster c = sim::parse_cluster(cluster_text(100, 10, 4, 5), "t.toml");
  sim::SearchOptions o;
  o.top = 1000;
  o.exhaustive = true;
  const sim::SearchResult r = sim::search(d, c, 4, o);
  int expert = 0;
  for (const auto& cand : r.best) {
    if (cand.sets.find("mesh.expert=1") != std::string::npos) continue;
    ++expert;
    EXPECT_TRUE(cand.sets.find("mesh.expert=2") != std::string::npos || cand.sets.find("mesh.expert=4") != std::string::npos)
        << cand.sets;
    std::vector<std::string> sets;
    std::istringstream in(cand.sets);
    for (std::string kv; in >> kv;) sets.push_back(kv);
    EXPECT_DOUBLE_EQ(sim::simulate(parse_deck(text, "test-deck", ".", sets), c).tokens_per_s,
                     cand.result.tokens_per_s)
        << cand.sets;
  }
  EXPECT_GT(expert, 0);
}
