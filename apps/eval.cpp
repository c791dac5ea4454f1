// `shardflow eval --resume DIR --tokens FILE`: the mean cross-entropy of a checkpoint's
// model on a byte file cut into consecutive sequences of S+1 bytes (a trailing partial
// sequence is ignored). Any number of ranks: the checkpoint is restored through the gather
// path into a full copy of the parameters on every rank, and the ranks split the sequences.
// The model is the trainer's compiled forward (StepMode::Evaluate), so MoE checkpoints work.
#include <cstdio>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "comm/control.hpp"
#include "ckpt/checkpoint.hpp"
#include "command.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "comm/comm_set.hpp"
#include "comm/mesh.hpp"
#include "train/trainer.hpp"

namespace {

using namespace shardflow;

struct EvalOptions {
  std::string resume, tokens, summary;
  int64_t batch = 8;
};

int run_eval(const EvalOptions& o) {
  const int rank = app::world_rank();
  const int world = comm::Control::world().size();
  SHARDFLOW_REQUIRE_INPUT(o.batch >= 1, "--batch ", o.batch, " must be >= 1");
  const std::string dir = ckpt::resolve_checkpoint_dir(o.resume);
  const auto manifest = ckpt::read_manifest(dir);
  auto deck_it = manifest.meta.strings.find("deck");
  SHARDFLOW_REQUIRE_INPUT(deck_it != manifest.meta.strings.end(), "checkpoint ", dir,
                          " has no deck in its metadata: it was not written by `shardflow train`");
  const Deck saved = parse_deck(deck_it->second, dir + "/manifest.json (deck)");
  // The checkpoint's model through the trainer's own compiled forward (MODEL.md once: dense
  // and MoE alike), one rank per model copy: every rank holds the whole model and the ranks
  // split the sequences. Batches of --batch sequences, the last one of what is left.
  auto eval_deck = [&](int64_t batch) {
    Deck d = saved;
    d.mesh = MeshSection{};
    d.strategy.zero_stage = 0;
    d.strategy.virtual_stages = 1;
    d.strategy.sequence_parallel = false;
    d.train.micro_batches = 1;
    d.train.global_batch = batch;
    return d;
  };
  const Mesh self(eval_deck(1).mesh.to_mesh_shape(), MPI_COMM_SELF);
  comm::CommSet comms(self, comm::Backend::Mpi);
  train::Trainer model(eval_deck(o.batch), self, comms, /*evaluate=*/true);

  // a trainer's parameters (its state without the optimizer moments), in MODEL.md order
  auto parameters = [](train::Trainer& t) {
    const auto names = t.parameter_names();
    const std::set<std::string> wanted_names(names.begin(), names.end());
    std::vector<train::StateTensor> out;
    for (auto& s : t.state_tensors())
      if (wanted_names.count(s.name)) out.push_back(s);
    return out;
  };
  // Every rank restores a full copy of each parameter (replicated layout over this job).
  MeshShape job({"data"}, {world});
  std::vector<ckpt::TensorState> wanted;
  const std::vector<train::StateTensor> params = parameters(model);
  for (const auto& t : params) {
    const auto* rec = manifest.find(t.name);
    SHARDFLOW_REQUIRE_INPUT(rec, "checkpoint ", dir, " has no tensor '", t.name, "'");
    SHARDFLOW_REQUIRE_INPUT(numel(rec->shape) == t.numel, "checkpoint ", dir, ": tensor '", t.name, "' has ",
                            numel(rec->shape), " elements, the model needs ", t.numel);
    wanted.push_back({t.name, Layout::replicated(rec->shape, job), DType::F32, t.data});
  }
  ckpt::RestoreOptions ro;
  ro.allow_extra = true;
  ro.in_place = true;  // fresh buffers: nothing to keep on a failure (which ends the run)
  ckpt::restore(MPI_COMM_WORLD, dir, wanted, ro);

  const auto corpus = data::Corpus::load(o.tokens);
  const int64_t S = saved.model.seq, nseq = corpus.size() / (S + 1);
  SHARDFLOW_REQUIRE_INPUT(nseq >= 1, "--tokens ", o.tokens, " has ", corpus.size(), " bytes, fewer than one sequence of ",
                          S + 1);
  const auto mine = data::replica_slice(nseq, world, rank);
  std::unique_ptr<train::Trainer> tail;  // the last, smaller batch
  double sum = 0;
  for (int64_t first = mine.begin; first < mine.begin + mine.count; first += o.batch) {
    const int64_t b = std::min(o.batch, mine.begin + mine.count - first);
    train::Trainer* m = &model;
    if (b < o.batch) {
      tail = std::make_unique<train::Trainer>(eval_deck(b), self, comms, true);
      const auto to = parameters(*tail);  // the same tensors, one rank, whole
      for (size_t k = 0; k < params.size(); ++k) std::copy(params[k].data, params[k].data + to[k].numel, to[k].data);
      m = tail.get();
    }
    std::vector<int32_t> in(static_cast<size_t>(b * S)), tg(static_cast<size_t>(b * S));
    for (int64_t i = 0; i < b; ++i)
      for (int64_t s = 0; s < S; ++s) {
        const size_t off = static_cast<size_t>((first + i) * (S + 1) + s);
        in[static_cast<size_t>(i * S + s)] = corpus.bytes()[off];
        tg[static_cast<size_t>(i * S + s)] = corpus.bytes()[off + 1];
      }
    sum += m->evaluate(in, tg);
  }
  const double total = comm::Control::world().sum(sum);
  const double loss = total / static_cast<double>(nseq * S);
  if (rank == 0) {
    std::printf("eval: checkpoint %s (step %lld) on %s: loss %.6f over %lld sequences (%lld tokens)\n", dir.c_str(),
                static_cast<long long>(manifest.step), o.tokens.c_str(), loss, static_cast<long long>(nseq),
                static_cast<long long>(nseq * S));
    if (!o.summary.empty()) {
      nlohmann::json j{{"checkpoint", dir},   {"step", manifest.step},   {"tokens_file", o.tokens},
                       {"loss", loss},        {"sequences", nseq},       {"tokens", nseq * S},
                       {"world_size", world}};
      std::ofstream os(o.summary);
      SHARDFLOW_REQUIRE_INPUT(os.good(), "--summary: cannot write '", o.summary, "'");
      os << j.dump(2) << "\n";
    }
  }
  return 0;
}

app::CommandRegistration reg("eval", "mean cross-entropy of a checkpoint's model on a byte file", [](CLI::App& sub) {
  auto o = std::make_shared<EvalOptions>();
  sub.add_option("--resume", o->resume, "checkpoint: a step directory or a checkpoint root (its latest)")->required();
  sub.add_option("--tokens", o->tokens, "byte file to evaluate on")->required();
  sub.add_option("--summary", o->summary, "write {loss, sequences, tokens, ...} as JSON");
  sub.add_option("--batch", o->batch, "sequences per forward pass on each rank (default 8)");
  return [o] { return run_eval(*o); };
});

}  // namespace
