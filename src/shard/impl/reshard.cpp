#include "shard/reshard.hpp"

#include <algorithm>

namespace shardflow::shard {

int ReshardPlan::sender(const Layout& from, int holder, int dest) {
  const std::vector<int> reps = from.replicas(holder);
  for (int r : reps)
    if (r == dest) return dest;
  return reps[static_cast<std::size_t>(dest) % reps.size()];
}

ReshardPlan::ReshardPlan(const Layout& from, const Layout& to, int rank) : from_(from), to_(to), rank_(rank) {
  SHARDFLOW_REQUIRE_INPUT(from.global_shape() == to.global_shape(),
                          "reshard: global shapes differ: ", shape_to_string(from.global_shape()), " vs ",
                          shape_to_string(to.global_shape()));
  SHARDFLOW_REQUIRE_INPUT(from.mesh() == to.mesh(),
                          "reshard: layouts are on different meshes: ", from.mesh().to_string(), " vs ",
                          to.mesh().to_string());
  const int n = from.mesh().size();
  SHARDFLOW_REQUIRE_INPUT(rank >= 0 && rank < n, "reshard: rank ", rank, " is not in the mesh ",
                          from.mesh().to_string());
  // Sends: my box of `from` intersected with each destination's box of `to`, when I am the
  // replica that serves that destination.
  if (from.holds(rank)) {
    const Box mine = from.box(rank);
    for (int p = 0; p < n; ++p) {
      if (!to.holds(p) || sender(from, rank, p) != rank) continue;
      Box piece = Box::intersect(mine, to.box(p));
      if (piece.numel() == 0) continue;
      if (p == rank)
        local_ = piece;
      else
        sends_.push_back({p, piece});
    }
  }
  // Receives: each distinct source shard intersected with my box of `to`.
  if (to.holds(rank)) {
    const Box want = to.box(rank);
    std::vector<std::pair<int, Box>> by_peer;
    for (int owner : from.shard_owners()) {
      Box piece = Box::intersect(from.box(owner), want);
      if (piece.numel() > 0) by_peer.emplace_back(sender(from, owner, rank), piece);
    }
    std::sort(by_peer.begin(), by_peer.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& pb : by_peer)
      if (pb.first != rank) recvs_.push_back({pb.first, pb.second});
  }
  if (local_.ndim() == 0) local_ = Box{Shape(from.ndim(), 0), Shape(from.ndim(), 0)};
  for (const auto& s : sends_) send_elems_ += s.box.numel();
  for (const auto& r : recvs_) recv_elems_ += r.box.numel();
  SHARDFLOW_REQUIRE(recv_elems_ + local_.numel() == to.local_numel(rank), "reshard: internal error: rank ", rank,
                    " receives ", recv_elems_, " + keeps ", local_.numel(), " elements for a box of ",
                    to.local_numel(rank));
}

ReshardPlan ReshardPlan::without(const std::vector<bool>& drop_sends, const std::vector<bool>& drop_recvs,
                                 bool drop_local) const {
  SHARDFLOW_REQUIRE(drop_sends.size() == sends_.size() && drop_recvs.size() == recvs_.size(),
                    "reshard: internal error: piece flags do not match the plan");
  ReshardPlan p = *this;
  p.sends_.clear();
  p.recvs_.clear();
  p.send_elems_ = p.recv_elems_ = 0;
  for (std::size_t i = 0; i < sends_.size(); ++i)
    if (!drop_sends[i]) {
      p.sends_.push_back(sends_[i]);
      p.send_elems_ += sends_[i].box.numel();
    }
  for (std::size_t i = 0; i < recvs_.size(); ++i)
    if (!drop_recvs[i]) {
      p.recvs_.push_back(recvs_[i]);
      p.recv_elems_ += recvs_[i].box.numel();
    }
  if (drop_local) p.local_ = Box{Shape(from_.ndim(), 0), Shape(from_.ndim(), 0)};
  return p;
}

comm::CollectivePlan ReshardPlan::exchange_plan(DType t) const {
  const auto n = static_cast<std::size_t>(from_.mesh().size());
  std::vector<std::size_t> sc(n, 0), rc(n, 0), sd(n, 0), rd(n, 0);
  std::size_t off = 0;
  for (const auto& s : sends_) {
    sc[static_cast<std::size_t>(s.peer)] = static_cast<std::size_t>(s.box.numel());
    sd[static_cast<std::size_t>(s.peer)] = off;
    off += static_cast<std::size_t>(s.box.numel());
  }
  off = 0;
  for (const auto& r : recvs_) {
    SHARDFLOW_REQUIRE(rc[static_cast<std::size_t>(r.peer)] == 0, "reshard: internal error: two pieces from rank ",
                      r.peer);
    rc[static_cast<std::size_t>(r.peer)] = static_cast<std::size_t>(r.box.numel());
    rd[static_cast<std::size_t>(r.peer)] = off;
    off += static_cast<std::size_t>(r.box.numel());
  }
  return comm::CollectivePlan::all_to_allv(t, sc, rc, sd, rd);
}

}  // namespace shardflow::shard
