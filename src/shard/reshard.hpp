#pragma once
// Resharding: move a tensor from one Layout to another on the same mesh with one
// all_to_allv. No rank ever holds more of the tensor than its two layouts give it.
//
//   ReshardPlan   (plan)       built once per layout pair on each rank: which boxes go to and
//                              come from which peer, and the all_to_allv counts.
//   Resharder<T>  (operation)  the plan bound to a world communicator and persistent
//                              staging buffers: pack, exchange, unpack (kernels::copy_box
//                              with strided boxes worked out once from the plan), step after
//                              step without allocating.
//                              A side whose pieces are each one contiguous run of the rank's
//                              box (e.g. rows moving between row splits) skips its staging:
//                              the exchange reads the source or writes the destination in
//                              place.
//                              The piece a rank keeps is copied src -> dst directly
//                              (kernels::copy_box) while the exchange is in flight.
//                              On a backend that moves strided pieces (Mpi), pieces of up
//                              to kInPlaceBytes are not staged at all: the exchange is an
//                              all_to_allw whose derived datatypes read each piece from the
//                              source and write it into the destination in place (MPI packs
//                              them in cache-sized fragments as it sends). Above that, MPI's
//                              datatype engine is slower than packing here (docs/comm.md),
//                              and sources of kFuseBytes or more are packed and kept in one
//                              walk (pack_and_keep). When every piece is one run of each row
//                              (a row split becoming a column split, or back), the rows are
//                              walked once, in order: the source's from 1 MiB (row_walk()),
//                              the destination's in finish() (unpack_walk()).
//                              Pieces that are runs of the rows walked on one side and
//                              whole rows on the other move in rounds instead
//                              (piece_rounds(); sent from a source box of kPipeBytes or
//                              more, received into any box): a few rows at a time
//                              through small slots, point to point, so that what one core
//                              packs another copies while it is still in cache.
//                              Where the ranks are on one node and may copy each other's
//                              memory (Communicator::peer_copies()), every piece is instead
//                              copied once, straight from the sender's source into the
//                              receiver's destination, by one of the two ranks (peer_copy();
//                              Auto from 64 KiB / 16 MiB): no exchange, no staging.
//                              The copy goes through the kernel (cross-memory attach), or,
//                              when the peer's buffer is a comm::NodeBuffer, through a
//                              mapping of it with ordinary loads and stores: a sender's
//                              walk then writes each row's runs straight into the peer's
//                              destination, one pass over the source (node_copies()).
//   reshard(...)               the one-shot convenience.
//
// Replicas: a piece held by several ranks of the source layout is sent by exactly one of
// them: the destination itself when it holds the piece, else replica (dest % replicas).
// Ranks of the communicator must be the mesh ranks (CommSet::world()).
#include <Kokkos_Core.hpp>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "core/half.hpp"
#include "kernels/pack.hpp"
#include "layout/layout.hpp"

namespace shardflow::shard {

/// One box (global coordinates) sent to or received from a peer.
struct ReshardPiece {
  int peer = 0;
  Box box;
};

class ReshardPlan {
 public:
  /// Throws InputError when the layouts differ in global shape or mesh (naming both), or
  /// when `rank` is not a rank of the mesh.
  ReshardPlan(const Layout& from, const Layout& to, int rank);

  const Layout& from() const { return from_; }
  const Layout& to() const { return to_; }
  int rank() const { return rank_; }
  /// Pieces this rank sends to / receives from other ranks, ascending by peer (at most one
  /// per peer).
  const std::vector<ReshardPiece>& sends() const { return sends_; }
  const std::vector<ReshardPiece>& recvs() const { return recvs_; }
  /// The piece this rank keeps (copied from its source box into its target box without
  /// staging or communication); empty extents when none.
  const Box& local_piece() const { return local_; }
  /// Elements in the staging buffers (sum of the pieces, the local piece excluded).
  std::int64_t send_elems() const { return send_elems_; }
  std::int64_t recv_elems() const { return recv_elems_; }
  /// The all_to_allv of the exchange (counts and displacements by peer).
  comm::CollectivePlan exchange_plan(DType t) const;
  /// The rank that sends piece `shard_of_from_rank`'s data to `dest` (replica choice).
  static int sender(const Layout& from, int holder, int dest);
  /// This plan without the sends and receives flagged (by index in sends() / recvs()) and,
  /// when drop_local, without the kept piece: the part a Resharder moves by its other paths
  /// when it sends some pieces in rounds. (Its counts then no longer cover the target box.)
  ReshardPlan without(const std::vector<bool>& drop_sends, const std::vector<bool>& drop_recvs, bool drop_local) const;

 private:
  Layout from_, to_;
  int rank_;
  std::vector<ReshardPiece> sends_, recvs_;
  Box local_;
  std::int64_t send_elems_ = 0, recv_elems_ = 0;
};

/// How a Resharder moves its pieces: Auto chooses (see the header comment); Staged packs and
/// unpacks through staging buffers (any backend); InPlace moves strided pieces in place
/// (host spaces on a backend whose Communicator::strided_pieces() is true); Pipelined moves
/// every piece that can go in rounds (Resharder::piece_rounds) in rounds whatever its size,
/// and the others as Auto would; PeerCopy copies every piece straight between the ranks'
/// buffers (Resharder::peer_copy(): host spaces on a communicator whose peer_copies() is
/// true, whatever the pieces' runs). Every rank must give the same path.
enum class ReshardPath { Auto, Staged, InPlace, Pipelined, PeerCopy };

/// The operation: a plan bound to a communicator and persistent staging buffers.
template <class T, class ExecSpace = Kokkos::DefaultHostExecutionSpace>
class Resharder {
 public:
  using memory_space = typename ExecSpace::memory_space;
  using ConstView = Kokkos::View<const T*, memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  using View = Kokkos::View<T*, memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

  /// `world` must have the mesh's ranks in mesh order (CommSet::world()).
  /// Throws InputError when `path` is InPlace and the backend or space cannot.
  /// `pipe_round_bytes`: the bytes of the walked box per round of the pieces moved in rounds
  /// (see piece_rounds()); every rank must give the same value (tests make it small).
  Resharder(comm::Communicator& world, ReshardPlan plan, ExecSpace exec = ExecSpace(),
            ReshardPath path = ReshardPath::Auto, std::int64_t pipe_round_bytes = kPipeRoundBytes)
      : plan_(std::move(plan)),
        exec_(exec),
        peer_(make_peer(check_comm(world, plan_), plan_, path)),
        pipe_(make_pipe(world, plan_, path, pipe_round_bytes, peer_.on)),
        base_(plan_.without(pipe_.drop_sends, pipe_.drop_recvs, pipe_.keep_in_rounds)),
        copies_(base_),
        send_offsets_(runs_in_frame(copies_.pack, true)),
        recv_offsets_(runs_in_frame(copies_.unpack, false)),
        in_place_(choose_in_place(
            world, path == ReshardPath::Pipelined || path == ReshardPath::PeerCopy ? ReshardPath::Auto : path)),
        send_("shardflow::reshard::send",
              send_offsets_.empty() && !in_place_ ? static_cast<std::size_t>(base_.send_elems()) : std::size_t(0)),
        recv_("shardflow::reshard::recv",
              recv_offsets_.empty() && !in_place_ ? static_cast<std::size_t>(base_.recv_elems()) : std::size_t(0)),
        out_slots_("shardflow::reshard::out_slots", static_cast<std::size_t>(kPipeSlots * pipe_.out.slot_elems)),
        in_slots_("shardflow::reshard::in_slots", static_cast<std::size_t>(kPipeSlots * pipe_.in.slot_elems)),
        exchange_(world, in_place_ ? in_place_plan() : direct_plan(base_, send_offsets_, recv_offsets_), send_.data(),
                  recv_.data()) {
    bind_pipe(world);
    bind_peer(world);
    bind_peer_walk();
  }

  /// Pieces of at most this many bytes move in place on a backend that can (Auto).
  static constexpr std::int64_t kInPlaceBytes = std::int64_t(512) << 10;
  /// True when the exchange moves the strided pieces in place (no staging at all).
  bool in_place() const { return in_place_; }

  /// Pieces packed out of the rows of a sender's box of this many bytes or more go in rounds
  /// (PieceRounds::Out, Auto).
  static constexpr std::int64_t kPipeBytes = std::int64_t(4) << 20;
  /// Pieces walked into the rows of a receiver's box of this many bytes or more go in rounds
  /// (PieceRounds::In, Auto): every size (docs/comm.md, session 22: faster than the in-place
  /// and staged paths from 2 KiB up on the Xeon VM).
  static constexpr std::int64_t kPipeInBytes = 0;
  /// Bytes of the walked box per round: a round is as many of its rows as fit.
  static constexpr std::int64_t kPipeRoundBytes = std::int64_t(1) << 20;
  /// Staging slots the rounds cycle through (a slot is used again once its round has left /
  /// arrived).
  static constexpr int kPipeSlots = 3;
  /// The tag of the rounds' messages on `world`: two Resharders that move pieces in rounds
  /// must not be in flight on one communicator at once.
  static constexpr int kPipeTag = 24229;
  /// How a piece moves in rounds (piece_rounds()).
  enum class PieceRounds { None, Out, In };
  /// Whether piece `b` (global coordinates) that rank `sender` sends to rank `receiver`
  /// moves in rounds, and how. A function of the layouts alone, so that the sender and the
  /// receiver agree on it without a message.
  ///   Out: each of its rows is one run of a row of the sender's box but not the whole row
  ///   (it must be packed) and it is whole rows of the receiver's box (it lands in place, one
  ///   run): a row split becoming a column split. The sender walks its source rows in rounds
  ///   of kPipeRoundBytes, packs each round's part of every such piece into one of kPipeSlots
  ///   small slots (the kept piece copied in the same walk) and sends it at once, point to
  ///   point; the receiver posts every round's receive straight into its destination. What
  ///   a peer's core copies out of a slot is then still in cache, where a whole staging
  ///   buffer larger than the caches costs a write to memory and a read back. A slot is
  ///   packed again once the round kPipeSlots before it has been sent, so finish() packs the
  ///   rounds start() could not.
  ///   In, the mirror: whole rows of the sender's box, one run of each row of the receiver's
  ///   (a column split becoming a row split). The sender posts every round's part straight
  ///   from its source; the receiver takes them round by round into its slots and walks each
  ///   round into its destination rows (with the kept piece) in finish().
  /// Unless forced (ReshardPath::Pipelined), the walked box (the sender's for Out, the
  /// receiver's for In) must be kPipeBytes / kPipeInBytes or more and the piece's rows
  /// kRowRunBytes or more. With pieces in rounds, a rank that called start() must call
  /// finish(): its peers' receives of the rounds it has not packed yet wait for it.
  static PieceRounds piece_rounds(const Layout& from, const Layout& to, int sender, int receiver, const Box& b,
                                  bool forced) {
    if (runs_of_rows(from, to, sender, receiver, b, forced, kPipeBytes)) return PieceRounds::Out;
    if (runs_of_rows(to, from, receiver, sender, b, forced, kPipeInBytes)) return PieceRounds::In;
    return PieceRounds::None;
  }
  /// Pieces this rank sends / receives in rounds, and the rounds of its source rows.
  std::size_t pipelined_sends() const {
    return static_cast<std::size_t>(std::count(pipe_.drop_sends.begin(), pipe_.drop_sends.end(), true));
  }
  std::size_t pipelined_recvs() const {
    return static_cast<std::size_t>(std::count(pipe_.drop_recvs.begin(), pipe_.drop_recvs.end(), true));
  }
  std::int64_t pipeline_rounds() const { return pipe_.out.rounds; }
  /// The rounds of this rank's target rows that receive pieces in rounds.
  std::int64_t pipeline_in_rounds() const { return pipe_.in.rounds; }

  /// True when every piece is copied straight from the sender's source into the receiver's
  /// destination by one of the two ranks, with one copy (Communicator::copy_peer(): the
  /// ranks are on one node and may copy each other's memory), instead of being packed,
  /// exchanged and unpacked. The side whose part of a piece is one contiguous run is the
  /// remote one, so that the copy's many runs are on the copier's own side: the receiver
  /// reads the piece when the sender's part is one run, else the sender writes it when the
  /// receiver's part is one run (forced: whichever side has fewer runs). Per exchange, the
  /// other rank sends the copier its buffer's address in start() and waits in finish() for
  /// the copier's word that the copy is done, so a rank's source is read and its
  /// destination written only between its own start() and finish().
  /// Auto: when the communicator can, the host space, every piece of the whole reshard
  /// (every rank's) has a side of one run and runs of kRowRunBytes or more on the other, and
  /// the tensor is kPeerCopyBytes or more when some piece is written by its sender, or
  /// kPeerReadBytes or more when every piece is read by its receiver. The rule depends on
  /// the layouts alone, so every rank agrees without a message.
  bool peer_copy() const { return peer_.on; }
  /// The pieces the last finish() on this rank copied through a mapping of the peer's
  /// buffer (a comm::NodeBuffer on the peer: one pass, no kernel copy); the other pieces
  /// this rank copied went through the kernel.
  std::size_t node_copies() const { return peer_node_copies_; }
  /// Auto's smallest tensors for peer copies (docs/comm.md, session 23 on the Xeon VM: below
  /// them the handshake costs more than it saves, and pieces read by their receivers moved
  /// as fast or faster in rounds up to 4 MiB).
  static constexpr std::int64_t kPeerCopyBytes = std::int64_t(64) << 10;
  static constexpr std::int64_t kPeerReadBytes = std::int64_t(16) << 20;
  /// The tags of the peer copies' messages on `world`: a source's address, a destination's
  /// (two pieces between two ranks, one each way, may both be copied by one of them), done.
  /// Two Resharders with peer copies must not be in flight on one communicator at once.
  static constexpr int kPeerSrcTag = 24230, kPeerDoneTag = 24231, kPeerDstTag = 24232;

  /// True when the exchange reads the source in place (every piece sent is one contiguous
  /// run of this rank's source box: no pack) / writes the destination in place (every piece
  /// received is one contiguous run of its target box: no unpack).
  bool direct_send() const { return !send_offsets_.empty(); }
  bool direct_recv() const { return !recv_offsets_.empty(); }

  const ReshardPlan& plan() const { return plan_; }

  /// Packs `src` (this rank's box of `from`, row-major), starts the exchange, and copies
  /// the piece this rank keeps straight into `dst` (this rank's box of `to`, row-major)
  /// while the exchange is in flight. Complete it with finish().
  comm::Request start(ConstView src, View dst) {
    SHARDFLOW_REQUIRE_INPUT(static_cast<std::int64_t>(src.extent(0)) >= copies_.src_elems, "reshard: source has ",
                            src.extent(0), " elements but rank ", plan_.rank(), " holds ", copies_.src_elems, " of ",
                            plan_.from().to_string());
    SHARDFLOW_REQUIRE_INPUT(static_cast<std::int64_t>(dst.extent(0)) >= copies_.dst_elems, "reshard: destination has ",
                            dst.extent(0), " elements but rank ", plan_.rank(), " holds ", copies_.dst_elems, " of ",
                            plan_.to().to_string());
    src_ = src;
    dst_ = dst;
    if (peer_.on) {  // the pieces move in finish(); the kept one now unless finish() walks it
      peer_start();
      if (copies_.keep && peer_.walk == PeerWalk::None) {
        kernels::copy_box(exec_, src, copies_.keep_src, dst, copies_.keep_dst);
        exec_.fence();
      }
      return comm::Request();
    }
    pipe_start();  // the rounds' receives and direct sends, before anything waits
    if (in_place_) {
      exchange_.rebind(src.data(), dst.data());
      comm::Request req = exchange_.start();
      if (copies_.keep) {
        kernels::copy_box(exec_, src, copies_.keep_src, dst, copies_.keep_dst);
        exec_.fence();
      }
      pipe_out(kPipeSlots);
      return req;
    }
    const bool fused = fused_walk();
    if (fused) {
      pack_and_keep(src, dst);
    } else if (!direct_send()) {
      const View stage(send_.data(), send_.extent(0));
      for (const auto& c : copies_.pack) kernels::copy_box(exec_, src, c.first, stage, c.second);
      exec_.fence();
    }
    exchange_.rebind(direct_send() ? static_cast<const void*>(src.data()) : send_.data(),
                     direct_recv() ? static_cast<void*>(dst.data()) : recv_.data());
    comm::Request req = exchange_.start();
    if (copies_.keep && !fused && !unpack_walk()) {  // (the unpack walk copies it with the pieces received)
      kernels::copy_box(exec_, src, copies_.keep_src, dst, copies_.keep_dst);
      exec_.fence();
    }
    pipe_out(kPipeSlots);  // as many rounds as there are slots
    return req;
  }

  /// Waits for the exchange started by start() and unpacks what arrived into its `dst`.
  void finish(comm::Request& req) {
    if (peer_.on) {
      peer_finish();
      req.wait();
      return;
    }
    pipe_finish();  // the rest of the rounds, then every round's messages
    req.wait();
    if (in_place_ || direct_recv()) return;  // the exchange wrote the pieces into place
    if (unpack_walk()) {                     // one ascending pass over the destination rows
      walk_rows(copies_.unpack_runs, reinterpret_cast<char*>(dst_.data()), copies_.dst_row, copies_.dst_rows,
                kernels::detail::RowWalk::IntoRows, /*skip_keep=*/fused_walk());
      return;
    }
    const ConstView staged(recv_.data(), recv_.extent(0));
    for (const auto& c : copies_.unpack) kernels::copy_box(exec_, staged, c.first, dst_, c.second);
    exec_.fence();
  }

  /// Runs start() and finish(). Between the two, `src` must stay as it was and `dst` must
  /// not be read: the exchange may read the source in place, and the kept piece may be
  /// copied in finish().
  void run(ConstView src, View dst) {
    comm::Request r = start(src, dst);
    finish(r);
  }

  /// Source boxes of at least this many bytes are packed and kept in one walk (below).
  static constexpr std::int64_t kFuseBytes = std::int64_t(4) << 20;
  /// The same when each copy is one run of every source row (the row walk): from this size.
  static constexpr std::int64_t kRowWalkBytes = std::int64_t(1) << 20;
  /// The source's row walk writes a staging buffer of this many bytes or more with
  /// non-temporal stores: the exchange reads it next, on the peer's core, and the bytes then
  /// come from memory instead of from this core's cache.
  static constexpr std::int64_t kStreamBytes = std::int64_t(4) << 20;
  /// The fused peer walk (fused_slab()) writes its rank's destination with non-temporal
  /// stores from this many bytes: a sender the kept piece's, a receiver its whole target box
  /// (kernels::detail::RowRun::stream). Those bytes are not read again by the walk, and the
  /// ordinary store's read of each line first is a third stream of memory traffic the raw
  /// peer (the kernel's copies) does not have: at 64 MiB rows -> columns took 8.2-8.4 ms
  /// against 6.2-6.7 for the raw all_to_allv, 6.7-7.0 streamed (docs/comm.md, session 25).
  /// Below about 1 MiB the destination stays in cache and streaming is slower.
  static constexpr std::int64_t kStreamDstBytes = std::int64_t(1) << 20;
  /// Bytes of source per slab of that walk.
  static constexpr std::int64_t kSlabBytes = std::int64_t(256) << 10;
  /// True when that walk reads the source rows once, in order, each row's runs copied to
  /// their pieces before the next row (every copy one contiguous run of each source row, on
  /// both sides, of kRowRunBytes or more on average): kernels::detail::host_copy_row_runs.
  bool row_walk() const { return fused_walk() && !copies_.row_runs.empty(); }
  /// The receiving side's row walk: finish() writes each destination row once, in order,
  /// from the pieces received and the kept piece (unless the source's walk copied it), when
  /// the received pieces are staged (not direct), every copy into the destination is one
  /// run of each destination row on both sides (a column split becoming a row split), the
  /// runs average kRowRunBytes or more, and the destination box is kRowWalkBytes or more.
  bool unpack_walk() const {
    return kernels::is_host_space_v<ExecSpace> && !in_place_ && !direct_recv() && !copies_.unpack_runs.empty() &&
           copies_.dst_elems * static_cast<std::int64_t>(sizeof(T)) >= kRowWalkBytes;
  }
  /// True when start() packs the sent pieces and copies the kept one in one walk over the
  /// source (host spaces, a source box of kFuseBytes or more, or kRowWalkBytes for the row
  /// walk, something packed and kept).
  bool fused_walk() const {
    return kernels::is_host_space_v<ExecSpace> && !in_place_ && !direct_send() && !copies_.pack.empty() &&
           copies_.keep &&
           copies_.src_elems * static_cast<std::int64_t>(sizeof(T)) >=
               (copies_.row_runs.empty() ? kFuseBytes : kRowWalkBytes);
  }

 private:
  static comm::Communicator& check_comm(comm::Communicator& c, const ReshardPlan& p) {
    SHARDFLOW_REQUIRE_INPUT(c.size() == p.from().mesh().size(), "reshard: communicator '", c.name(), "' has ", c.size(),
                            " ranks but the mesh ", p.from().mesh().to_string(), " has ", p.from().mesh().size());
    SHARDFLOW_REQUIRE_INPUT(c.rank() == p.rank(), "reshard: plan built for rank ", p.rank(), " used on rank ", c.rank(),
                            " of '", c.name(), "'");
    return c;
  }
  /// Auto: in place when the backend and space can, some piece is strided, and every piece
  /// is at most kInPlaceBytes.
  bool choose_in_place(const comm::Communicator& world, ReshardPath path) const {  // (base_'s pieces)
    const bool can = kernels::is_host_space_v<ExecSpace> && world.strided_pieces();
    if (path == ReshardPath::InPlace) {
      SHARDFLOW_REQUIRE_INPUT(can, "reshard: in-place pieces need a host execution space and a backend that moves "
                                   "strided pieces; communicator '",
                              world.name(), "' cannot");
      return true;
    }
    if (path == ReshardPath::Staged || !can) return false;
    const bool strided =
        (!base_.sends().empty() && send_offsets_.empty()) || (!base_.recvs().empty() && recv_offsets_.empty());
    std::int64_t largest = 0;
    for (const auto* list : {&base_.sends(), &base_.recvs()})
      for (const auto& piece : *list) largest = std::max(largest, piece.box.numel());
    return strided && largest * static_cast<std::int64_t>(sizeof(T)) <= kInPlaceBytes;
  }
  /// The all_to_allw of the in-place path: each piece's box in the source / destination.
  comm::CollectivePlan in_place_plan() const {
    kernels::StridedBox none;
    none.ndim = 1;
    none.stride[0] = 1;  // extent 0: no piece
    const auto n = static_cast<std::size_t>(base_.from().mesh().size());
    std::vector<kernels::StridedBox> sends(n, none), recvs(n, none);
    for (std::size_t i = 0; i < copies_.pack.size(); ++i)
      sends[static_cast<std::size_t>(base_.sends()[i].peer)] = copies_.pack[i].first;
    for (std::size_t i = 0; i < copies_.unpack.size(); ++i)
      recvs[static_cast<std::size_t>(base_.recvs()[i].peer)] = copies_.unpack[i].second;
    return comm::CollectivePlan::all_to_allw(dtype_of<T>(), std::move(sends), std::move(recvs));
  }
  using CopyList = std::vector<std::pair<kernels::StridedBox, kernels::StridedBox>>;
  /// Where each piece starts in its frame (the rank's box, row-major: the copies' source
  /// side for the pieces sent, their destination side for those received) when every piece
  /// is one contiguous run of it; empty otherwise (and when there are no pieces).
  static std::vector<std::size_t> runs_in_frame(const CopyList& copies, bool source_side) {
    std::vector<std::size_t> offsets;
    for (const auto& c : copies) {
      const auto sb = (source_side ? c.first : c.second).simplified();
      if (sb.ndim != 1 || sb.stride[0] != 1) return {};
      offsets.push_back(static_cast<std::size_t>(sb.offset));
    }
    return offsets;
  }
  /// The plan's exchange with displacements into the source / destination themselves on
  /// the direct sides.
  static comm::CollectivePlan direct_plan(const ReshardPlan& p, const std::vector<std::size_t>& send_at,
                                          const std::vector<std::size_t>& recv_at) {
    comm::CollectivePlan x = p.exchange_plan(dtype_of<T>());
    for (std::size_t i = 0; i < send_at.size(); ++i)
      x.send_displs[static_cast<std::size_t>(p.sends()[i].peer)] = send_at[i];
    for (std::size_t i = 0; i < recv_at.size(); ++i)
      x.recv_displs[static_cast<std::size_t>(p.recvs()[i].peer)] = recv_at[i];
    return x;
  }
  /// One copy of a row walk (kernels::detail::RowRun in elements): in the walked rows
  /// [row0, row0 + rows), `run` elements at row_off of each row; the other side at
  /// other_off + (r - row0) * other_step of the staging buffer (staged) or of the caller's
  /// other buffer (the kept piece: the destination of the source's walk, the source of the
  /// destination's).
  struct RowRunSpec {
    std::int64_t row0 = 0, rows = 0, row_off = 0, run = 0, other_off = 0, other_step = 0;
    bool staged = false;
  };
  /// Runs of fewer bytes than this (on average) are walked slab by slab instead: a call
  /// per run per row would cost more than the ordered reads save.
  static constexpr std::int64_t kRowRunBytes = 256;
  /// The copies of a start() and finish(), worked out once from the plan: each a pair of
  /// strided boxes (from, to) in the buffers' elements. A call then allocates nothing and
  /// computes no layout box.
  struct Copies {
    std::int64_t src_elems = 0, dst_elems = 0;                                // this rank's boxes of `from` and `to`
    std::int64_t src_rows = 0;                // the source box's first extent (1 for a scalar)
    std::int64_t src_row = 0;                 // elements per source row
    std::int64_t dst_rows = 0, dst_row = 0;   // the destination box's, likewise
    /// pack_and_keep's row walk over the source rows and finish()'s over the destination
    /// rows, each ascending by row_off; empty when some copy is not one contiguous run of
    /// each row on both sides, or the runs are short
    std::vector<RowRunSpec> row_runs, unpack_runs;
    CopyList pack;    // source -> staging
    std::vector<std::int64_t> pack_row0;      // the source row each pack's box starts at
    std::int64_t keep_row0 = 0;
    CopyList unpack;  // staging -> destination
    bool keep = false;
    kernels::StridedBox keep_src, keep_dst;  // the kept piece, source -> destination

    explicit Copies(const ReshardPlan& p) {
      const Box mine = p.from().box(p.rank()), theirs = p.to().box(p.rank());
      src_elems = mine.numel();
      dst_elems = theirs.numel();
      src_rows = mine.ndim() > 0 ? mine.extent[0] : 1;
      auto packed = [](const Box& b, std::size_t at) {
        return kernels::StridedBox::of_array(b.extent, row_major_strides(b.extent), static_cast<std::int64_t>(at));
      };
      std::size_t off = 0;
      for (const auto& piece : p.sends()) {
        pack.emplace_back(kernels::StridedBox::row_major(mine.extent, relative(piece.box, mine)),
                          packed(piece.box, off));
        pack_row0.push_back(piece.box.ndim() > 0 ? piece.box.offset[0] - mine.offset[0] : 0);
        off += static_cast<std::size_t>(piece.box.numel());
      }
      off = 0;
      for (const auto& piece : p.recvs()) {
        unpack.emplace_back(packed(piece.box, off),
                            kernels::StridedBox::row_major(theirs.extent, relative(piece.box, theirs)));
        off += static_cast<std::size_t>(piece.box.numel());
      }
      keep = p.local_piece().numel() > 0;
      if (keep) {
        keep_src = kernels::StridedBox::row_major(mine.extent, relative(p.local_piece(), mine));
        keep_dst = kernels::StridedBox::row_major(theirs.extent, relative(p.local_piece(), theirs));
        keep_row0 = p.local_piece().ndim() > 0 ? p.local_piece().offset[0] - mine.offset[0] : 0;
      }
      src_row = src_rows > 0 ? src_elems / src_rows : 0;
      dst_rows = theirs.ndim() > 0 ? theirs.extent[0] : 1;
      dst_row = dst_rows > 0 ? dst_elems / dst_rows : 0;
      if (mine.ndim() >= 2 && src_row > 0) {
        std::vector<RowRunSpec> runs;
        bool ok = true;
        for (std::size_t i = 0; ok && i < pack.size(); ++i)
          ok = add_row_run(runs, pack[i].first, pack[i].second, pack_row0[i], src_row, src_rows, true);
        if (ok && keep) ok = add_row_run(runs, keep_src, keep_dst, keep_row0, src_row, src_rows, false);
        if (ok) row_runs = ordered(std::move(runs));
      }
      if (theirs.ndim() >= 2 && dst_row > 0 && !unpack.empty()) {
        std::vector<RowRunSpec> runs;
        bool ok = true;
        for (std::size_t i = 0; ok && i < unpack.size(); ++i) {
          const std::int64_t row0 = p.recvs()[i].box.offset[0] - theirs.offset[0];
          ok = add_row_run(runs, unpack[i].second, unpack[i].first, row0, dst_row, dst_rows, true);
        }
        if (ok && keep)
          ok = add_row_run(runs, keep_dst, keep_src, p.local_piece().offset[0] - theirs.offset[0], dst_row, dst_rows,
                           false);
        if (ok) unpack_runs = ordered(std::move(runs));
      }
    }
    /// The runs ascending by row_off, or none when they average under kRowRunBytes.
    static std::vector<RowRunSpec> ordered(std::vector<RowRunSpec> runs) {
      std::int64_t elems = 0;
      for (const auto& r : runs) elems += r.run;
      if (runs.empty() ||
          elems * static_cast<std::int64_t>(sizeof(T)) < kRowRunBytes * static_cast<std::int64_t>(runs.size()))
        return {};
      std::sort(runs.begin(), runs.end(),
                [](const RowRunSpec& a, const RowRunSpec& b) { return a.row_off < b.row_off; });
      return runs;
    }
    /// Adds copy w <-> o to `runs` when each row of the walked box w (whose rows are `row`
    /// elements of a frame of `nrows` rows, the box starting at row row0) is one contiguous
    /// run on both sides; false otherwise (an empty copy is skipped).
    static bool add_row_run(std::vector<RowRunSpec>& runs, const kernels::StridedBox& w, const kernels::StridedBox& o,
                            std::int64_t row0, std::int64_t row, std::int64_t nrows, bool staged) {
      if (w.numel() == 0) return true;
      if (w.ndim < 2 || w.stride[0] != row) return false;
      kernels::StridedBox wi, oi;  // the dimensions after the first
      wi.ndim = oi.ndim = w.ndim - 1;
      for (int k = 1; k < w.ndim; ++k) {
        wi.extent[k - 1] = oi.extent[k - 1] = w.extent[k];
        wi.stride[k - 1] = w.stride[k];
        oi.stride[k - 1] = o.stride[k];
      }
      const kernels::detail::BoxPair q = kernels::detail::simplify_pair(wi, oi);
      if (q.ndim != 1 || q.src_stride[0] != 1 || q.dst_stride[0] != 1) return false;
      RowRunSpec r;
      r.row0 = row0;
      r.rows = w.extent[0];
      r.row_off = w.offset - row0 * row;
      r.run = q.extent[0];
      r.other_off = o.offset;
      r.other_step = o.stride[0];
      r.staged = staged;
      if (r.row_off < 0 || r.row_off + r.run > row || r.row0 < 0 || r.row0 + r.rows > nrows) return false;
      runs.push_back(r);
      return true;
    }
  };

  /// Each row of piece `b` one run of a row of `walker`'s box of `walked` but not the whole
  /// row, and `b` whole rows of `other`'s box of `whole` (and, unless forced, the walked box
  /// min_bytes or more, the runs kRowRunBytes or more).
  static bool runs_of_rows(const Layout& walked, const Layout& whole, int walker, int other, const Box& b, bool forced,
                           std::int64_t min_bytes) {
    if (b.ndim() < 2 || b.numel() == 0) return false;
    const Box s = walked.box(walker), t = whole.box(other);
    for (std::size_t d = 2; d < b.ndim(); ++d)
      if (b.extent[d] != s.extent[d]) return false;
    if (b.extent[1] == s.extent[1]) return false;
    for (std::size_t d = 1; d < b.ndim(); ++d)
      if (b.extent[d] != t.extent[d]) return false;
    if (forced) return true;
    const auto esize = static_cast<std::int64_t>(sizeof(T));
    return s.numel() * esize >= min_bytes && b.numel() / b.extent[0] * esize >= kRowRunBytes;
  }
  /// The pieces that move in rounds (piece_rounds()), worked out once from the plan.
  /// A walked side: the rows of this rank's source box that its rounds pack (Out: pieces it
  /// sends in rounds) or of its target box that they fill (In: pieces it receives in
  /// rounds), each round through one of kPipeSlots slots.
  struct Rounds {
    /// A round's walk over its rows: the runs of the pieces moved in rounds (staged: their
    /// other side is the round's slot, each piece's part after the previous one's) and the
    /// kept piece's run (its other side the destination, Out, or the source, In), ascending
    /// by row_off
    std::vector<RowRunSpec> runs;
    std::int64_t rows = 0;        // rows per round
    std::int64_t rounds = 0;      // 0: nothing moves in rounds on this side
    std::int64_t slot_elems = 0;  // the largest round's staged elements
    /// round k's messages (staged runs with rows in it) are [first[k], first[k + 1]): the
    /// peer, the offset in the slot and the count of each
    std::vector<std::size_t> first;
    std::vector<int> peer;
    std::vector<std::int64_t> at, count;
  };
  /// Messages straight between the caller's buffers and a peer's rounds: into the
  /// destination (lands: a piece a peer sends in rounds) or out of the source (leaves: a
  /// piece a peer receives in rounds), in the peer's round order; `at` in the buffer.
  struct Direct {
    std::vector<int> peer;
    std::vector<std::int64_t> at, count;
    void add(int p, std::int64_t a, std::int64_t c) {
      peer.push_back(p);
      at.push_back(a);
      count.push_back(c);
    }
  };
  struct Pipe {
    std::vector<bool> drop_sends, drop_recvs;  // by index in the plan's sends() / recvs()
    bool keep_in_rounds = false;               // the kept piece is copied in out's or in's walk
    Rounds out, in;
    Direct lands, leaves;
  };
  /// Rows per round of a box `b` walked in rounds.
  static std::int64_t round_rows(const Box& b, std::int64_t round_bytes) {
    const std::int64_t row_bytes = b.extent[0] > 0 ? b.numel() / b.extent[0] * static_cast<std::int64_t>(sizeof(T)) : 1;
    return std::max<std::int64_t>(1, round_bytes / std::max<std::int64_t>(1, row_bytes));
  }
  /// The rows [lo, hi) of a piece spanning rows [b0, b0 + n) of a box walked `g` rows a round,
  /// round by round: f(round, lo, hi).
  template <class F>
  static void by_round(std::int64_t b0, std::int64_t n, std::int64_t g, F&& f) {
    for (std::int64_t k = b0 / g; k * g < b0 + n; ++k) f(k, std::max(k * g, b0), std::min(k * g + g, b0 + n));
  }
  /// Lays out side `r` (its staged runs' `other_off` hold their peers until here): rounds of
  /// round_rows(walked) rows, each round's messages, the slot size.
  static void lay_out(Rounds& r, const Box& walked, std::int64_t round_bytes) {
    std::stable_sort(r.runs.begin(), r.runs.end(),
                     [](const RowRunSpec& a, const RowRunSpec& b) { return a.row_off < b.row_off; });
    r.rows = round_rows(walked, round_bytes);
    r.rounds = (walked.extent[0] + r.rows - 1) / r.rows;
    for (std::int64_t k = 0; k < r.rounds; ++k) {
      r.first.push_back(r.peer.size());
      const std::int64_t a = k * r.rows, b = a + r.rows;
      std::int64_t at = 0;
      for (const RowRunSpec& q : r.runs) {
        const std::int64_t lo = std::max(a, q.row0), hi = std::min(b, q.row0 + q.rows);
        if (!q.staged || hi <= lo) continue;
        r.peer.push_back(static_cast<int>(q.other_off));
        r.at.push_back(at);
        r.count.push_back((hi - lo) * q.run);
        at += (hi - lo) * q.run;
      }
      r.slot_elems = std::max(r.slot_elems, at);
    }
    r.first.push_back(r.peer.size());
    for (RowRunSpec& q : r.runs)
      if (q.staged) q.other_off = 0;
  }
  static Pipe make_pipe(const comm::Communicator& world, const ReshardPlan& p, ReshardPath path,
                        std::int64_t round_bytes, bool peer_copy) {
    Pipe pp;
    pp.drop_sends.assign(p.sends().size(), peer_copy);  // (every piece is copied by a peer)
    pp.drop_recvs.assign(p.recvs().size(), peer_copy);
    SHARDFLOW_REQUIRE_INPUT(round_bytes > 0, "reshard: bytes per round must be positive, not ", round_bytes);
    if (peer_copy) return pp;
    const Layout& from = p.from();
    const Layout& to = p.to();
    if (!kernels::is_host_space_v<ExecSpace> || !world.strided_pieces() || from.ndim() < 2 ||
        (path != ReshardPath::Auto && path != ReshardPath::Pipelined))
      return pp;
    const bool forced = path == ReshardPath::Pipelined;
    const int me = p.rank();
    const auto packed = [](const Box& b) {
      return kernels::StridedBox::of_array(b.extent, row_major_strides(b.extent), 0);
    };
    const auto row_of = [](const Box& b) { return b.numel() / b.extent[0]; };
    // a piece walked in this rank's rounds (one run of each row of my box `walked`), its
    // other side the slot
    const auto walk = [&](Rounds& r, const Box& walked, const ReshardPiece& piece) {
      const bool ok = Copies::add_row_run(
          r.runs, kernels::StridedBox::row_major(walked.extent, relative(piece.box, walked)), packed(piece.box),
          piece.box.offset[0] - walked.offset[0], row_of(walked), walked.extent[0], true);
      SHARDFLOW_REQUIRE(ok, "reshard: internal error: piece ", piece.box.to_string(), " of box ", walked.to_string(),
                        " is not one run of each of its rows");
      r.runs.back().other_off = piece.peer;
    };
    // a piece moved straight between whole rows of my box `mine` and the rounds of the
    // peer's walk over its box `theirs`, one message a round
    const auto direct = [&](Direct& d, const Box& mine, const Box& theirs, const ReshardPiece& piece) {
      const std::int64_t per_row = row_of(piece.box), b0 = piece.box.offset[0] - theirs.offset[0];
      const std::int64_t at = (piece.box.offset[0] - mine.offset[0]) * per_row;
      by_round(b0, piece.box.extent[0], round_rows(theirs, round_bytes),
               [&](std::int64_t, std::int64_t lo, std::int64_t hi) {
                 d.add(piece.peer, at + (lo - b0) * per_row, (hi - lo) * per_row);
               });
    };
    // what this rank sends: packed in its rounds (out), or straight from the source into a
    // receiver's rounds (leaves)
    for (std::size_t i = 0; i < p.sends().size(); ++i) {
      const ReshardPiece& piece = p.sends()[i];
      const PieceRounds how = piece_rounds(from, to, me, piece.peer, piece.box, forced);
      if (how == PieceRounds::Out) walk(pp.out, from.box(me), piece);
      if (how == PieceRounds::In) direct(pp.leaves, from.box(me), to.box(piece.peer), piece);
      pp.drop_sends[i] = how != PieceRounds::None;
    }
    // what this rank receives: straight into the destination from a sender's rounds
    // (lands), or into its own rounds' slots and walked into the destination rows (in)
    for (std::size_t j = 0; j < p.recvs().size(); ++j) {
      const ReshardPiece& piece = p.recvs()[j];
      const PieceRounds how = piece_rounds(from, to, piece.peer, me, piece.box, forced);
      if (how == PieceRounds::Out) direct(pp.lands, to.box(me), from.box(piece.peer), piece);
      if (how == PieceRounds::In) walk(pp.in, to.box(me), piece);
      pp.drop_recvs[j] = how != PieceRounds::None;
    }
    // the kept piece goes in one side's walk when it is one run of each of its rows
    const Box& kept = p.local_piece();
    if (kept.numel() > 0 && (!pp.out.runs.empty() || !pp.in.runs.empty())) {
      const Box mine = from.box(me), theirs = to.box(me);
      const auto ks = kernels::StridedBox::row_major(mine.extent, relative(kept, mine));
      const auto kd = kernels::StridedBox::row_major(theirs.extent, relative(kept, theirs));
      pp.keep_in_rounds = !pp.out.runs.empty()
                              ? Copies::add_row_run(pp.out.runs, ks, kd, kept.offset[0] - mine.offset[0], row_of(mine),
                                                    mine.extent[0], false)
                              : Copies::add_row_run(pp.in.runs, kd, ks, kept.offset[0] - theirs.offset[0],
                                                    row_of(theirs), theirs.extent[0], false);
    }
    if (!pp.out.runs.empty()) lay_out(pp.out, from.box(me), round_bytes);
    if (!pp.in.runs.empty()) lay_out(pp.in, to.box(me), round_bytes);
    return pp;
  }
  /// The rounds' messages bound once: out's sends and in's receives to their parts of their
  /// slots; the direct ones (lands, leaves) rebound to the caller's buffers at every start().
  void bind_pipe(comm::Communicator& world) {
    const DType t = dtype_of<T>();
    const auto n = [](std::int64_t c) { return static_cast<std::size_t>(c); };
    for (std::int64_t k = 0; k < pipe_.out.rounds; ++k)
      for (std::size_t i = pipe_.out.first[n(k)]; i < pipe_.out.first[n(k + 1)]; ++i)
        out_ops_.emplace_back(world, comm::CollectivePlan::send(t, n(pipe_.out.count[i]), pipe_.out.peer[i], kPipeTag),
                              out_slots_.data() + (k % kPipeSlots) * pipe_.out.slot_elems + pipe_.out.at[i], nullptr);
    for (std::int64_t k = 0; k < pipe_.in.rounds; ++k)
      for (std::size_t i = pipe_.in.first[n(k)]; i < pipe_.in.first[n(k + 1)]; ++i)
        in_ops_.emplace_back(world, comm::CollectivePlan::recv(t, n(pipe_.in.count[i]), pipe_.in.peer[i], kPipeTag),
                             nullptr, in_slots_.data() + (k % kPipeSlots) * pipe_.in.slot_elems + pipe_.in.at[i]);
    for (std::size_t i = 0; i < pipe_.lands.peer.size(); ++i)
      land_ops_.emplace_back(world,
                             comm::CollectivePlan::recv(t, n(pipe_.lands.count[i]), pipe_.lands.peer[i], kPipeTag),
                             nullptr, nullptr);
    for (std::size_t i = 0; i < pipe_.leaves.peer.size(); ++i)
      leave_ops_.emplace_back(world,
                              comm::CollectivePlan::send(t, n(pipe_.leaves.count[i]), pipe_.leaves.peer[i], kPipeTag),
                              nullptr, nullptr);
    out_reqs_.resize(out_ops_.size());
    in_reqs_.resize(in_ops_.size());
    land_reqs_.resize(land_ops_.size());
    leave_reqs_.resize(leave_ops_.size());
  }
  /// start(): posts what lands in the destination and in's first rounds, sends what leaves
  /// the source, and rewinds the rounds (src_ and dst_ set).
  void pipe_start() {
    for (std::size_t i = 0; i < land_ops_.size(); ++i) {
      land_ops_[i].rebind(nullptr, dst_.data() + pipe_.lands.at[i]);
      land_reqs_[i] = land_ops_[i].start();
    }
    out_next_ = in_next_ = in_posted_ = 0;
    post_in(kPipeSlots);
    for (std::size_t i = 0; i < leave_ops_.size(); ++i) {
      leave_ops_[i].rebind(src_.data() + pipe_.leaves.at[i], nullptr);
      leave_reqs_[i] = leave_ops_[i].start();
    }
  }
  /// Posts in's receives of the rounds before `upto` (each into its round's slot).
  void post_in(std::int64_t upto) {
    for (; in_posted_ < std::min(upto, pipe_.in.rounds); ++in_posted_)
      for (std::size_t i = pipe_.in.first[static_cast<std::size_t>(in_posted_)];
           i < pipe_.in.first[static_cast<std::size_t>(in_posted_ + 1)]; ++i)
        in_reqs_[i] = in_ops_[i].start();
  }
  /// The row walk's copy of spec `q` over its walked rows [lo, hi) of a walk starting at row
  /// `a`; `other` is the other side of row lo's run.
  static kernels::detail::RowRun row_run(const RowRunSpec& q, std::int64_t a, std::int64_t lo, std::int64_t hi,
                                         T* other) {
    kernels::detail::RowRun r;
    r.row0 = lo - a;
    r.rows = hi - lo;
    r.row_off = static_cast<std::size_t>(q.row_off) * sizeof(T);
    r.bytes = static_cast<std::size_t>(q.run) * sizeof(T);
    r.other = reinterpret_cast<char*>(other);
    r.other_step = q.other_step * static_cast<std::int64_t>(sizeof(T));
    return r;
  }
  /// Round k's walk of side `r` over `base` (rows of `row_bytes`); slot: its slot; keep: the
  /// kept piece's other buffer.
  void walk_round(const Rounds& r, std::int64_t k, char* base, std::int64_t row_bytes, std::int64_t nrows, T* slot,
                  T* keep, kernels::detail::RowWalk dir) {
    const std::int64_t a = k * r.rows, b = std::min(nrows, a + r.rows);
    std::int64_t at = 0;
    std::size_t n = 0;
    for (const RowRunSpec& q : r.runs) {
      const std::int64_t lo = std::max(a, q.row0), hi = std::min(b, q.row0 + q.rows);
      if (hi <= lo) continue;
      row_runs_[n++] = row_run(q, a, lo, hi, q.staged ? slot + at : keep + q.other_off + (lo - q.row0) * q.other_step);
      if (q.staged) at += (hi - lo) * q.run;
    }
    kernels::detail::host_copy_row_runs(base + a * row_bytes, row_bytes, b - a, row_runs_.data(), n, dir);
  }
  /// Packs and sends out's rounds until `upto` have been (each waits until its slot is free).
  void pipe_out(std::int64_t upto) {
    const Rounds& r = pipe_.out;
    for (; out_next_ < std::min(upto, r.rounds); ++out_next_) {
      const auto k = static_cast<std::size_t>(out_next_);
      if (k >= kPipeSlots)  // the slot's previous round must have left
        for (std::size_t i = r.first[k - kPipeSlots]; i < r.first[k - kPipeSlots + 1]; ++i) out_reqs_[i].wait();
      walk_round(r, out_next_, const_cast<char*>(reinterpret_cast<const char*>(src_.data())),
                 copies_.src_row * static_cast<std::int64_t>(sizeof(T)), copies_.src_rows,
                 out_slots_.data() + (out_next_ % kPipeSlots) * r.slot_elems, dst_.data(),
                 kernels::detail::RowWalk::FromRows);
      for (std::size_t i = r.first[k]; i < r.first[k + 1]; ++i) out_reqs_[i] = out_ops_[i].start();
      // progress: the peers' rounds run now too, and their messages are copied in MPI calls
      // (testing one pending receive drives MPI's progress for all)
      test_first_pending();
    }
  }
  void test_first_pending() {
    for (auto* reqs : {&land_reqs_, &in_reqs_})
      for (auto& q : *reqs)
        if (q.pending()) {
          q.test();
          return;
        }
  }
  /// finish(): the rest of out's rounds; in's rounds as they arrive, each walked into the
  /// destination rows and its slot posted again; then every round's messages.
  void pipe_finish() {
    pipe_out(pipe_.out.rounds);
    const Rounds& r = pipe_.in;
    for (; in_next_ < r.rounds; ++in_next_) {
      const auto k = static_cast<std::size_t>(in_next_);
      for (std::size_t i = r.first[k]; i < r.first[k + 1]; ++i) in_reqs_[i].wait();
      walk_round(r, in_next_, reinterpret_cast<char*>(dst_.data()),
                 copies_.dst_row * static_cast<std::int64_t>(sizeof(T)), copies_.dst_rows,
                 in_slots_.data() + (in_next_ % kPipeSlots) * r.slot_elems, const_cast<T*>(src_.data()),
                 kernels::detail::RowWalk::IntoRows);
      post_in(in_next_ + 1 + kPipeSlots);
    }
    for (auto* reqs : {&land_reqs_, &leave_reqs_, &out_reqs_})
      for (auto& q : *reqs) q.wait();
  }

  /// A piece copied between this rank's buffer and a peer's (peer_copy()).
  struct PeerPiece {
    int peer = 0;
    bool sent = false;    // this rank sends it (its source is read), else receives it
    bool copier = false;  // this rank makes the copy; else the peer does, with this rank's buffer
    /// copier: the piece in this rank's buffer (its frame: the rank's source box when sent,
    /// its target box when received; starting at row row0 of it) and in the peer's
    kernels::StridedBox local, remote;
    std::int64_t row0 = 0;
  };
  enum class PeerWalk { None, Source, Target };
  struct Peer {
    bool on = false;
    std::vector<PeerPiece> pieces;
    /// finish() walks this rank's source rows (the pieces it writes to its peers) or its
    /// target rows (those it reads from them) slab by slab (kPeerSlabBytes), each slab's
    /// part of those pieces copied with the kept piece's before the next slab: rows split on
    /// one side and not the other are then read (written) once, in order, instead of half by
    /// half in two passes. When the walk is fused (bind_peer_walk(), fused_slab()), each slab's rows are
    /// copied in one ordered pass to (from) the slot and the kept piece's other side. None:
    /// the kept piece is copied in start().
    PeerWalk walk = PeerWalk::None;
  };
  /// Pieces whose runs on the copier's side are shorter than this go through a slot of
  /// kPeerSlotBytes in the copier's cache, one run each way between the slot and the peer:
  /// copied straight from or into short runs, the kernel's cost per run made the copy about
  /// half as fast (docs/comm.md). With the walk fused (see bind_peer_walk()) the slot is filled
  /// from (emptied into) the walked rows in the same pass as the kept piece.
  static constexpr std::size_t kPeerDirectRunBytes = 4096, kPeerSlotBytes = std::size_t(256) << 10;
  /// Rows of a peer walk's slab: as many as fit in this many bytes.
  static constexpr std::int64_t kPeerSlabBytes = std::int64_t(256) << 10;
  /// The piece's runs in the sender's source box and the receiver's target box (elements).
  static std::pair<kernels::StridedBox, kernels::StridedBox> piece_frames(const Layout& from, const Layout& to,
                                                                          int sender, int receiver, const Box& b) {
    const Box s = from.box(sender), t = to.box(receiver);
    return {kernels::StridedBox::row_major(s.extent, relative(b, s)).simplified(),
            kernels::StridedBox::row_major(t.extent, relative(b, t)).simplified()};
  }
  static std::int64_t runs_of(const kernels::StridedBox& b) { return b.numel() / b.contiguous_run(); }
  /// The rank that copies piece `b` (the receiver or the sender), or -1 when neither may
  /// under Auto's rule (see peer_copy()).
  static int peer_copier(const Layout& from, const Layout& to, int sender, int receiver, const Box& b, bool forced) {
    const auto f = piece_frames(from, to, sender, receiver, b);
    const std::int64_t rs = runs_of(f.first), rr = runs_of(f.second);
    if (forced) return rs <= rr ? receiver : sender;
    const auto esize = static_cast<std::int64_t>(sizeof(T));
    if (rs == 1 && (rr == 1 || f.second.contiguous_run() * esize >= kRowRunBytes)) return receiver;
    if (rr == 1 && f.first.contiguous_run() * esize >= kRowRunBytes) return sender;
    return -1;
  }
  static Peer make_peer(const comm::Communicator& world, const ReshardPlan& p, ReshardPath path) {
    Peer peer;
    const bool forced = path == ReshardPath::PeerCopy;
    const bool can = kernels::is_host_space_v<ExecSpace> && world.peer_copies();
    if (forced)
      SHARDFLOW_REQUIRE_INPUT(can,
                              "reshard: peer copies need a host execution space and a communicator whose ranks "
                              "can copy each other's memory; communicator '",
                              world.name(), "' cannot");
    const Layout& from = p.from();
    const Layout& to = p.to();
    if (!can || (path != ReshardPath::Auto && !forced)) return peer;
    if (!forced) {  // every piece of every rank must qualify
      std::int64_t bytes = static_cast<std::int64_t>(sizeof(T));
      for (std::int64_t e : from.global_shape()) bytes *= e;
      if (bytes < kPeerCopyBytes) return peer;
      bool writes = false;
      for (int q = 0; q < from.mesh().size(); ++q) {
        const ReshardPlan pq = q == p.rank() ? p : ReshardPlan(from, to, q);
        for (const ReshardPiece& piece : pq.sends()) {
          const int copier = peer_copier(from, to, q, piece.peer, piece.box, false);
          if (copier < 0) return peer;
          writes = writes || copier == q;
        }
      }
      if (!writes && bytes < kPeerReadBytes) return peer;
    }
    const int me = p.rank();
    const auto add = [&](const ReshardPiece& piece, bool sent) {
      const int sender = sent ? me : piece.peer, receiver = sent ? piece.peer : me;
      PeerPiece pp;
      pp.peer = piece.peer;
      pp.sent = sent;
      pp.copier = peer_copier(from, to, sender, receiver, piece.box, forced) == me;
      const Box s = from.box(sender), t = to.box(receiver);
      const auto in_s = kernels::StridedBox::row_major(s.extent, relative(piece.box, s));
      const auto in_t = kernels::StridedBox::row_major(t.extent, relative(piece.box, t));
      pp.local = sent ? in_s : in_t;
      pp.remote = sent ? in_t : in_s;
      pp.row0 = piece.box.ndim() > 0 ? piece.box.offset[0] - (sent ? s : t).offset[0] : 0;
      peer.pieces.push_back(pp);
    };
    for (const ReshardPiece& piece : p.sends()) add(piece, true);
    for (const ReshardPiece& piece : p.recvs()) add(piece, false);
    peer.on = true;
    if (from.ndim() > 0)
      for (const PeerPiece& q : peer.pieces)
        if (q.copier) {
          peer.walk = q.sent ? PeerWalk::Source : PeerWalk::Target;
          break;
        }
    return peer;
  }
  /// Each piece's two messages, bound once: the copier receives the other rank's buffer
  /// address and its node buffer (comm::NodeRef, id 0 when none) into the kRecWords words
  /// at peer_words_[kPieceWords i] and sends its done word from the word after them; the
  /// other rank sends the address and receives the done word.
  static constexpr std::size_t kRecWords = 1 + comm::NodeRef::kWords, kPieceWords = kRecWords + 1;
  void bind_peer(comm::Communicator& world) {
    world_ = &world;
    peer_words_.assign(kPieceWords * peer_.pieces.size(), 0);
    peer_maps_.resize(peer_.pieces.size());
    peer_mapped_.assign(peer_.pieces.size(), nullptr);
    for (std::size_t i = 0; i < peer_.pieces.size(); ++i) {
      const PeerPiece& q = peer_.pieces[i];
      std::int64_t* addr = &peer_words_[kPieceWords * i];
      std::int64_t* done = &peer_words_[kPieceWords * i + kRecWords];
      // the address of the sender's source or of the receiver's destination
      const int tag = q.sent == q.copier ? kPeerDstTag : kPeerSrcTag;
      if (q.copier) {
        peer_addr_ops_.emplace_back(world, comm::CollectivePlan::recv(DType::I64, kRecWords, q.peer, tag), nullptr,
                                    addr);
        peer_done_ops_.emplace_back(world, comm::CollectivePlan::send(DType::I64, 1, q.peer, kPeerDoneTag), done,
                                    nullptr);
      } else {
        peer_addr_ops_.emplace_back(world, comm::CollectivePlan::send(DType::I64, kRecWords, q.peer, tag), addr,
                                    nullptr);
        peer_done_ops_.emplace_back(world, comm::CollectivePlan::recv(DType::I64, 1, q.peer, kPeerDoneTag), nullptr,
                                    done);
      }
    }
    peer_addr_reqs_.resize(peer_addr_ops_.size());
    peer_done_reqs_.resize(peer_done_ops_.size());
  }
  /// start(): the copier's receives of the addresses and the others' of the done words, then
  /// this rank's buffer addresses (and node buffers) to the pieces' copiers.
  void peer_start() {
    for (std::size_t i = 0; i < peer_.pieces.size(); ++i)
      if (peer_.pieces[i].copier)
        peer_addr_reqs_[i] = peer_addr_ops_[i].start();
      else
        peer_done_reqs_[i] = peer_done_ops_[i].start();
    for (std::size_t i = 0; i < peer_.pieces.size(); ++i) {
      const PeerPiece& q = peer_.pieces[i];
      if (q.copier) continue;
      std::int64_t* rec = &peer_words_[kPieceWords * i];
      const void* mine = q.sent ? static_cast<const void*>(src_.data()) : static_cast<const void*>(dst_.data());
      const auto elems = q.sent ? copies_.src_elems : copies_.dst_elems;
      const comm::NodeRef ref = comm::NodeBuffer::find(mine, static_cast<std::size_t>(elems) * sizeof(T));
      rec[0] = static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(mine));
      ref.to_words(rec + 1);
      peer_addr_reqs_[i] = peer_addr_ops_[i].start();
    }
  }
  /// The address piece `i`'s peer sent (its source's or destination's first element).
  std::uintptr_t peer_addr(std::size_t i) const { return static_cast<std::uintptr_t>(peer_words_[kPieceWords * i]); }
  /// The node buffer piece `i`'s peer sent with it (id 0: none).
  comm::NodeRef peer_ref(std::size_t i) const { return comm::NodeRef::from_words(&peer_words_[kPieceWords * i + 1]); }
  /// Waits for piece `i`'s address and maps the peer's buffer when it is a node buffer
  /// (peer_mapped_[i]: its first element here; null: copy through the kernel). A mapping is
  /// kept while the same buffer comes back, and replaced when another does.
  void wait_peer_addr(std::size_t i) {
    peer_addr_reqs_[i].wait();
    const comm::NodeRef ref = peer_ref(i);
    peer_mapped_[i] = nullptr;
    if (ref.id == 0) return;
    const int peer = peer_.pieces[i].peer;
    if (!peer_maps_[i].same(peer, ref)) peer_maps_[i] = world_->map_peer(peer, ref);
    if (peer_maps_[i].data() != nullptr) peer_mapped_[i] = static_cast<char*>(peer_maps_[i].data()) + ref.offset;
  }
  /// Works out the peer walk's kept piece (peer_keep_, peer_keep_row0_) and whether the walk
  /// is fused (peer_fused_): when every piece this rank's walk copies is one run of each
  /// walked row, shorter than kPeerDirectRunBytes, the kept piece (if any) one run of each
  /// row too, and a row fits the slot.
  void bind_peer_walk() {
    if (peer_.walk == PeerWalk::None) return;
    if (copies_.keep) {
      const Box& kept = plan_.local_piece();
      peer_keep_row0_ = kept.ndim() > 0 ? kept.offset[0] - plan_.to().box(plan_.rank()).offset[0] : 0;
      if (peer_.walk == PeerWalk::Source)
        Copies::add_row_run(peer_keep_, copies_.keep_src, copies_.keep_dst, copies_.keep_row0, copies_.src_row,
                            copies_.src_rows, false);
      else
        Copies::add_row_run(peer_keep_, copies_.keep_dst, copies_.keep_src, peer_keep_row0_, copies_.dst_row,
                            copies_.dst_rows, false);
      if (peer_keep_.empty()) return;  // not one run of each row: the walk is not fused
    }
    const bool walk_src = peer_.walk == PeerWalk::Source;
    const std::int64_t row = walk_src ? copies_.src_row : copies_.dst_row;
    const std::int64_t rows = walk_src ? copies_.src_rows : copies_.dst_rows;
    if (row * static_cast<std::int64_t>(sizeof(T)) > static_cast<std::int64_t>(kPeerSlotBytes)) return;
    for (std::size_t i = 0; i < peer_.pieces.size(); ++i) {
      const PeerPiece& q = peer_.pieces[i];
      if (!q.copier || q.sent != walk_src) continue;
      std::vector<RowRunSpec> one;
      if (!Copies::add_row_run(one, q.local, packed_like(q.local, 0), q.row0, row, rows, true) || one.size() != 1 ||
          one[0].run * static_cast<std::int64_t>(sizeof(T)) >= static_cast<std::int64_t>(kPeerDirectRunBytes)) {
        peer_fused_.clear();
        peer_direct_.clear();
        return;
      }
      peer_fused_.emplace_back(i, one[0]);
      // the same rows straight into (out of) the peer's buffer, when it is mapped
      std::vector<RowRunSpec> direct;
      const bool ok = Copies::add_row_run(direct, q.local, q.remote, q.row0, row, rows, false) && direct.size() == 1;
      peer_direct_.push_back({ok ? direct[0] : RowRunSpec{}, ok,
                              q.local.numel() * static_cast<std::int64_t>(sizeof(T)) >= kStreamDstBytes});
    }
    peer_parts_.resize(peer_fused_.size());
    if (row_runs_.size() < peer_fused_.size() + 1) row_runs_.resize(peer_fused_.size() + 1);
    // the destination the walk writes: a sender's kept piece, a receiver's target rows
    const std::int64_t dst_bytes = walk_src ? plan_.local_piece().numel() : copies_.dst_rows * copies_.dst_row;
    peer_stream_dst_ = dst_bytes * static_cast<std::int64_t>(sizeof(T)) >= kStreamDstBytes;
  }
  /// The address of this rank's buffer that piece `q` is in.
  std::uintptr_t peer_mine(const PeerPiece& q) const {
    return q.sent ? reinterpret_cast<std::uintptr_t>(src_.data()) : reinterpret_cast<std::uintptr_t>(dst_.data());
  }
  /// finish(): the walk (see Peer::walk), then each other piece this rank copies, each once
  /// its peer's address has come, then the done words; then the done words of the pieces
  /// the peers copy.
  void peer_finish() {
    const bool walk_src = peer_.walk == PeerWalk::Source;
    const auto walked = [&](const PeerPiece& q) {
      return q.copier && peer_.walk != PeerWalk::None && q.sent == walk_src;
    };
    if (peer_.walk != PeerWalk::None) {
      for (std::size_t i = 0; i < peer_.pieces.size(); ++i)
        if (walked(peer_.pieces[i])) wait_peer_addr(i);
      const std::int64_t rows = walk_src ? copies_.src_rows : copies_.dst_rows;
      const std::int64_t row_bytes = std::max<std::int64_t>(1, walk_src ? copies_.src_row : copies_.dst_row) *
                                     static_cast<std::int64_t>(sizeof(T));
      const std::int64_t per = std::max<std::int64_t>(1, kPeerSlabBytes / row_bytes);
      char* base = walk_src ? const_cast<char*>(reinterpret_cast<const char*>(src_.data()))
                            : reinterpret_cast<char*>(dst_.data());
      const bool fused = !peer_fused_.empty();
      for (std::int64_t a = 0; a < rows; a += per) {
        const std::int64_t b = std::min(rows, a + per);
        if (fused) {
          fused_slab(a, b, base, row_bytes, walk_src);
          continue;
        }
        for (std::size_t i = 0; i < peer_.pieces.size(); ++i) {
          const PeerPiece& q = peer_.pieces[i];
          if (!walked(q)) continue;
          const auto part = slab({q.local, q.remote}, q.row0, a, b);
          if (part.first.numel() > 0) copy_piece(q, part.first, part.second, peer_mine(q), i);
        }
        if (!copies_.keep) continue;
        if (!peer_keep_.empty()) {  // the kept piece is one run of each walked row
          const RowRunSpec& k = peer_keep_.front();
          const std::int64_t lo = std::max(a, k.row0), hi = std::min(b, k.row0 + k.rows);
          if (hi <= lo) continue;
          T* other = walk_src ? dst_.data() : const_cast<T*>(src_.data());
          const kernels::detail::RowRun r = row_run(k, a, lo, hi, other + k.other_off + (lo - k.row0) * k.other_step);
          kernels::detail::host_copy_row_runs(
              base + a * row_bytes, row_bytes, b - a, &r, 1,
              walk_src ? kernels::detail::RowWalk::FromRows : kernels::detail::RowWalk::IntoRows);
        } else if (walk_src) {
          const auto part = slab({copies_.keep_src, copies_.keep_dst}, copies_.keep_row0, a, b);
          if (part.first.numel() > 0) kernels::copy_box(exec_, src_, part.first, dst_, part.second);
        } else {
          const auto part = slab({copies_.keep_dst, copies_.keep_src}, peer_keep_row0_, a, b);
          if (part.first.numel() > 0) kernels::copy_box(exec_, src_, part.second, dst_, part.first);
        }
      }
      exec_.fence();
    }
    for (std::size_t i = 0; i < peer_.pieces.size(); ++i) {
      const PeerPiece& q = peer_.pieces[i];
      if (!q.copier) continue;
      if (!walked(q)) {
        wait_peer_addr(i);
        copy_piece(q, q.local, q.remote, peer_mine(q), i);
      }
      // this rank's stores into the peer's memory (the mapping's) are seen before the word
      std::atomic_thread_fence(std::memory_order_seq_cst);
      peer_done_reqs_[i] = peer_done_ops_[i].start();
    }
    for (auto* reqs : {&peer_addr_reqs_, &peer_done_reqs_})
      for (auto& r : *reqs) r.wait();
    peer_node_copies_ = 0;
    for (std::size_t i = 0; i < peer_.pieces.size(); ++i)
      peer_node_copies_ += peer_.pieces[i].copier && peer_mapped_[i] != nullptr ? 1 : 0;
  }
  /// Box `b`'s extents packed row-major from element `offset` (a slot's layout).
  static kernels::StridedBox packed_like(const kernels::StridedBox& b, std::int64_t offset) {
    kernels::StridedBox p = b;
    std::int64_t step = 1;
    for (int d = p.ndim - 1; d >= 0; --d) {
      p.stride[d] = step;
      step *= p.extent[d];
    }
    p.offset = offset;
    return p;
  }
  /// Rows [a, b) of the fused peer walk (peer_fused_). Source: the rows are read once, in
  /// order, each row's runs copied to the slot (the pieces this rank writes, one after the
  /// other) and to the destination (the kept piece); then each piece's part is written to
  /// its peer from the slot as one run. Target: each piece's part is read from its peer into
  /// the slot as one run; then the rows are written once, in order, from the slot and from
  /// the source (the kept piece).
  void fused_slab(std::int64_t a, std::int64_t b, char* base, std::int64_t row_bytes, bool walk_src) {
    T* slot = reinterpret_cast<T*>(peer_slot_.data());
    std::size_t n = 0, parts = 0;
    std::int64_t at = 0;
    for (std::size_t k = 0; k < peer_fused_.size(); ++k) {
      const auto& f = peer_fused_[k];
      const std::int64_t lo = std::max(a, f.second.row0), hi = std::min(b, f.second.row0 + f.second.rows);
      if (hi <= lo) continue;
      if (peer_mapped_[f.first] != nullptr && peer_direct_[k].ok) {  // the peer's node buffer: no slot
        const RowRunSpec& d = peer_direct_[k].run;
        T* other = reinterpret_cast<T*>(peer_mapped_[f.first]);
        row_runs_[n] = row_run(d, a, lo, hi, other + d.other_off + (lo - d.row0) * d.other_step);
        row_runs_[n++].stream = walk_src && peer_direct_[k].stream;  // a sender's writes into the peer's destination
        continue;
      }
      row_runs_[n++] = row_run(f.second, a, lo, hi, slot + at);
      peer_parts_[parts++] = {f.first, at};
      at += (hi - lo) * f.second.run;
    }
    if (copies_.keep) {
      const RowRunSpec& k = peer_keep_.front();
      const std::int64_t lo = std::max(a, k.row0), hi = std::min(b, k.row0 + k.rows);
      T* other = walk_src ? dst_.data() : const_cast<T*>(src_.data());
      if (hi > lo) {
        row_runs_[n++] = row_run(k, a, lo, hi, other + k.other_off + (lo - k.row0) * k.other_step);
        row_runs_[n - 1].stream = walk_src && peer_stream_dst_;  // a sender's kept piece: its destination
      }
    }
    std::sort(row_runs_.begin(), row_runs_.begin() + static_cast<std::ptrdiff_t>(n),
              [](const kernels::detail::RowRun& x, const kernels::detail::RowRun& y) { return x.row_off < y.row_off; });
    if (!walk_src && peer_stream_dst_)  // a receiver's destination rows, every run into them
      for (std::size_t i = 0; i < n; ++i) row_runs_[i].stream = true;
    const auto move_parts = [&] {
      for (std::size_t m = 0; m < parts; ++m) {
        const PeerPiece& q = peer_.pieces[peer_parts_[m].first];
        const auto part = slab({q.local, q.remote}, q.row0, a, b);
        copy_piece(q, packed_like(part.second, peer_parts_[m].second), part.second,
                   reinterpret_cast<std::uintptr_t>(slot), peer_parts_[m].first, /*packed=*/true);
      }
    };
    if (!walk_src) move_parts();
    kernels::detail::host_copy_row_runs(
        base + a * row_bytes, row_bytes, b - a, row_runs_.data(), n,
        walk_src ? kernels::detail::RowWalk::FromRows : kernels::detail::RowWalk::IntoRows);
    if (walk_src) move_parts();
  }
  /// Copies box `local` of this rank's buffer at `mine` to or from box `remote` of the
  /// buffer piece `i`'s peer sent (piece `q`'s direction): through the mapping of it when it
  /// is a node buffer, with ordinary loads and stores; else through the kernel, in calls of
  /// at most kMaxPeerRuns runs on either side (adjacent runs merged).
  void copy_piece(const PeerPiece& q, const kernels::StridedBox& local, const kernels::StridedBox& remote,
                  std::uintptr_t mine, std::size_t i, bool packed = false) {
    if (local.numel() == 0) return;
    if (peer_mapped_[i] != nullptr) {
      const auto far = static_cast<std::size_t>(remote.span_end()), near = static_cast<std::size_t>(local.span_end());
      const comm::NodeRef ref = peer_ref(i);
      SHARDFLOW_REQUIRE(static_cast<std::int64_t>(far * sizeof(T)) <= ref.bytes - ref.offset, "reshard: rank ",
                        plan_.rank(), "'s piece with rank ", q.peer, " reaches byte ", far * sizeof(T),
                        " of a node buffer of ", ref.bytes - ref.offset, " bytes from its start");
      T* theirs = reinterpret_cast<T*>(peer_mapped_[i]);
      T* here = reinterpret_cast<T*>(mine);
      if (q.sent)
        kernels::copy_box(exec_, ConstView(here, near), local, View(theirs, far), remote);
      else
        kernels::copy_box(exec_, ConstView(theirs, far), remote, View(here, near), local);
      exec_.fence();
      return;
    }
    const std::uintptr_t theirs = peer_addr(i);
    using Run = comm::Communicator::PeerRun;
    const kernels::detail::BoxPair p = kernels::detail::simplify_pair(local, remote);
    const int nd = p.ndim;
    const bool unit = p.src_stride[nd - 1] == 1 && p.dst_stride[nd - 1] == 1;
    const std::int64_t run = unit ? p.extent[nd - 1] : 1;  // elements per common run
    const int outer = unit ? nd - 1 : nd;                  // dimensions walked run by run
    const auto esize = sizeof(T);
    std::int64_t idx[kernels::kMaxBoxDims] = {};
    std::int64_t runs = 1;
    for (int d = 0; d < outer; ++d) runs *= p.extent[d];
    std::size_t nl = 0, nr = 0;
    const std::size_t bytes = static_cast<std::size_t>(run) * esize;
    // a write whose local runs are short is packed into the slot and written from there
    const bool bounce = !packed && q.sent && bytes < kPeerDirectRunBytes;
    std::size_t in_slot = 0;
    char* slot = peer_slot_.data();
    const auto flush = [&] {
      if (nl == 0) return;
      if (bounce) {
        for (std::size_t j = 0, at = 0; j < nl; at += peer_local_[j].bytes, ++j)
          std::memcpy(slot + at, reinterpret_cast<const void*>(peer_local_[j].addr), peer_local_[j].bytes);
        const Run whole{reinterpret_cast<std::uintptr_t>(slot), in_slot};
        world_->copy_peer(q.peer, /*write=*/true, &whole, 1, peer_remote_.data(), nr);
      } else {
        world_->copy_peer(q.peer, /*write=*/q.sent, peer_local_.data(), nl, peer_remote_.data(), nr);
      }
      nl = nr = 0;
      in_slot = 0;
    };
    const auto merges = [](const std::vector<Run>& v, std::size_t n, std::uintptr_t a) {
      return n > 0 && v[n - 1].addr + v[n - 1].bytes == a;
    };
    const auto append = [&](std::vector<Run>& v, std::size_t& n, std::uintptr_t a, std::size_t len) {
      if (merges(v, n, a))
        v[n - 1].bytes += len;
      else
        v[n++] = Run{a, len};
    };
    for (std::int64_t k = 0; k < runs; ++k) {
      std::int64_t lo = p.src_offset, ro = p.dst_offset;
      for (int d = 0; d < outer; ++d) {
        lo += idx[d] * p.src_stride[d];
        ro += idx[d] * p.dst_stride[d];
      }
      const std::uintptr_t la = mine + static_cast<std::uintptr_t>(lo) * esize;
      const std::uintptr_t ra = theirs + static_cast<std::uintptr_t>(ro) * esize;
      if ((nl == comm::Communicator::kMaxPeerRuns && !merges(peer_local_, nl, la)) ||
          (nr == comm::Communicator::kMaxPeerRuns && !merges(peer_remote_, nr, ra)) ||
          (bounce && in_slot + bytes > peer_slot_.size()))
        flush();
      in_slot += bytes;
      append(peer_local_, nl, la, bytes);
      append(peer_remote_, nr, ra, bytes);
      for (int d = outer - 1; d >= 0 && ++idx[d] == p.extent[d]; --d) idx[d] = 0;
    }
    flush();
  }

  /// Packs the sent pieces and copies the kept one slab by slab of the source's outermost
  /// dimension. Each piece takes part of every source row (e.g. a row split becoming a
  /// column split), and the hardware fetches whole neighbourhoods of the lines a copy reads:
  /// a source larger than the cache walked once per piece is read from memory once per
  /// piece. Walked once, the second piece's lines of a slab are still in cache.
  void pack_and_keep(const ConstView& src, const View& dst) {
    if (!copies_.row_runs.empty()) {  // one ascending pass over the source rows
      walk_rows(copies_.row_runs, const_cast<char*>(reinterpret_cast<const char*>(src.data())), copies_.src_row,
                copies_.src_rows, kernels::detail::RowWalk::FromRows, false, dst.data());
      return;
    }
    const View stage(send_.data(), send_.extent(0));
    const std::int64_t rows = copies_.src_rows;
    const std::int64_t row_bytes = std::max<std::int64_t>(1, copies_.src_elems / std::max<std::int64_t>(rows, 1)) *
                                   static_cast<std::int64_t>(sizeof(T));
    const std::int64_t per = std::max<std::int64_t>(1, kSlabBytes / row_bytes);
    for (std::int64_t a = 0; a < rows; a += per) {
      const std::int64_t b = std::min(rows, a + per);
      for (std::size_t i = 0; i < copies_.pack.size(); ++i) {
        auto part = slab(copies_.pack[i], copies_.pack_row0[i], a, b);
        if (part.first.numel() > 0) kernels::copy_box(exec_, src, part.first, stage, part.second);
      }
      auto part = slab({copies_.keep_src, copies_.keep_dst}, copies_.keep_row0, a, b);
      if (part.first.numel() > 0) kernels::copy_box(exec_, src, part.first, dst, part.second);
    }
    exec_.fence();
  }
  /// Runs the row walk `runs` over `rows` rows of `row` elements at `base` (the source's
  /// rows, FromRows: the staging side is send_; the destination's, IntoRows: recv_). The kept
  /// piece's other side is `keep_other` (FromRows: the destination) or src_ (IntoRows); it
  /// is left out when skip_keep.
  void walk_rows(const std::vector<RowRunSpec>& runs, char* base, std::int64_t row, std::int64_t rows,
                 kernels::detail::RowWalk dir, bool skip_keep, T* keep_other = nullptr) {
    const bool from = dir == kernels::detail::RowWalk::FromRows;
    T* staging = from ? send_.data() : recv_.data();
    T* other_keep = from ? keep_other : const_cast<T*>(src_.data());
    std::size_t n = 0;
    for (const RowRunSpec& q : runs) {
      if (skip_keep && !q.staged) continue;
      kernels::detail::RowRun& r = row_runs_[n++] =
          row_run(q, 0, q.row0, q.row0 + q.rows, (q.staged ? staging : other_keep) + q.other_off);
      r.stream = from && q.staged && base_.send_elems() * static_cast<std::int64_t>(sizeof(T)) >= kStreamBytes;
    }
    kernels::detail::host_copy_row_runs(base, row * static_cast<std::int64_t>(sizeof(T)), rows, row_runs_.data(), n,
                                        dir);
  }
  /// The part of copy `c` (whose source box starts at source row `row0`) in source rows
  /// [a, b): both boxes cut along their first dimension (empty extents when none).
  static std::pair<kernels::StridedBox, kernels::StridedBox> slab(
      const std::pair<kernels::StridedBox, kernels::StridedBox>& c, std::int64_t row0, std::int64_t a, std::int64_t b) {
    auto part = c;
    const std::int64_t lo = std::max(a, row0), hi = std::min(b, row0 + c.first.extent[0]);
    part.first.extent[0] = part.second.extent[0] = std::max<std::int64_t>(0, hi - lo);
    if (hi > lo) {
      part.first.offset += (lo - row0) * c.first.stride[0];
      part.second.offset += (lo - row0) * c.second.stride[0];
    }
    return part;
  }

  static Box relative(const Box& b, const Box& frame) {
    Box r = b;
    for (std::size_t d = 0; d < r.ndim(); ++d) r.offset[d] -= frame.offset[d];
    return r;
  }

  ReshardPlan plan_;
  ExecSpace exec_;
  Peer peer_;         // the pieces copied by a peer (peer_copy())
  Pipe pipe_;         // the pieces moved in rounds
  ReshardPlan base_;  // the rest: plan_ without them
  Copies copies_;
  std::vector<kernels::detail::RowRun> row_runs_ =  // scratch of every row walk
      std::vector<kernels::detail::RowRun>(
          std::max({copies_.row_runs.size(), copies_.unpack_runs.size(), pipe_.out.runs.size(), pipe_.in.runs.size()}));
  std::vector<std::size_t> send_offsets_, recv_offsets_;  // direct paths (see direct_send())
  bool in_place_ = false;                                  // see in_place()
  Kokkos::View<T*, memory_space> send_, recv_;
  Kokkos::View<T*, memory_space> out_slots_, in_slots_;  // kPipeSlots slots of each side's slot_elems
  ConstView src_;
  View dst_;
  comm::Collective exchange_;
  std::vector<comm::Collective> out_ops_, in_ops_, land_ops_, leave_ops_;
  std::vector<comm::Request> out_reqs_, in_reqs_, land_reqs_, leave_reqs_;
  std::int64_t out_next_ = 0, in_next_ = 0, in_posted_ = 0;  // out's next round; in's next and first unposted
  comm::Communicator* world_ = nullptr;
  /// the fused walk's pieces (index in peer_.pieces, the run of each walked row, into the
  /// slot) and each slab's parts (index, offset in the slot); empty: not fused
  std::vector<std::pair<std::size_t, RowRunSpec>> peer_fused_;
  std::vector<std::pair<std::size_t, std::int64_t>> peer_parts_;
  std::vector<RowRunSpec> peer_keep_;  // the kept piece's run of each row of the peer walk, when it is one
  std::int64_t peer_keep_row0_ = 0;    // the kept piece's first row in the target box
  bool peer_stream_dst_ = false;       // the fused walk streams its destination (kStreamDstBytes)
  std::vector<char> peer_slot_ = std::vector<char>(peer_.on ? kPeerSlotBytes : 0);
  std::vector<std::int64_t> peer_words_;  // see bind_peer()
  /// the fused walk's pieces (as peer_fused_) straight between the walked rows and the
  /// peer's mapped node buffer: the run of each row, whether it can, whether it streams
  struct DirectRun {
    RowRunSpec run;
    bool ok = false, stream = false;
  };
  std::vector<DirectRun> peer_direct_;
  std::vector<comm::PeerMapping> peer_maps_;  // by piece: the peer's node buffer, mapped (see wait_peer_addr())
  std::vector<char*> peer_mapped_;            // by piece, this run: the peer's buffer here, or null
  std::size_t peer_node_copies_ = 0;          // see node_copies()
  std::vector<comm::Collective> peer_addr_ops_, peer_done_ops_;
  std::vector<comm::Request> peer_addr_reqs_, peer_done_reqs_;
  std::vector<comm::Communicator::PeerRun> peer_local_ = std::vector<comm::Communicator::PeerRun>(
                                               peer_.on ? comm::Communicator::kMaxPeerRuns : 0),
                                           peer_remote_ = peer_local_;
};

/// One-shot reshard of this rank's box of `from` into its box of `to` (host vectors).
template <class T>
std::vector<T> reshard(comm::Communicator& world, const std::vector<T>& local, const Layout& from, const Layout& to) {
  Resharder<T> op(world, ReshardPlan(from, to, world.rank()));
  std::vector<T> out(static_cast<std::size_t>(to.local_numel(world.rank())));
  using CV = typename Resharder<T>::ConstView;
  using V = typename Resharder<T>::View;
  op.run(CV(local.data(), local.size()), V(out.data(), out.size()));
  return out;
}

}  // namespace shardflow::shard
