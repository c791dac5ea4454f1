// Pipeline send/recv. Receives land in rings (x_recv: x from the previous chunk, dx_recv:
// dx from the next), one receive buffer per act slot, and are posted as soon as their slot is
// free: the receive of micro-batch j of a chunk with K slots waits only for the copy that
// moved micro-batch j − K out of the act slot, so it is issued right after that copy, K groups
// of the chunk ahead of its consumer, and the transfer overlaps the compute in between.
// Receives from one peer are posted in the order the peer sends (point-to-point order; with
// p = 2 both neighbours are one rank), each as soon as its act slot and its predecessors allow.
// A receive depends on compute only, never on another transfer.
#include "compile/impl/builder.hpp"
#include "core/error.hpp"
#include "mesh/axes.hpp"

namespace shardflow::compile::detail {

namespace {
// x or dx of one micro-batch to (send) or from (recv) the neighbour stage `peer`
CommOp pipeline_message(bool send, const std::string& what, BufRef buf, int64_t n, int peer, DType dt) {
  CommOp c;
  c.kind = send ? comm::CollectiveKind::Send : comm::CollectiveKind::Recv;
  c.axes = {axis::pipeline};
  c.dtype = dt;
  c.desc = {parallel::group_key(c.axes), send ? "send" : "recv", what, n, dtype_name(dt), peer};
  (send ? c.src : c.dst) = buf;
  c.count = n;
  c.peer = peer;
  return c;
}
}  // namespace

// what a pipeline message carries: x or dx of micro-batch mb for (global) chunk dest
std::string StepBuilder::msg_name(bool fwd, int dest_chunk, int mb) const {
  return std::string(fwd ? "x" : "dx") + (s.vstages > 1 ? ".c" + std::to_string(dest_chunk) : "") + ".mb" +
         std::to_string(mb);
}

void StepBuilder::pipeline_begin() {
  const size_t n = static_cast<size_t>(s.vstages) * static_cast<size_t>(s.micro);
  for (auto* v : {&send_x_, &send_dx_, &recv_x_, &recv_dx_, &copied_x_, &copied_dx_}) v->assign(n, kNone);
  if (s.pp > 1) {
    const int prev_stage = (s.stage - 1 + s.pp) % s.pp, next_stage = (s.stage + 1) % s.pp;
    for (int q : {prev_stage, next_stage}) {
      if (inbox_.count(q)) continue;
      auto& box = inbox_[q];
      posted_[q] = 0;
      for (const PipelineStep& g :
           pipeline_schedule(s.schedule, s.pp, q, static_cast<int>(s.micro), s.vstages, s.mb_group)) {
        const int gq = g.chunk * s.pp + q;  // the sender's chunk
        if (g.forward && gq < s.nchunks - 1 && (gq + 1) % s.pp == s.stage)
          box.push_back({true, (gq + 1) / s.pp, g.micro_batch});
        if (!g.forward && !s.evaluate && gq > 0 && (gq - 1) % s.pp == s.stage) box.push_back({false, (gq - 1) / s.pp, g.micro_batch});
      }
    }
  }
  post_ready(kNone);
}

// posts what the copy `after` (none at the start) lets through; each receive posted here
// waits for that copy (the one that emptied its act slot, or a later one)
void StepBuilder::post_ready(int after) {
  const int64_t n = s.Tr * s.hidden;
  for (auto& [q, box] : inbox_) {
    size_t& k = posted_[q];
    for (; k < box.size(); ++k) {
      const Msg& msg = box[k];
      const int K = s.chunks[static_cast<size_t>(msg.vc)].slots;
      // the copy that empties the act slot: not emitted yet, so later messages from q wait too
      if (msg.mb >= K && (msg.fwd ? copied_x_ : copied_dx_)[gidx(msg.vc, msg.mb - K)] == kNone) break;
      const int act_slot = s.slot_of(msg.vc, msg.mb);
      const std::string what = named([&] { return msg_name(msg.fwd, msg.vc * s.pp + s.stage, msg.mb); });
      const BufRef ring{(msg.fwd ? b.x_recv : b.dx_recv)[static_cast<size_t>(act_slot)]};
      const int t =
          emit_comm(pipeline_message(false, what, ring, n, q, s.act_comm_dtype), named([&] { return "recv " + what; }));
      edge(after, t);
      (msg.fwd ? recv_x_ : recv_dx_)[gidx(msg.vc, msg.mb)] = t;
    }
  }
}

// move the received input from its ring slot into the group's act slot (once the send that
// read the act slot for micro-batch j − K is done), then post the receives that the freed
// receive buffer lets through
void StepBuilder::emit_recv_copy(size_t gi) {
  const PipelineStep grp = s.order[gi];
  const int j = grp.micro_batch, vc = grp.chunk;
  const int K = s.chunks[static_cast<size_t>(vc)].slots;
  const int xsl = s.slot_of(vc, j);
  const std::string mbs = (s.vstages > 1 ? ".v" + std::to_string(vc) : "") + ".mb" + std::to_string(j);
  const int rv = (grp.forward ? recv_x_ : recv_dx_)[gidx(vc, j)];
  SHARDFLOW_REQUIRE(rv != kNone, "pipeline schedule: stage ", s.stage, " needs ", grp.forward ? "x" : "dx", mbs,
                    " before its receive can be posted (the sender's order and this stage's slots disagree)");
  ComputeOp cp{StepOp::Copy};
  cp.act_slot = xsl;
  cp.src = {(grp.forward ? b.x_recv : b.dx_recv)[static_cast<size_t>(xsl)]};
  cp.dst = {(grp.forward ? b.x : b.dx)[static_cast<size_t>(xsl)]};
  cp.n = s.Tr * s.hidden;
  cp.cast = s.act_comm_dtype;  // a 16-bit ring widens into the act slot
  const int t = emit_compute({cp}, named([&] { return (grp.forward ? "recv.x" : "recv.dx") + mbs; }));
  chain(t);
  edge(rv, t);
  if (j >= K) edge((grp.forward ? send_x_ : send_dx_)[gidx(vc, j - K)], t);
  (grp.forward ? copied_x_ : copied_dx_)[gidx(vc, j)] = t;
  post_ready(t);
}

// pass the group's output on (x to the next chunk's stage, dx to the previous)
void StepBuilder::emit_send(size_t gi, const std::vector<int>& pending) {
  const PipelineStep grp = s.order[gi];
  const int j = grp.micro_batch, vc = grp.chunk;
  const ChunkShape& ch = s.chunks[static_cast<size_t>(vc)];
  const int xsl = s.slot_of(vc, j);
  const int64_t n = s.Tr * s.hidden;
  const int peer = grp.forward ? (s.stage + 1) % s.pp : (s.stage - 1 + s.pp) % s.pp;
  const std::string what = named([&] { return msg_name(grp.forward, grp.forward ? ch.gc + 1 : ch.gc - 1, j); });
  BufRef out{(grp.forward ? b.x : b.dx)[static_cast<size_t>(xsl)]};
  const std::vector<int>& wire = grp.forward ? b.x_send : b.dx_send;
  if (!wire.empty()) {  // a 16-bit wire: narrow into the send ring once its last send is done
    ComputeOp cp{StepOp::Copy};
    cp.act_slot = xsl;
    cp.src = out;
    out = {wire[static_cast<size_t>(xsl)]};
    cp.dst = out;
    cp.n = n;
    cp.cast = s.act_comm_dtype;
    const std::string mbs = (s.vstages > 1 ? ".v" + std::to_string(vc) : "") + ".mb" + std::to_string(j);
    const int c = emit_compute({cp}, named([&] { return (grp.forward ? "send.x" : "send.dx") + mbs; }));
    chain(c);
    for (int p : pending) edge(p, c);
    const int K = ch.slots;
    if (j >= K) edge((grp.forward ? send_x_ : send_dx_)[gidx(vc, j - K)], c);
  }
  const int t =
      emit_comm(pipeline_message(true, what, out, n, peer, s.act_comm_dtype), named([&] { return "send " + what; }));
  edge(last_, t);
  for (int p : pending) edge(p, t);
  (grp.forward ? send_x_ : send_dx_)[gidx(vc, j)] = t;
}

}  // namespace shardflow::compile::detail
