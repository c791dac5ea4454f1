// The TOML input deck: the shipped decks, defaults, overrides, and every kind of error
// naming the key, the value and file:line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "config/deck.hpp"
#include "core/error.hpp"

using namespace shardflow;

namespace {
std::string error_of(const std::string& text, const std::vector<std::string>& sets = {}) {
  try {
    parse_deck(text, "deck.toml", "/decks", sets);
  } catch (const InputError& e) {
    return e.what();
  }
  return "<no InputError>";
}
const std::string kSource = SHARDFLOW_SOURCE_DIR;
}  // namespace

TEST(Deck, QuickstartDeck) {
  Deck d = load_deck(kSource + "/inputs/quickstart.toml");
  EXPECT_EQ(d.mesh.data, 2);
  EXPECT_EQ(d.mesh.size(), 2);
  EXPECT_EQ(d.mesh.to_mesh_shape().to_string(), "data=2");
  EXPECT_EQ(d.model, ModelConfig::quickstart());
  EXPECT_EQ(d.train.steps, 200);
  EXPECT_EQ(d.train.global_batch, 16);
  EXPECT_DOUBLE_EQ(d.train.lr, 3e-3);
  EXPECT_EQ(d.train.warmup, 20);
  EXPECT_EQ(d.train.seed, 1234);
  EXPECT_EQ(d.train.data, (std::filesystem::path(kSource) / "inputs" / "corpus.txt").lexically_normal().string());
  EXPECT_EQ(d.micro_batch_size(), 8);
  EXPECT_EQ(d.strategy.schedule, PipelineSchedule::OneFOneB);
  EXPECT_EQ(d.where("train.lr"), kSource + "/inputs/quickstart.toml:18");
  EXPECT_NO_THROW(check_world_size(d, 2));
}

TEST(Deck, BenchDeck) {
  Deck d = load_deck(kSource + "/inputs/bench.toml");
  EXPECT_EQ(d.model.hidden, 256);
  EXPECT_EQ(d.model.heads, 4);
  EXPECT_EQ(d.model.ffn, 688);
  EXPECT_EQ(d.model.layers, 4);
  EXPECT_EQ(d.model.vocab, 256);
  EXPECT_EQ(d.model.seq, 128);
  EXPECT_EQ(d.train.global_batch, 8);
}

TEST(Deck, DefaultsAndAllKeys) {
  Deck d = parse_deck("", "empty.toml", "/work/run");
  EXPECT_EQ(d.mesh.size(), 1);
  EXPECT_EQ(d.model, ModelConfig::quickstart());
  EXPECT_EQ(d.checkpoint.dir, "/work/run/checkpoints");
  EXPECT_EQ(d.strategy.zero_stage, 0);
  const std::string text = R"([mesh]
data = 2
fsdp = 2
tensor = 2
pipeline = 2
expert = 1
[model]
vocab = 300
seq = 32
hidden = 64
heads = 2
ffn = 100
layers = 4
experts = 0
top_k = 0
moe_every = 0
[train]
steps = 5
global_batch = 32
micro_batches = 4
lr = 1
warmup = 0
seed = 7
data = "/abs/corpus.bin"
[strategy]
zero_stage = 3
fsdp_min_weight_size = 0
gather_dtype = "bf16"
grad_scatter_dtype = "f16"
prefetch = 0
schedule = "gpipe"
sequence_parallel = true
[checkpoint]
dir = "ckpt"
every = 10
keep = 3
async = true
)";
  d = parse_deck(text, "all.toml", "/runs/a");
  EXPECT_EQ(d.mesh.to_mesh_shape().to_string(), "data=2 x fsdp=2 x pipeline=2 x tensor=2");
  EXPECT_EQ(d.model.vocab, 300);
  EXPECT_DOUBLE_EQ(d.train.lr, 1.0);  // an integer is accepted for a float key
  EXPECT_EQ(d.train.data, "/abs/corpus.bin");
  EXPECT_EQ(d.micro_batch_size(), 2);  // 32 / (2*2) / 4
  EXPECT_EQ(d.strategy.gather_dtype, DType::BF16);
  EXPECT_EQ(d.strategy.grad_scatter_dtype, DType::F16);
  EXPECT_EQ(d.strategy.schedule, PipelineSchedule::GPipe);
  EXPECT_TRUE(d.strategy.sequence_parallel);
  EXPECT_EQ(d.checkpoint.dir, "/runs/a/ckpt");
  EXPECT_TRUE(d.checkpoint.async);
  // Round trip through the TOML writer.
  Deck again = parse_deck(deck_to_toml(d), "again.toml", "/elsewhere");
  EXPECT_EQ(again.mesh.size(), d.mesh.size());
  EXPECT_EQ(again.model, d.model);
  EXPECT_EQ(again.train.global_batch, d.train.global_batch);
  EXPECT_DOUBLE_EQ(again.train.lr, d.train.lr);
  EXPECT_EQ(again.train.data, d.train.data);
  EXPECT_EQ(again.checkpoint.dir, d.checkpoint.dir);
  EXPECT_EQ(again.strategy.schedule, d.strategy.schedule);
  EXPECT_EQ(again.strategy.zero_stage, 3);
}

TEST(Deck, ErrorsNameKeyValueAndLine) {
  EXPECT_EQ(error_of("[mesh]\ndata = 1\n[meshh]\ndata = 2\n"),
            "deck.toml:3: unknown section [meshh] (known sections: mesh, model, train, strategy, checkpoint)");
  std::string m = error_of("[model]\nhidden = 128\nhiden = 3\n");
  EXPECT_EQ(m.rfind("deck.toml:3: unknown key 'model.hiden'", 0), 0u) << m;
  EXPECT_EQ(error_of("[model]\nhidden = \"big\"\n"),
            "deck.toml:2: model.hidden = \"big\" has the wrong type: expected an integer, got a string");
  EXPECT_EQ(error_of("[train]\nlr = \"fast\"\n"),
            "deck.toml:2: train.lr = \"fast\" has the wrong type: expected a number, got a string");
  EXPECT_EQ(
      error_of("[strategy]\nsequence_parallel = 1\n"),
      "deck.toml:2: strategy.sequence_parallel = 1 has the wrong type: expected a boolean (true or false), got an "
      "integer");
  EXPECT_EQ(error_of("[mesh]\ndata = 2\n[train]\nglobal_batch = 10\nmicro_batches = 2\n"),
            "deck.toml:4: train.global_batch = 10 is not divisible by data-parallel size x micro_batches = 2 x 2 = 4 "
            "(data-parallel size = mesh.data x mesh.fsdp x mesh.expert)");
  EXPECT_EQ(error_of("[model]\nhidden = 128\n\nheads = 5\n"),
            "deck.toml:4: model.heads = 5 does not divide model.hidden = 128");
  EXPECT_EQ(error_of("[mesh]\ndata = 0\n"), "deck.toml:2: mesh.data = 0 must be >= 1");
  EXPECT_EQ(error_of("[mesh]\ntensor = -2\n"), "deck.toml:2: mesh.tensor = -2 must be >= 1");
  EXPECT_EQ(error_of("[model]\nlayers = 0\n"), "deck.toml:2: model.layers = 0 must be >= 1");
  EXPECT_EQ(error_of("[strategy]\nzero_stage = 5\n"), "deck.toml:2: strategy.zero_stage = 5 must be in 0..3");
  EXPECT_EQ(error_of("[strategy]\nschedule = \"zigzag\"\n"),
            "deck.toml:2: strategy.schedule = \"zigzag\" must be \"gpipe\" or \"1f1b\"");
  EXPECT_EQ(error_of("[strategy]\ngather_dtype = \"f64\"\n"),
            "deck.toml:2: strategy.gather_dtype = \"f64\" must be one of \"f32\", \"bf16\", \"f16\"");
  EXPECT_EQ(error_of("[train]\nlr = -0.1\n"), "deck.toml:2: train.lr = -0.1 must be > 0");
  EXPECT_EQ(error_of("mesh = 3\n"), "deck.toml:1: 'mesh' must be a section [mesh], not an integer");
  m = error_of("[mesh]\ndata = = 2\n");
  EXPECT_EQ(m.rfind("deck.toml:2:", 0), 0u) << m;
  EXPECT_NE(m.find("TOML syntax error"), std::string::npos) << m;
  // The mesh must shard the model: more tensor devices than heads.
  m = error_of("[mesh]\ntensor = 8\n[train]\nglobal_batch = 8\n");
  EXPECT_EQ(m.rfind("deck.toml:2: mesh data=1 x tensor=8 cannot shard model", 0), 0u) << m;
  EXPECT_NE(m.find("8 devices but only 4 heads"), std::string::npos) << m;
  m = error_of("[mesh]\npipeline = 5\n[train]\nglobal_batch = 5\n");
  EXPECT_NE(m.find("5 stages but only 4 layers"), std::string::npos) << m;
  m = error_of("[model]\nexperts = 2\n");
  EXPECT_NE(m.find("model.top_k = 0"), std::string::npos) << m;
}

// model.attention_dropout: read, written out and read back, validated with the key, the value
// and the line; a checkpoint's model check ignores it (it is not a shape).
TEST(Deck, AttentionDropout) {
  Deck d = parse_deck("[model]\nattention_dropout = 0.1\n", "deck.toml", "/decks");
  EXPECT_DOUBLE_EQ(d.model.attention_dropout, 0.1);
  EXPECT_DOUBLE_EQ(parse_deck(deck_to_toml(d), "again.toml", "/decks").model.attention_dropout, 0.1);
  EXPECT_EQ(parse_deck("", "empty.toml", "/decks").model.attention_dropout, 0.0);
  EXPECT_EQ(error_of("[model]\nattention_dropout = 1.0\n"),
            "deck.toml:2: model.attention_dropout = 1 must be a number in [0, 1)");
  EXPECT_EQ(error_of("[model]\nattention_dropout = -0.1\n"),
            "deck.toml:2: model.attention_dropout = -0.1 must be a number in [0, 1)");
  EXPECT_EQ(error_of("[model]\nattention_dropout = nan\n"),
            "deck.toml:2: model.attention_dropout = nan is not a finite number");
  Deck plain = parse_deck("", "empty.toml", "/decks");
  EXPECT_EQ(plain.model, d.model);
  EXPECT_NE(d.model.to_string().find("attention_dropout=0.1"), std::string::npos) << d.model.to_string();
}

// The MoE capacity factor and load-balancing coefficient: read, round-tripped, validated
// with the key, the value and the line, and refused on a dense model.
TEST(Deck, MoeKeys) {
  const std::string moe = "[model]\nexperts = 4\ntop_k = 2\nmoe_every = 2\n";
  Deck d = parse_deck(moe, "deck.toml", "/decks");
  EXPECT_DOUBLE_EQ(d.model.capacity_factor, 1.25);
  EXPECT_DOUBLE_EQ(d.model.aux_loss_coef, 0.01);
  d = parse_deck(moe + "capacity_factor = 2\naux_loss_coef = 0.05\n", "deck.toml", "/decks");
  EXPECT_DOUBLE_EQ(d.model.capacity_factor, 2.0);
  EXPECT_DOUBLE_EQ(d.model.aux_loss_coef, 0.05);
  Deck again = parse_deck(deck_to_toml(d), "again.toml", "/elsewhere");
  EXPECT_EQ(again.model, d.model);
  d = parse_deck(moe, "deck.toml", "/decks", {"model.aux_loss_coef=0"});
  EXPECT_EQ(d.model.aux_loss_coef, 0.0);
  EXPECT_EQ(error_of(moe + "capacity_factor = 0\n"), "deck.toml:5: model.capacity_factor = 0 must be a finite number > 0");
  EXPECT_EQ(error_of(moe + "capacity_factor = -1.5\n"),
            "deck.toml:5: model.capacity_factor = -1.5 must be a finite number > 0");
  EXPECT_EQ(error_of(moe + "capacity_factor = inf\n"),
            "deck.toml:5: model.capacity_factor = inf is not a finite number");
  EXPECT_EQ(error_of(moe + "aux_loss_coef = -0.01\n"),
            "deck.toml:5: model.aux_loss_coef = -0.01 must be a finite number >= 0");
  EXPECT_EQ(error_of(moe, {"model.capacity_factor=nan"}).rfind("--set model.capacity_factor=nan:", 0), 0u);
  EXPECT_EQ(error_of("[model]\ncapacity_factor = 2\n"),
            "deck.toml:2: model.capacity_factor = 2 needs model.experts > 0 (the model is dense with experts = 0)");
  EXPECT_EQ(error_of("[model]\naux_loss_coef = 0.5\n"),
            "deck.toml:2: model.aux_loss_coef = 0.5 needs model.experts > 0 (the model is dense with experts = 0)");
  // the defaults written out for a dense model read back
  Deck dense = parse_deck("", "empty.toml", "/decks");
  EXPECT_EQ(parse_deck(deck_to_toml(dense), "again.toml", "/decks").model, dense.model);
  // ModelConfig::validate names the key too (for configs built in code)
  ModelConfig c;
  c.experts = 4;
  c.top_k = 1;
  c.moe_every = 1;
  c.capacity_factor = 0;
  try {
    c.validate();
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), "model.capacity_factor = 0 must be a finite number > 0");
  }
}

// strategy.virtual_stages (interleaved 1F1B) and the rules it needs, named at its line.
TEST(Deck, VirtualStages) {
  const std::string pp = "[mesh]\npipeline = 2\n[train]\nglobal_batch = 8\nmicro_batches = 4\n[strategy]\n";
  EXPECT_EQ(parse_deck(pp, "deck.toml", "/decks").strategy.virtual_stages, 1);
  Deck d = parse_deck(pp + "virtual_stages = 2\n", "deck.toml", "/decks");
  EXPECT_EQ(d.strategy.virtual_stages, 2);
  EXPECT_EQ(parse_deck(deck_to_toml(d), "again.toml", "/decks").strategy.virtual_stages, 2);
  EXPECT_EQ(error_of(pp + "virtual_stages = 0\n"), "deck.toml:7: strategy.virtual_stages = 0 must be >= 1");
  EXPECT_EQ(error_of("[strategy]\nvirtual_stages = 2\n"),
            "deck.toml:2: strategy.virtual_stages = 2 needs mesh.pipeline > 1");
  EXPECT_EQ(error_of(pp + "virtual_stages = 2\nschedule = \"gpipe\"\n"),
            "deck.toml:7: strategy.virtual_stages = 2 interleaves the 1f1b schedule, not gpipe");
  EXPECT_EQ(error_of(pp + "virtual_stages = 2\n", {"train.micro_batches=2", "mesh.pipeline=4"}),
            "deck.toml:7: strategy.virtual_stages = 2 needs train.micro_batches = 2 to be a multiple of "
            "mesh.pipeline = 4");
  EXPECT_EQ(error_of(pp + "virtual_stages = 3\n"),
            "deck.toml:7: strategy.virtual_stages = 3: mesh.pipeline = 2 x 3 chunks but only model.layers = 4");
}

TEST(Deck, Overrides) {
  const std::string base = "[mesh]\ndata = 2\n[train]\nglobal_batch = 8\n";
  Deck d = parse_deck(base, "deck.toml", "/decks",
                      {"train.lr=1e-4", "mesh.data=4", "train.data=local.txt", "strategy.sequence_parallel=true",
                       "strategy.schedule=gpipe", "model.heads=8"});
  EXPECT_DOUBLE_EQ(d.train.lr, 1e-4);
  EXPECT_EQ(d.mesh.data, 4);
  EXPECT_EQ(d.train.data, "local.txt");  // --set paths are taken as given
  EXPECT_TRUE(d.strategy.sequence_parallel);
  EXPECT_EQ(d.strategy.schedule, PipelineSchedule::GPipe);
  EXPECT_EQ(d.model.heads, 8);
  EXPECT_EQ(d.where("mesh.data"), "--set mesh.data=4");
  EXPECT_EQ(error_of(base, {"model.hidden=abc"}),
            "--set model.hidden=abc: model.hidden = abc has the wrong type: expected an integer");
  EXPECT_EQ(error_of(base, {"strategy.async=true"}).rfind("--set strategy.async=true: unknown key 'strategy.async'", 0),
            0u);
  EXPECT_EQ(error_of(base, {"foo.bar=1"}).rfind("--set foo.bar=1: unknown section [foo]", 0), 0u);
  EXPECT_EQ(error_of(base, {"lr=1"}), "--set lr=1: expected section.key=value");
  // a number that is not finite is called that, not a wrong type (issue 15 item 7)
  EXPECT_EQ(error_of(base, {"train.lr=nan"}), "--set train.lr=nan: train.lr = nan is not a finite number");
  EXPECT_EQ(error_of(base, {"train.lr=-inf"}), "--set train.lr=-inf: train.lr = -inf is not a finite number");
  EXPECT_EQ(error_of("[train]\nlr = nan\n"), "deck.toml:2: train.lr = nan is not a finite number");
  EXPECT_EQ(error_of(base, {"train.lr"}), "--set train.lr: expected section.key=value");
  EXPECT_EQ(
      error_of(base, {"checkpoint.async=yes"}),
      "--set checkpoint.async=yes: checkpoint.async = yes has the wrong type: expected a boolean (true or false)");
  // An override that breaks a cross-key rule is reported at the override.
  EXPECT_EQ(error_of(base, {"train.global_batch=7"}).rfind("--set train.global_batch=7: train.global_batch = 7", 0),
            0u);
}

TEST(Deck, WorldSizeCheck) {
  Deck d = parse_deck("[mesh]\ndata = 2\ntensor = 2\n[train]\nglobal_batch = 8\n", "deck.toml", "/decks");
  EXPECT_NO_THROW(check_world_size(d, 4));
  try {
    check_world_size(d, 2);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), "deck.toml:2: [mesh] data=2 x tensor=2 has 4 devices but the job has 2 ranks");
  }
  Deck t = parse_deck("[train]\nglobal_batch = 4\n[mesh]\ntensor = 2\n", "t.toml", "/decks");
  EXPECT_THROW(check_world_size(t, 1), InputError);
  try {
    check_world_size(t, 4);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), "t.toml:4: [mesh] data=1 x tensor=2 has 2 devices but the job has 4 ranks");
  }
  Deck none = parse_deck("", "empty.toml", "/decks");
  EXPECT_NO_THROW(check_world_size(none, 1));
  EXPECT_THROW(check_world_size(none, 2), InputError);
}

TEST(Deck, FilesAndRelativePaths) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("shardflow_deck_test_" + std::to_string(::getpid()));
  fs::create_directories(dir / "sub");
  { std::ofstream(dir / "sub" / "d.toml") << "[train]\ndata = \"../corpus.txt\"\n[checkpoint]\ndir = \"/tmp/abs\"\n"; }
  Deck d = load_deck((dir / "sub" / "d.toml").string());
  EXPECT_EQ(d.train.data, (dir / "corpus.txt").string());
  EXPECT_EQ(d.checkpoint.dir, "/tmp/abs");
  fs::remove_all(dir);
  try {
    load_deck("/nonexistent/deck.toml");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/deck.toml"), std::string::npos);
  }
}

// A directory given as the deck is refused, naming it (it used to parse as an empty deck).
TEST(Deck, DirectoryIsNotADeck) {
  try {
    load_deck("/tmp");
    FAIL() << "a directory parsed as a deck";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'/tmp' is a directory"), std::string::npos) << e.what();
  }
}

// A mesh of the wrong size for the job is the error reported, before what it makes of the
// batch (mesh.data = 3 on 2 ranks used to say the batch of 16 is not divisible by 3).
TEST(Deck, JobSizeIsCheckedFirst) {
  const std::string text = "[mesh]\ndata = 3\n[train]\nglobal_batch = 16\n";
  try {
    parse_deck(text, "job.toml", ".", {}, 2);
    FAIL() << "a 3-device mesh passed for 2 ranks";
  } catch (const InputError& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("has 3 devices but the job has 2 ranks"), std::string::npos) << w;
    EXPECT_NE(w.find("job.toml:2"), std::string::npos) << w;
  }
  EXPECT_THROW(parse_deck(text, "job.toml", ".", {}, 0), InputError);  // still refused (the batch) without a job size
  EXPECT_NO_THROW(parse_deck("[mesh]\ndata = 2\n[train]\nglobal_batch = 16\n", "job.toml", ".", {}, 2));
}
