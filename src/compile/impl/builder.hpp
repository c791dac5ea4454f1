#pragma once
// StepBuilder: the state the step compiler's emitters share while they write one rank's
// StepProgram. Each emitter lives in its own file (emit_*.cpp); see compile/compiler.hpp.
//
// Nomenclature
//   use        one unit's parameters used by one group of the schedule: the forward of the
//              embeddings (Fe), of a layer (Fl), the head with the loss and its backward (Hd),
//              a layer's backward (Bl), the embeddings' backward (Be). ZeRO-3 gathers a
//              unit's parameters into a gather-ring slot before each use (Be reuses Fe's).
//   segment    a compute task of a use: kernels run back to back until a collective needs
//              what they wrote; the collective's result is waited for by the next segment.
//   last       the step's last compute task: compute tasks run in one chain.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "compile/step_program.hpp"

namespace shardflow::compile::detail {

constexpr int kNone = -1;

class StepBuilder {
 public:
  StepBuilder(StepProgram& prog, bool names = true) : prog_(prog), s(prog.shape), b(prog.buffers), names_(names) {}
  void build();

 private:
  StepProgram& prog_;
  const StepShape& s;
  const BufferPlan& b;
  const bool names_;  // CompileOptions::names
  /// A task or tensor name, made only when the program keeps names (else empty).
  template <class F>
  std::string named(F&& make) const {
    return names_ ? std::string(make()) : std::string();
  }

  // ---- emission ----------------------------------------------------------------------------
  int emit_compute(std::vector<ComputeOp> ops, std::string name);
  int emit_comm(CommOp op, std::string name);
  void edge(int before, int after) {
    if (before != kNone && after != kNone) prog_.edges.emplace_back(before, after);
  }
  void chain(int t) {
    edge(last_, t);
    last_ = t;
  }
  int last_ = kNone;
  int group_ = -1;  // the group being emitted (TaskSpec::group)

  // collectives (emit_step.cpp)
  CommOp all_reduce(const parallel::Axes& axes, BufRef buf, int64_t n, comm::ReduceOp op, DType dt,
                    const std::string& what, BufRef out = {});
  CommOp shard_collective(comm::CollectiveKind kind, const parallel::Axes& axes, int64_t outer, int64_t rows,
                         int64_t inner, DType dt, BufRef src, BufRef dst, bool accumulate, comm::ReduceOp op,
                         int64_t count, const std::string& what);
  CommOp shard_gather(const parallel::Axes& axes, int64_t outer, int64_t rows, int64_t inner, DType dt, BufRef shard,
                      BufRef full, int64_t count, const std::string& what) {
    return shard_collective(comm::CollectiveKind::AllGather, axes, outer, rows, inner, dt, shard, full, false,
                            comm::ReduceOp::Sum, count, what);
  }
  CommOp shard_scatter(const parallel::Axes& axes, int64_t outer, int64_t rows, int64_t inner, DType dt, BufRef full,
                       BufRef shard, bool accumulate, comm::ReduceOp op, int64_t count, const std::string& what) {
    return shard_collective(comm::CollectiveKind::ReduceScatter, axes, outer, rows, inner, dt, full, shard, accumulate,
                            op, count, what);
  }

  // ---- uses (emit_step.cpp) ------------------------------------------------------------------
  enum Kind { Fe, Fl, Hd, Bl, Be };
  static bool is_bwd(Kind k) { return k == Hd || k == Bl || k == Be; }
  struct Use {
    Kind kind;
    int unit;
    int mb;
    int gather = -1;  // index into the gather list (ZeRO-3), -1 when no parameters are needed
    int grad_ring = 0;
  };
  std::vector<Use> uses_;
  std::vector<std::pair<size_t, size_t>> group_uses_;
  std::vector<int> gather_use_;  // gather index -> use index
  std::vector<int> first_of_use_, last_of_use_;
  std::vector<int> grad_sync_;  // everything the optimizer waits for
  void plan_uses();
  void emit_group(size_t gi);
  void emit_loss_norm_update();

  // ---- ZeRO (emit_zero.cpp) --------------------------------------------------------------------
  std::vector<std::vector<int>> gathers_of_;       // gather index -> its all-gathers
  std::vector<std::vector<int>> grad_comm_of_use_;  // ZeRO-3 reduce-scatters reading a grad-ring slot
  std::vector<int> last_scatter_;                   // per parameter: its previous ZeRO-3 reduce-scatter
  int next_gather_ = 0;
  bool unit_has_sharded(int unit) const;
  void emit_gathers_upto(int upto);
  void emit_use_waits(size_t k, int first_segment);
  // which of a use's parameters a grad sync covers: all, or a layer's MLP half (started
  // after the MLP backward) and the rest (after the whole layer's backward)
  enum class GradPart { All, MlpHalf, Rest };
  // whether use u syncs the gradient of parameter p (a collective of this rank)
  bool syncs_grad(const Use& u, const ParamShape& p) const;
  bool syncs_mlp_half(const Use& u) const;
  void emit_grad_sync(size_t k, int last_segment, const std::string& mbs, GradPart part = GradPart::All);
  void emit_zero12_gathers(int update);

  // ---- pipeline (emit_pipeline.cpp) ------------------------------------------------------------
  struct Msg {
    bool fwd;  // x (into a forward group) or dx (into a backward group)
    int vc, mb;
  };
  std::vector<int> send_x_, send_dx_, recv_x_, recv_dx_, copied_x_, copied_dx_;  // [vc · m + mb]
  std::map<int, std::vector<Msg>> inbox_;  // peer stage -> what it sends this stage, in its order
  std::map<int, size_t> posted_;           // peer stage -> messages posted so far
  size_t gidx(int vc, int mb) const { return static_cast<size_t>(vc * static_cast<int>(s.micro) + mb); }
  std::string msg_name(bool fwd, int dest_chunk, int mb) const;
  void pipeline_begin();
  void post_ready(int after);
  void emit_recv_copy(size_t gi);
  void emit_send(size_t gi, const std::vector<int>& pending);

  // ---- blocks (emit_block.cpp) -----------------------------------------------------------------
  // One use under construction: its compute so far, its segments, and the collectives the
  // next segment waits for.
  struct UseCtx {
    std::string prefix, mbs;
    std::vector<ComputeOp> work;
    std::string work_name;
    std::vector<int> segs;
    std::vector<int>* pending;
    size_t use = 0;           // index into uses_
    bool mlp_synced = false;  // the MLP half's gradient sync is emitted (a layer's backward)
  };
  void run(UseCtx& u, ComputeOp op, const char* part);
  void flush(UseCtx& u);
  void comm_then(UseCtx& u, int t, bool next_waits = true);
  // the tensor axis's collectives: activations and their gradients travel in
  // strategy.activation_comm_dtype (s.act_comm_dtype), the loss statistics in f32
  void tp_all_reduce(UseCtx& u, BufRef buf, int64_t n, comm::ReduceOp op, DType dt, const std::string& what);
  // its task; with next_waits false the next segment does not wait for it (the caller adds
  // it to u.pending before the segment that reads it)
  int tp_all_gather(UseCtx& u, BufRef rows, BufRef full, const std::string& what, bool next_waits = true);
  void tp_reduce_scatter(UseCtx& u, BufRef full, BufRef rows, const std::string& what);
  void tp_sum(UseCtx& u, int full, int rows, const std::string& what);
  void dx_gather(UseCtx& u, int xsl, const std::string& what);
  void ep_counts(UseCtx& u, int layer, int xsl, const std::string& what);
  void ep_rows(UseCtx& u, int layer, int xsl, bool out, int src, int dst, const std::string& what);
  void emit_use_compute(UseCtx& u, const Use& use, int xsl);
  // context parallel (emit_block.cpp): the ring steps of a layer's attention forward and
  // backward; `step_op` makes the ComputeOp of one ring step
  int ring_message(bool send, int buf, const std::string& what);
  int ring_pass(int from, int into, int ready, int prev, const std::string& what);
  void ring_forward(UseCtx& u, const std::function<ComputeOp(int)>& step_op, const std::string& what);
  void ring_backward(UseCtx& u, const std::function<ComputeOp(int)>& step_op, const std::string& what);
  int ring_reader_[6] = {kNone, kNone, kNone, kNone, kNone, kNone};  // last send reading each ring buffer

  const ActBuffers& act(int l, int slot) const {
    return b.acts[static_cast<size_t>(s.local_layer[static_cast<size_t>(l)])][static_cast<size_t>(slot)];
  }
  const MoeBuffers& moe(int l, int slot) const {
    return b.moes[static_cast<size_t>(s.local_layer[static_cast<size_t>(l)])][static_cast<size_t>(slot)];
  }
};

}  // namespace shardflow::compile::detail
