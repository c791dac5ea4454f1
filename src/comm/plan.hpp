#pragma once
// CollectivePlan: the first of Cabana's three layers. It says what a collective moves:
// its kind, dtype, reduction, element counts, root/peer/tag, and for all_to_allv the per-
// peer counts and displacements. It is built once per collective shape and validated
// against a communicator of a given size when an operation is bound to it.
//
// Counts are in elements of `dtype`:
//   all_gather      send `count`,            recv `count * n` (rank i's block at i*count)
//   reduce_scatter  send `count * n`,        recv `count` (block i of the send buffers)
//   all_reduce      send `count`,            recv `count`
//   broadcast       send `count` (root only), recv `count` (every rank, root included)
//   send / recv     `count` to / from `peer` with `tag`
//   all_to_all      send `count * n`,        recv `count * n` (block j goes to rank j)
//   all_to_allv     send_counts/displs and recv_counts/displs, one per rank; or, built by
//                   all_to_allw, one strided box per rank on each side (the pieces are read
//                   and written in place, in the box's row-major order, by the Mpi backend's
//                   derived datatypes: no pack, no unpack)
#include <cstddef>
#include <string>
#include <vector>

#include "comm/types.hpp"
#include "kernels/strided_box.hpp"

namespace shardflow::comm {

struct CollectivePlan {
  CollectiveKind kind = CollectiveKind::AllReduce;
  DType dtype = DType::F32;
  ReduceOp op = ReduceOp::Sum;
  std::size_t count = 0;
  int root = 0;                                                                 // broadcast root; peer of send/recv
  int tag = 0;                                                                  // send/recv
  std::vector<std::size_t> send_counts, send_displs, recv_counts, recv_displs;  // all_to_allv
  /// all_to_allv with strided pieces (all_to_allw): the box of the send / recv buffer that
  /// goes to / comes from each rank, in elements; empty for contiguous pieces at the displs.
  std::vector<kernels::StridedBox> send_boxes, recv_boxes;

  static CollectivePlan all_gather(DType t, std::size_t count);
  static CollectivePlan reduce_scatter(DType t, std::size_t count, ReduceOp op);
  static CollectivePlan all_reduce(DType t, std::size_t count, ReduceOp op);
  static CollectivePlan broadcast(DType t, std::size_t count, int root);
  static CollectivePlan send(DType t, std::size_t count, int peer, int tag = 0);
  static CollectivePlan recv(DType t, std::size_t count, int peer, int tag = 0);
  static CollectivePlan all_to_all(DType t, std::size_t count);
  /// Displacements default to the exclusive prefix sums of the counts when left empty.
  static CollectivePlan all_to_allv(DType t, std::vector<std::size_t> send_counts, std::vector<std::size_t> recv_counts,
                                    std::vector<std::size_t> send_displs = {},
                                    std::vector<std::size_t> recv_displs = {});

  /// An all_to_allv whose piece for rank q is box send_boxes[q] of the send buffer and whose
  /// piece from rank q lands in box recv_boxes[q] of the receive buffer (element strides,
  /// any order of dimensions; an empty box for no piece). The counts are the boxes' sizes.
  /// Only backends whose Communicator::strided_pieces() is true can bind it.
  static CollectivePlan all_to_allw(DType t, std::vector<kernels::StridedBox> send_boxes,
                                    std::vector<kernels::StridedBox> recv_boxes);
  bool strided() const { return !send_boxes.empty() || !recv_boxes.empty(); }

  /// Elements the send / recv buffer must hold on rank `rank` of a group of `n`.
  std::size_t send_elems(int n, int rank) const;
  std::size_t recv_elems(int n, int rank) const;

  /// Throws InputError naming the value when the plan cannot run on rank `rank` of a group
  /// of `n` ranks (peer/root out of range, counts of the wrong length, Mean on integers,
  /// Max/Mean outside reductions, counts above the backend's int limit).
  void validate(int n, int rank) const;
  std::string to_string() const;
};

}  // namespace shardflow::comm
