// The step compiler without MPI: every rank of a mesh compiled in one process.
//  - Every group of ranks agrees on the collectives of its communicator, in order, and
//    every pipeline send has its receive at the peer (what the verify pass checks at run
//    time, proved here for meshes of up to 64 ranks that this machine cannot run).
//  - The buffer plan's model state equals the LayoutPlan's state bytes on every rank.
//  - Rank 12345 of a 16,384-device, 96-layer mesh compiles in seconds, and its collective
//    counts equal the counts the block program implies.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <set>
#include <sstream>

#include "compile/compiler.hpp"
#include "compile/summary.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"

using namespace shardflow;

namespace {

const char* kDeck = R"(
[mesh]
data = 1
[model]
vocab = 256
seq = 16
hidden = 64
heads = 4
ffn = 96
layers = 8
[train]
global_batch = 64
micro_batches = 4
data = "corpus.txt"
[strategy]
zero_stage = 0
fsdp_min_weight_size = 64
)";

Deck deck_with(const std::vector<std::string>& sets) { return parse_deck(kDeck, "test_compile", ".", sets); }

std::vector<compile::StepProgram> compile_all(const Deck& d) {
  const MeshShape mesh = d.mesh.to_mesh_shape();
  const parallel::LayoutPlan plan = compile::layout_plan(d, mesh);
  std::vector<compile::StepProgram> out;
  for (int r = 0; r < mesh.size(); ++r) out.push_back(compile::compile_step(d, plan, r));
  return out;
}

// The axes of a communicator key.
std::vector<std::string> key_axes(const std::string& key) {
  std::vector<std::string> axes;
  std::string cur;
  for (char c : key + "+") {
    if (c == '+') {
      axes.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return axes;
}

// Empty when every communicator's ranks issue the same collectives in the same order and
// every send has its receive; otherwise the first disagreement.
std::string disagreement(const std::vector<compile::StepProgram>& progs) {
  const MeshShape& mesh = progs.front().shape.mesh;
  for (size_t r = 0; r < progs.size(); ++r) {
    std::vector<std::string> keys;
    for (const auto& t : progs[r].tasks)
      if (t.is_comm && std::find(keys.begin(), keys.end(), t.comm.desc.comm) == keys.end())
        keys.push_back(t.comm.desc.comm);
    for (const auto& key : keys) {
      const auto axes = key_axes(key);
      const auto members = mesh.group_ranks(static_cast<int>(r), axes);
      if (key == "pipeline") {
        // p2p: what r sends to each peer coordinate equals what that peer receives from r
        const int me = mesh.coord(static_cast<int>(r), key);
        std::map<int, std::vector<std::string>> sent;
        for (const auto& t : progs[r].tasks)
          if (t.is_comm && t.comm.desc.comm == key && t.comm.desc.kind == "send")
            sent[t.comm.peer].push_back(t.comm.desc.tensor);
        for (const auto& [peer, msgs] : sent) {
          std::vector<std::string> got;
          for (const auto& t : progs[static_cast<size_t>(members[static_cast<size_t>(peer)])].tasks)
            if (t.is_comm && t.comm.desc.comm == key && t.comm.desc.kind == "recv" && t.comm.peer == me)
              got.push_back(t.comm.desc.tensor);
          if (got != msgs)
            return "rank " + std::to_string(r) + " sends " + std::to_string(msgs.size()) + " messages to stage " +
                   std::to_string(peer) + ", which receives " + std::to_string(got.size()) + " in another order";
        }
        continue;
      }
      const auto mine = compile::collective_sequence(progs[r], key);
      for (int q : members) {
        const auto theirs = compile::collective_sequence(progs[static_cast<size_t>(q)], key);
        const size_t n = std::min(mine.size(), theirs.size());
        for (size_t i = 0; i < n; ++i)
          if (mine[i] != theirs[i])
            return "communicator " + key + ": rank " + std::to_string(r) + " issues '" + mine[i] + "' as #" +
                   std::to_string(i) + ", rank " + std::to_string(q) + " '" + theirs[i] + "'";
        if (mine.size() != theirs.size())
          return "communicator " + key + ": rank " + std::to_string(r) + " issues " + std::to_string(mine.size()) +
                 " collectives, rank " + std::to_string(q) + " " + std::to_string(theirs.size());
      }
    }
  }
  return "";
}

struct Case {
  const char* label;
  std::vector<std::string> sets;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"dp4 zero1", {"mesh.data=4", "strategy.zero_stage=1"}},
      {"fsdp4 zero3 bf16", {"mesh.fsdp=4", "strategy.zero_stage=3", "strategy.gather_dtype=\"bf16\""}},
      {"hsdp 2x2 zero2", {"mesh.data=2", "mesh.fsdp=2", "strategy.zero_stage=2"}},
      {"tp4 sp", {"mesh.tensor=4", "strategy.sequence_parallel=true"}},
      {"pp4 1f1b", {"mesh.pipeline=4"}},
      {"pp4 gpipe", {"mesh.pipeline=4", "strategy.schedule=\"gpipe\""}},
      {"pp2 interleaved v4", {"mesh.pipeline=2", "strategy.virtual_stages=4"}},
      {"dp2 fsdp2 tp2 pp2 sp interleaved zero3",
       {"mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "mesh.pipeline=2", "strategy.zero_stage=3",
        "strategy.sequence_parallel=true", "strategy.virtual_stages=2"}},
      {"dp2 tp2 pp4 zero1 sp 64 ranks",
       {"mesh.data=4", "mesh.tensor=4", "mesh.pipeline=4", "strategy.zero_stage=1",
        "strategy.sequence_parallel=true", "train.micro_batches=4"}},
      {"moe ep2 tp2 pp2 sp",
       {"model.experts=4", "model.top_k=2", "model.moe_every=2", "mesh.expert=2", "mesh.tensor=2", "mesh.pipeline=2",
        "strategy.sequence_parallel=true"}},
      {"moe ep4 fsdp2 zero3",
       {"model.experts=4", "model.top_k=1", "model.moe_every=1", "mesh.expert=4", "mesh.fsdp=2",
        "strategy.zero_stage=3"}},
  };
  return c;
}

}  // namespace

TEST(Compile, EveryGroupAgreesOnItsCollectives) {
  for (const auto& c : cases()) {
    const auto progs = compile_all(deck_with(c.sets));
    EXPECT_EQ(disagreement(progs), "") << c.label;
  }
}

namespace {
// Everything a program runs, in order, without the task names and the collectives' tensor
// names (what CompileOptions::names leaves out).
std::string what_runs(const compile::StepProgram& p) {
  std::ostringstream o;
  auto ref = [&](const compile::BufRef& r) { o << r.buf << '@' << r.off << ' '; };
  for (const auto& t : p.tasks) {
    o << t.group << (t.is_comm ? " C " : " K ");
    for (const auto& c : t.ops) {
      o << static_cast<int>(c.op) << ' ' << c.layer << ' ' << c.mb << ' ' << c.act_slot << ' ' << c.ring << ' '
        << c.grad_ring << ' ' << c.acc << c.recompute << ' ' << c.step << ' ' << c.n << ' ' << static_cast<int>(c.cast)
        << ' ';
      ref(c.src);
      ref(c.dst);
    }
    if (t.is_comm) {
      const compile::CommOp& c = t.comm;
      o << static_cast<int>(c.kind) << ' ' << parallel::group_key(c.axes) << ' ' << c.desc.comm << ' ' << c.desc.kind
        << ' ' << c.desc.count << ' ' << c.desc.dtype << ' ' << c.desc.peer << ' ' << static_cast<int>(c.op) << ' '
        << static_cast<int>(c.dtype) << ' ' << c.count << ' ' << c.outer << ' ' << c.rows << ' ' << c.inner << ' '
        << c.accumulate << ' ' << c.peer << ' ' << c.moe_layer << ' ' << c.moe_slot << ' ' << c.moe_out << ' '
        << c.staging_bytes << ' ' << c.staging_slot << ' ';
      ref(c.src);
      ref(c.dst);
    }
    o << '\n';
  }
  for (const auto& [a, b] : p.edges) o << a << '>' << b << ' ';
  for (int64_t b : p.staging_slots) o << b << ' ';
  for (const auto& b : p.buffers.specs) o << b.name << ' ' << b.numel << ' ' << static_cast<int>(b.dtype) << ' ';
  return o.str();
}
}  // namespace

// The simulator compiles without names (CompileOptions::names = false) and with only the
// stage's parameters in the shape (ShapeParams::Stage): the same program, task for task,
// edge for edge, buffer for buffer, on every rank of every mesh above and a context-parallel,
// fully recomputed one; only the names are empty.
TEST(Compile, WithoutNamesTheSameProgram) {
  std::vector<Case> all = cases();
  all.push_back({"cp2 pp2 full recompute", {"mesh.context=2", "mesh.pipeline=2", "strategy.recompute=\"full\""}});
  compile::CompileOptions unnamed;
  unnamed.names = false;
  for (const auto& c : all) {
    const Deck d = deck_with(c.sets);
    const MeshShape mesh = d.mesh.to_mesh_shape();
    const parallel::LayoutPlan plan = compile::layout_plan(d, mesh);
    for (int r = 0; r < mesh.size(); ++r) {
      const auto named = compile::compile_step(d, plan, r);
      const auto bare = compile::compile_step(d, plan, r, compile::StepMode::Train, unnamed);
      ASSERT_EQ(what_runs(named), what_runs(bare)) << c.label << " rank " << r;
      compile::CompileOptions stage_only = unnamed;  // and with only the stage's parameters
      stage_only.params = compile::ShapeParams::Stage;
      const auto lean = compile::compile_step(d, plan, r, compile::StepMode::Train, stage_only);
      ASSERT_EQ(what_runs(named), what_runs(lean)) << c.label << " rank " << r << " (stage's parameters)";
      size_t names = 0, empty = 0;
      for (size_t i = 0; i < named.tasks.size(); ++i) {
        names += !named.tasks[i].name.empty();
        empty += bare.tasks[i].name.empty() && bare.tasks[i].comm.desc.tensor.empty();
      }
      EXPECT_EQ(names, named.tasks.size()) << c.label << " rank " << r;
      EXPECT_EQ(empty, bare.tasks.size()) << c.label << " rank " << r;
    }
  }
}

// The simulator makes the deck's shape without parameters and moves them in from the
// program it compiled with fewer micro-batches (compile::take_params): the result is the
// deck's own shape, parameter for parameter, on every rank of every mesh above; shapes of
// two ranks are refused. A shape of only the stage's parameters (ShapeParams::Stage) holds
// the deck's that are here, in order, unit by unit, with the same ZeRO ring.
TEST(Compile, ParametersOfAnotherBatchAreTheDecksOwn) {
  auto text = [](const compile::StepShape& s) {
    std::ostringstream o;
    for (const auto& p : s.params) {
      o << p.name << ' ' << p.dt << ' ' << p.lnumel << ' ' << p.decay << p.gain << p.tensor_partial << p.expert
        << p.mlp_half << ' ' << p.de << ' ' << p.unit << ' ' << p.stage << ' ' << p.here << p.zero_split << ' ' << p.dz
        << ' ' << p.O << ' ' << p.R << ' ' << p.I << ' ' << p.r0 << ' ' << p.nr << ' ' << p.ring_offset << ' '
        << s.index.at(p.name) << ':';
      for (const auto* v : {&p.shape, &p.view, &p.lext, &p.loff})
        for (int64_t x : *v) o << x << ',';
      o << '\n';
    }
    for (const auto& u : s.units) {
      for (int i : u) o << i << ',';
      o << ';';
    }
    o << s.ring_numel << ' ' << s.index.size();
    return o.str();
  };
  for (const auto& c : cases()) {
    const Deck d = deck_with(c.sets);
    std::vector<std::string> fewer = c.sets;
    fewer.push_back("train.micro_batches=2");
    fewer.push_back("train.global_batch=32");
    const Deck small = deck_with(fewer);
    const MeshShape mesh = d.mesh.to_mesh_shape();
    const parallel::LayoutPlan plan = compile::layout_plan(d, mesh);
    for (int r = 0; r < mesh.size(); ++r) {
      const auto want = compile::make_step_shape(d, plan, r);
      auto got = compile::make_step_shape(d, plan, r, compile::StepMode::Train, compile::ShapeParams::None);
      EXPECT_TRUE(got.params.empty() && got.index.empty()) << c.label;
      compile::take_params(got, compile::make_step_shape(small, plan, r));
      ASSERT_EQ(text(got), text(want)) << c.label << " rank " << r;
      EXPECT_EQ(got.micro, want.micro);
      // only the stage's parameters: the deck's own that are `here`, in order, and each
      // unit's by name; the same ZeRO ring
      const auto stage = compile::make_step_shape(d, plan, r, compile::StepMode::Train, compile::ShapeParams::Stage);
      compile::StepShape here = want;
      here.params.clear();
      for (const auto& p : want.params)
        if (p.here) here.params.push_back(p);
      auto names = [](const compile::StepShape& x) {  // each unit's parameters of the stage
        std::string o;
        for (const auto& u : x.units) {
          for (int i : u)
            if (x.params[static_cast<size_t>(i)].here) o += x.params[static_cast<size_t>(i)].name + ",";
          o += ";";
        }
        return o;
      };
      auto fields = [&](const compile::StepShape& x) {  // text() without the index and units
        std::string t = text(x);
        return t.substr(0, t.rfind('\n') + 1);
      };
      here.index.clear();
      for (size_t i = 0; i < here.params.size(); ++i) here.index[here.params[i].name] = static_cast<int>(i);
      EXPECT_EQ(fields(stage), fields(here)) << c.label << " rank " << r;
      EXPECT_EQ(names(stage), names(want)) << c.label << " rank " << r;
      EXPECT_EQ(stage.ring_numel, want.ring_numel) << c.label << " rank " << r;
    }
    if (mesh.size() > 1) {
      auto other = compile::make_step_shape(d, plan, 0, compile::StepMode::Train, compile::ShapeParams::None);
      EXPECT_THROW(compile::take_params(other, compile::make_step_shape(d, plan, 1)), Error) << c.label;
    }
  }
}

// A deliberate mismatch (one rank loses a collective) is found and named.
TEST(Compile, AgreementCheckFindsAMissingCollective) {
  auto progs = compile_all(deck_with({"mesh.data=2", "mesh.tensor=2"}));
  auto& tasks = progs[3].tasks;
  const auto it = std::find_if(tasks.begin(), tasks.end(),
                               [](const compile::TaskSpec& t) { return t.is_comm && t.comm.desc.comm == "tensor"; });
  ASSERT_NE(it, tasks.end());
  it->comm.desc.comm = "data";
  const std::string why = disagreement(progs);
  EXPECT_NE(why.find("communicator"), std::string::npos) << why;
}

namespace {
// (layer, act slot) pairs a rank holds activations for
int64_t layer_slot_pairs(const compile::StepProgram& p) {
  int64_t n = 0;
  for (const auto& per : p.buffers.acts)
    for (const auto& a : per) n += a.x_in >= 0;
  return n;
}
}  // namespace

// Recomputation (issue 12): every group still agrees on its collectives (a re-run forward's
// tensor/sequence-parallel collectives included), and a rank's activations shrink by exactly
// what it no longer keeps. Full: each dense layer keeps only its input per act slot, one
// scratch set serves them all. Selective: one attention-probabilities buffer for all layers
// (MoE ones too).
TEST(Compile, RecomputeKeepsOnlyWhatItShould) {
  for (const char* mode : {"full", "selective"}) {
    const bool full = std::string(mode) == "full";
    for (const auto& c : cases()) {
      bool moe = false;
      for (const auto& kv : c.sets) moe = moe || kv.rfind("model.experts", 0) == 0;
      if (moe && full) continue;  // refused by the deck
      std::vector<std::string> sets = c.sets;
      sets.push_back(std::string("strategy.recompute=\"") + mode + "\"");
      const auto none = compile_all(deck_with(c.sets));
      const auto with = compile_all(deck_with(sets));
      EXPECT_EQ(disagreement(with), "") << c.label << " + recompute " << mode;
      for (size_t r = 0; r < with.size(); ++r) {
        const compile::StepShape& sh = with[r].shape;
        const int64_t T = sh.tokens_mb, H = sh.hidden, Tr = sh.Tr, S = sh.seq;
        const int64_t probs = sh.mb_seqs * sh.A_l * S * S;
        // a norm output per pair: its full rows, or under sequence parallelism the rows this
        // rank made (the gathered copy is one buffer for all pairs, with or without recompute)
        const int64_t nrm = sh.sp ? Tr * H : T * H;
        const int64_t per_pair = full ? nrm + Tr + T * 3 * sh.H_l + probs + T * sh.H_l + Tr * H + nrm + Tr +
                                            T * 2 * sh.F_l + T * sh.F_l
                                      : probs;
        const double saved = compile::step_bytes(none[r], compile::BufferClass::Activations) -
                             compile::step_bytes(with[r], compile::BufferClass::Activations);
        EXPECT_EQ(saved, 4.0 * static_cast<double>((layer_slot_pairs(with[r]) - 1) * per_pair))
            << c.label << " + recompute " << mode << ", rank " << r;
        EXPECT_EQ(compile::step_bytes(none[r], compile::BufferClass::Params),
                  compile::step_bytes(with[r], compile::BufferClass::Params));
      }
    }
  }
  try {
    deck_with({"model.experts=4", "model.top_k=2", "model.moe_every=2", "strategy.recompute=\"full\""});
    ADD_FAILURE() << "recompute with MoE accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("not available for MoE models yet"), std::string::npos) << e.what();
  }
}

// Sequence parallelism keeps, per (layer, act slot), only the rows of the two norm outputs
// that this rank made; the all-gathered n1 and n2 are one buffer each for the whole step,
// gathered again from the kept rows before the backward reads them (not under full
// recomputation, whose re-run forward has just gathered them). The f32 bytes this saves
// against keeping the gathered copies are 2 · (pairs · T·H − pairs · Tr·H − T·H).
TEST(Compile, SequenceParallelKeepsOnlyItsNormRows) {
  for (const char* rc : {"none", "selective", "full"}) {
    const auto progs = compile_all(deck_with({"mesh.tensor=4", "strategy.sequence_parallel=true",
                                              std::string("strategy.recompute=\"") + rc + "\""}));
    EXPECT_EQ(disagreement(progs), "") << rc;
    for (const auto& p : progs) {
      const auto& sh = p.shape;
      const int64_t T = sh.tokens_mb, H = sh.hidden, Tr = sh.Tr;
      ASSERT_LT(Tr, T);
      std::map<std::string, std::set<int>> ids;  // buffer name -> distinct buffers
      int64_t pairs = 0;
      for (const auto& per : p.buffers.acts)
        for (const auto& a : per) {
          if (a.x_in < 0) continue;
          ++pairs;
          for (const auto& [name, id] : {std::make_pair("n1", a.n1), std::make_pair("n2", a.n2),
                                         std::make_pair("n1_rows", a.n1_rows), std::make_pair("n2_rows", a.n2_rows)}) {
            ASSERT_GE(id, 0) << rc << " " << name;
            ids[name].insert(id);
            EXPECT_EQ(p.buffers.spec(id).numel, std::string(name).find("rows") != std::string::npos ? Tr * H : T * H);
          }
        }
      const bool full = std::string(rc) == "full";
      EXPECT_EQ(ids["n1"].size(), 1u) << rc;
      EXPECT_EQ(ids["n2"].size(), 1u) << rc;
      EXPECT_EQ(static_cast<int64_t>(ids["n1_rows"].size()), full ? 1 : pairs) << rc;
      int64_t again = 0;
      for (const auto& t : p.tasks) again += t.is_comm && t.name.find("norm.out.again") != std::string::npos;
      const int64_t layer_mbs = static_cast<int64_t>(p.buffers.acts.size()) * sh.micro;
      EXPECT_EQ(again, full ? 0 : 2 * layer_mbs) << rc << ": one n1 and one n2 gather per layer backward";
    }
  }
}

// strategy.activation_comm_dtype on a pipeline: every send and receive moves the 16-bit
// type through a ring buffer of that type (half the bytes of an f32 message); each send
// reads a ring that a narrowing copy filled, after that copy; each receive ring is widened
// into the act slot. The tensor axis's activation collectives carry the type too, the loss
// statistics stay f32.
TEST(Compile, SixteenBitWireOnThePipelineAndTensorAxes) {
  for (const char* v : {"1", "2"}) {
    const auto f32 = compile_all(deck_with({"mesh.pipeline=2", "mesh.tensor=2", std::string("strategy.virtual_stages=") + v}));
    const auto b16 = compile_all(deck_with({"mesh.pipeline=2", "mesh.tensor=2", std::string("strategy.virtual_stages=") + v,
                                            "strategy.activation_comm_dtype=\"bf16\""}));
    EXPECT_EQ(disagreement(b16), "") << v;
    for (size_t r = 0; r < b16.size(); ++r) {
      const auto& p = b16[r];
      int64_t sends = 0, recvs = 0, narrow = 0, widen = 0, p2p16 = 0, p2p32 = 0;
      std::map<int, int> ring_writer;  // send ring buffer -> the last narrowing copy into it
      for (size_t i = 0; i < p.tasks.size(); ++i) {
        const auto& t = p.tasks[i];
        if (!t.is_comm) {
          for (const auto& o : t.ops)
            if (o.op == compile::StepOp::Copy && o.cast != DType::F32) {
              const bool to16 = p.buffers.spec(o.dst.buf).dtype == DType::BF16;
              (to16 ? narrow : widen) += 1;
              if (to16) ring_writer[o.dst.buf] = static_cast<int>(i);
            }
          continue;
        }
        const auto& c = t.comm;
        if (c.kind == comm::CollectiveKind::Send || c.kind == comm::CollectiveKind::Recv) {
          const int buf = (c.kind == comm::CollectiveKind::Send ? c.src : c.dst).buf;
          EXPECT_EQ(c.dtype, DType::BF16) << t.name;
          EXPECT_EQ(p.buffers.spec(buf).dtype, DType::BF16) << t.name;
          EXPECT_EQ(c.tensor_bytes(), 2 * c.count) << t.name;
          if (c.kind == comm::CollectiveKind::Send) {
            ++sends;
            ASSERT_TRUE(ring_writer.count(buf)) << t.name << ": no narrowing copy before it";
            bool after = false;
            for (const auto& e : p.edges) after = after || (e.first == ring_writer[buf] && e.second == static_cast<int>(i));
            EXPECT_TRUE(after) << t.name << " does not wait for the copy that filled its ring";
          } else {
            ++recvs;
          }
        } else if (c.axes == parallel::Axes{"tensor"} && c.dtype != DType::F64) {
          const bool stats = t.name.find("loss.") != std::string::npos;
          EXPECT_EQ(c.dtype, stats ? DType::F32 : DType::BF16) << t.name;
        }
      }
      for (const auto& t : f32[r].tasks)
        if (t.is_comm && (t.comm.kind == comm::CollectiveKind::Send || t.comm.kind == comm::CollectiveKind::Recv))
          p2p32 += t.comm.tensor_bytes();
      for (const auto& t : p.tasks)
        if (t.is_comm && (t.comm.kind == comm::CollectiveKind::Send || t.comm.kind == comm::CollectiveKind::Recv))
          p2p16 += t.comm.tensor_bytes();
      EXPECT_GT(sends, 0);
      EXPECT_EQ(narrow, sends) << "rank " << r;
      EXPECT_EQ(widen, recvs) << "rank " << r;
      EXPECT_EQ(2 * p2p16, p2p32) << "rank " << r;
    }
  }
}

TEST(Compile, ModelStateEqualsTheLayoutPlanOnEveryRank) {
  for (const auto& c : cases()) {
    const Deck d = deck_with(c.sets);
    const MeshShape mesh = d.mesh.to_mesh_shape();
    const parallel::LayoutPlan plan = compile::layout_plan(d, mesh);
    for (int r = 0; r < mesh.size(); ++r) {
      const auto sum = compile::summarize(compile::compile_step(d, plan, r));
      const auto want = plan.state_bytes(r);
      EXPECT_EQ(sum.params_bytes, want.params) << c.label << " rank " << r;
      EXPECT_EQ(sum.grads_bytes, want.grads) << c.label << " rank " << r;
      EXPECT_EQ(sum.optimizer_bytes, want.optimizer) << c.label << " rank " << r;
    }
  }
}

// A layer's MLP-half gradients (MLP norm gain, gate_up/down or router/experts) are synced as
// soon as the MLP backward has written them: the sync's compute predecessor is the segment
// that ends with the MLP norm's backward, so it overlaps the attention backward (DDP's
// bucket hooks do the same). The attention half's sync follows the attention backward.
// Checked on data, ZeRO-2/3, sequence-parallel and MoE meshes; fails when the MLP half
// waits for the whole layer again.
TEST(Compile, MlpHalfGradientsSyncBeforeTheAttentionBackward) {
  const std::vector<Case> mine = {
      {"dp4", {"mesh.data=4"}},
      {"hsdp 2x2 zero2", {"mesh.data=2", "mesh.fsdp=2", "strategy.zero_stage=2"}},
      {"fsdp4 zero3", {"mesh.fsdp=4", "strategy.zero_stage=3"}},
      {"dp2 tp2 sp", {"mesh.data=2", "mesh.tensor=2", "strategy.sequence_parallel=true"}},
      {"moe ep2 dp2", {"model.experts=4", "model.top_k=2", "model.moe_every=2", "mesh.expert=2", "mesh.data=2"}},
  };
  for (const auto& c : mine) {
    const Deck d = deck_with(c.sets);
    const MeshShape mesh = d.mesh.to_mesh_shape();
    const parallel::LayoutPlan plan = compile::layout_plan(d, mesh);
    const compile::StepProgram prog = compile::compile_step(d, plan, 0);
    std::vector<std::vector<int>> preds(prog.tasks.size());
    for (const auto& [a, b] : prog.edges) preds[static_cast<size_t>(b)].push_back(a);
    int mlp_syncs = 0, attn_syncs = 0;
    for (size_t t = 0; t < prog.tasks.size(); ++t) {
      const auto& task = prog.tasks[t];
      if (!task.is_comm) continue;
      const std::string& what = task.comm.desc.tensor;
      if (what.rfind("layers.", 0) != 0 || what.find(".grad") == std::string::npos) continue;
      const std::string layer = what.substr(0, what.find('.', 7) + 1);  // "layers.L."
      const bool mlp = what.find(".mlp.") != std::string::npos || what.find(".mlp_norm.") != std::string::npos;
      // the compute task this sync waits for (the first collective of a chain waits for one)
      std::string seg;
      for (int q : preds[t])
        if (!prog.tasks[static_cast<size_t>(q)].is_comm) seg = prog.tasks[static_cast<size_t>(q)].name;
      if (seg.empty()) continue;  // waits for another collective of the same gradient
      const std::string bwd = "bwd." + layer.substr(0, layer.size() - 1).replace(0, 7, "layer") + ".";
      EXPECT_EQ(seg.rfind(bwd, 0), 0u) << c.label << ": " << what << " waits for '" << seg << "'";
      if (mlp) {
        ++mlp_syncs;
        EXPECT_NE(seg.find("mlp_norm"), std::string::npos) << c.label << ": " << what << " waits for '" << seg << "'";
        EXPECT_EQ(seg.find("attn"), std::string::npos) << c.label << ": " << what << " waits for '" << seg << "'";
      } else {
        ++attn_syncs;
        EXPECT_NE(seg.find("attn_norm"), std::string::npos) << c.label << ": " << what << " waits for '" << seg << "'";
      }
    }
    EXPECT_GT(mlp_syncs, 0) << c.label;
    EXPECT_GT(attn_syncs, 0) << c.label;
  }
}

// Per-rank model state (params + grads + AdamW moments, f32) relative to DP on N ranks is
// what the ZeRO paper says: ZeRO-1 (8 + 8/N)/16, ZeRO-2 (4 + 12/N)/16 (the full gradient is
// never held: it passes through the grad ring into the shard), ZeRO-3 16/N/16. Before
// session 6, ZeRO-1/2 kept packed copies of non-contiguous shards and ZeRO-2 the full
// gradient beside its shard: 0.731 / 0.741 on data=4.
TEST(Compile, ZeroStagesHoldWhatThePaperSays) {
  for (int n : {2, 4}) {
    auto state = [&](int stage, compile::ProgramSummary* worst) {
      const auto progs =
          compile_all(deck_with({"mesh.data=" + std::to_string(n), "strategy.zero_stage=" + std::to_string(stage),
                                 "strategy.fsdp_min_weight_size=0"}));
      int64_t most = 0;
      for (const auto& prog : progs) {
        const auto sum = compile::summarize(prog);
        if (sum.model_state_bytes() > most) {
          most = sum.model_state_bytes();
          if (worst) *worst = sum;
        }
      }
      return static_cast<double>(most);
    };
    const double dp = state(0, nullptr);
    const double want[] = {1.0, (8 + 8.0 / n) / 16, (4 + 12.0 / n) / 16, 16.0 / n / 16};
    for (int stage = 1; stage <= 3; ++stage) {
      compile::ProgramSummary worst;
      const double ratio = state(stage, &worst) / dp;
      EXPECT_NEAR(ratio, want[stage], 0.002) << "ZeRO-" << stage << " on " << n << " ranks";
      if (stage >= 2) {
        EXPECT_EQ(2 * worst.grads_bytes, worst.optimizer_bytes) << "ZeRO-" << stage << ": grads beyond the shard";
      }
    }
  }
}

TEST(Compile, RankOutsideTheMeshIsAnInputError) {
  const Deck d = deck_with({"mesh.data=2"});
  const auto plan = compile::layout_plan(d, d.mesh.to_mesh_shape());
  try {
    compile::compile_step(d, plan, 2);
    FAIL() << "rank 2 of 2 compiled";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 2"), std::string::npos) << e.what();
  }
}

// Attention dropout with context parallelism is refused naming both keys (ring attention has no
// dropout); evaluation, which never drops, compiles.
TEST(Compile, AttentionDropoutWithContextParallelismIsRefused) {
  const Deck d = deck_with({"mesh.data=1", "mesh.context=2", "model.attention_dropout=0.1"});
  const auto plan = compile::layout_plan(d, d.mesh.to_mesh_shape());
  try {
    compile::compile_step(d, plan, 0);
    FAIL() << "compiled";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("mesh.context = 2 with model.attention_dropout = 0.1 is not supported"), std::string::npos) << m;
  }
  EXPECT_NO_THROW(compile::make_step_shape(d, plan, 0, compile::StepMode::Evaluate));
}

// Rank 12345 of 16,384 devices: data 128 x tensor 8 x pipeline 16 (2 virtual stages), 96
// layers, sequence parallel, ZeRO-1, 16 micro-batches. Counts per micro-batch and local
// layer: sequence parallelism gathers 2 norm outputs forward, the same 2 again backward
// (from the kept rows) and 2 dx, and reduce-scatters 2 partial sums each way; pipeline: one send and one receive per chunk,
// direction and micro-batch, except at the pipeline's two ends.
TEST(Compile, SixteenThousandDevicesInSeconds) {
  const Deck d = load_deck(SHARDFLOW_SOURCE_DIR "/inputs/cluster_175b.toml", {"mesh.data=128"});
  const MeshShape mesh = d.mesh.to_mesh_shape();
  ASSERT_EQ(mesh.size(), 16384);
  const auto t0 = std::chrono::steady_clock::now();
  const auto plan = compile::layout_plan(d, mesh);
  const auto prog = compile::compile_step(d, plan, 12345);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 10.0);
  const auto sum = compile::summarize(prog);
  const auto& s = prog.shape;
  EXPECT_EQ(s.rank, 12345);
  int local_layers = 0;
  for (const auto& c : s.chunks) local_layers += c.layer_end - c.layer_begin;
  EXPECT_EQ(local_layers, 96 / 16);
  std::map<std::string, int64_t> n;
  for (const auto& c : sum.collectives) n[c.group + " " + c.kind] = c.count;
  const int64_t m = s.micro;
  const int64_t first = s.first_stage ? 1 : 0, last = s.last_stage ? 1 : 0;
  EXPECT_EQ(n["tensor all_gather"], 6 * local_layers * m + (first + last) * m);
  EXPECT_EQ(n["tensor reduce_scatter"], 4 * local_layers * m + first * m + last * m);
  EXPECT_EQ(n["pipeline send"], 2 * s.vstages * m - (first + last) * m);
  EXPECT_EQ(n["pipeline recv"], n["pipeline send"]);
  const auto want = plan.state_bytes(12345);
  EXPECT_EQ(sum.model_state_bytes(), want.total());
}
