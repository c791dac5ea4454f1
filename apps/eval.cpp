// `shardflow eval --resume DIR --tokens FILE`: the mean cross-entropy of a checkpoint's
// model on a byte file cut into consecutive sequences of S+1 bytes (a trailing partial
// sequence is ignored). Any number of ranks: the checkpoint is restored through the gather
// path into a full copy of the parameters on every rank, and the ranks split the sequences.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "comm/control.hpp"
#include "ckpt/checkpoint.hpp"
#include "command.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "nn/gpt.hpp"

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
  const Deck deck = parse_deck(deck_it->second, dir + "/manifest.json (deck)");
  const auto cfg = nn::GptConfig::from(deck.model);
  nn::GptModel<float> model(cfg, o.batch);

  // Every rank restores a full copy of each parameter (replicated layout over this job).
  MeshShape job({"data"}, {world});
  std::vector<ckpt::TensorState> wanted;
  for (const auto& p : model.parameters()) {
    const auto* rec = manifest.find(p.name);
    SHARDFLOW_REQUIRE_INPUT(rec, "checkpoint ", dir, " has no tensor '", p.name, "'");
    SHARDFLOW_REQUIRE_INPUT(numel(rec->shape) == p.numel, "checkpoint ", dir, ": tensor '", p.name, "' has ",
                            numel(rec->shape), " elements, the model needs ", p.numel);
    wanted.push_back({p.name, Layout::replicated(rec->shape, job), DType::F32, model.param(p.name).data()});
  }
  ckpt::RestoreOptions ro;
  ro.allow_extra = true;  // optimizer moments are not needed here
  ckpt::restore(MPI_COMM_WORLD, dir, wanted, ro);

  const auto corpus = data::Corpus::load(o.tokens);
  const int64_t S = cfg.seq, nseq = corpus.size() / (S + 1);
  SHARDFLOW_REQUIRE_INPUT(nseq >= 1, "--tokens ", o.tokens, " has ", corpus.size(), " bytes, fewer than one sequence of ",
                          S + 1);
  const auto mine = data::replica_slice(nseq, world, rank);
  Kokkos::View<int32_t*> in("in", static_cast<size_t>(o.batch * S)), tg("tg", static_cast<size_t>(o.batch * S));
  double sum = 0;
  for (int64_t first = mine.begin; first < mine.begin + mine.count; first += o.batch) {
    const int64_t b = std::min(o.batch, mine.begin + mine.count - first);
    auto hi = Kokkos::create_mirror_view(in);
    auto ht = Kokkos::create_mirror_view(tg);
    for (int64_t i = 0; i < b; ++i)
      for (int64_t s = 0; s < S; ++s) {
        const size_t off = static_cast<size_t>((first + i) * (S + 1) + s);
        hi(i * S + s) = corpus.bytes()[off];
        ht(i * S + s) = corpus.bytes()[off + 1];
      }
    Kokkos::deep_copy(in, hi);
    Kokkos::deep_copy(tg, ht);
    auto in_b = Kokkos::subview(in, std::make_pair<size_t, size_t>(0, static_cast<size_t>(b * S)));
    auto tg_b = Kokkos::subview(tg, std::make_pair<size_t, size_t>(0, static_cast<size_t>(b * S)));
    sum += model.forward(in_b, tg_b) * static_cast<double>(b * S);
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
