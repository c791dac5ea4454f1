#include "train/impl/shard_collectives.hpp"

#include "comm/plan.hpp"
#include "comm/request.hpp"
#include "core/error.hpp"
#include "core/half.hpp"
#include "layout/layout.hpp"

namespace shardflow::train::detail {

void cast_out(const float* src, void* dst, int64_t n, DType to) {
  using Policy = Kokkos::RangePolicy<Kokkos::DefaultExecutionSpace>;
  if (to == DType::F32) {
    float* d = static_cast<float*>(dst);
    Kokkos::parallel_for("shardflow::train::copy_f32", Policy(0, n), KOKKOS_LAMBDA(int64_t i) { d[i] = src[i]; });
  } else if (to == DType::BF16) {
    auto* d = static_cast<std::uint16_t*>(dst);
    Kokkos::parallel_for("shardflow::train::cast_bf16", Policy(0, n),
                         KOKKOS_LAMBDA(int64_t i) { d[i] = bf16(src[i]).bits; });
  } else if (to == DType::F16) {
    auto* d = static_cast<std::uint16_t*>(dst);
    Kokkos::parallel_for("shardflow::train::cast_f16", Policy(0, n),
                         KOKKOS_LAMBDA(int64_t i) { d[i] = f16(src[i]).bits; });
  } else {
    throw Error("training collectives move f32, bf16 or f16, not " + dtype_name(to));
  }
}

void cast_in(const void* src, float* dst, int64_t n, DType from) {
  using Policy = Kokkos::RangePolicy<Kokkos::DefaultExecutionSpace>;
  if (from == DType::F32) {
    const float* s = static_cast<const float*>(src);
    Kokkos::parallel_for("shardflow::train::copy_f32", Policy(0, n), KOKKOS_LAMBDA(int64_t i) { dst[i] = s[i]; });
  } else if (from == DType::BF16) {
    const auto* s = static_cast<const std::uint16_t*>(src);
    Kokkos::parallel_for("shardflow::train::uncast_bf16", Policy(0, n),
                         KOKKOS_LAMBDA(int64_t i) { dst[i] = static_cast<float>(bf16::from_bits(s[i])); });
  } else if (from == DType::F16) {
    const auto* s = static_cast<const std::uint16_t*>(src);
    Kokkos::parallel_for("shardflow::train::uncast_f16", Policy(0, n),
                         KOKKOS_LAMBDA(int64_t i) { dst[i] = static_cast<float>(f16::from_bits(s[i])); });
  } else {
    throw Error("training collectives move f32, bf16 or f16, not " + dtype_name(from));
  }
}

namespace {
void add_in(const void* src, float* dst, int64_t n, DType from, Kokkos::View<float*>& tmp) {
  if (tmp.extent(0) < static_cast<size_t>(n)) tmp = Kokkos::View<float*>("shardflow::train::acc_tmp", n);
  float* t = tmp.data();
  cast_in(src, t, n, from);
  Kokkos::parallel_for("shardflow::train::accumulate", Kokkos::RangePolicy<Kokkos::DefaultExecutionSpace>(0, n),
                       KOKKOS_LAMBDA(int64_t i) { dst[i] += t[i]; });
}
}  // namespace

ShardGather::ShardGather(comm::Communicator& c, int64_t rows, int64_t cols, DType dtype, const float* shard,
                         float* full)
    : comm_(&c), rows_(rows), cols_(cols), n_(c.size()), me_(c.rank()), dtype_(dtype), shard_(shard), full_(full) {
  const int64_t block_rows = (rows + n_ - 1) / n_;
  block_ = block_rows * cols;
  const bool aliased = shard >= full && shard < full + rows * cols;
  direct_ = dtype == DType::F32 && rows % n_ == 0 && !aliased;
  const size_t es = dtype_size(dtype);
  const void* send = shard;
  void* recv = full;
  if (!direct_) {
    send_ = Kokkos::View<char*>("shardflow::train::gather_send", static_cast<size_t>(block_) * es);
    recv_ = Kokkos::View<char*>("shardflow::train::gather_recv", static_cast<size_t>(block_ * n_) * es);
    send = send_.data();
    recv = recv_.data();
  }
  coll_ = std::make_unique<comm::Collective>(c, comm::CollectivePlan::all_gather(dtype, static_cast<size_t>(block_)),
                                             send, recv);
}

int64_t ShardGather::staging_bytes() const { return static_cast<int64_t>(send_.extent(0) + recv_.extent(0)); }

std::function<bool()> ShardGather::start() {
  if (!direct_) {
    const int64_t my = split_extent(rows_, n_, me_) * cols_;
    cast_out(shard_, send_.data(), my, dtype_);
  }
  auto req = std::make_shared<comm::Request>(coll_->start());
  return [this, req] {
    if (!req->test()) return false;
    if (!direct_) {
      const size_t es = dtype_size(dtype_);
      for (int64_t i = 0; i < n_; ++i)
        cast_in(recv_.data() + static_cast<size_t>(i * block_) * es, full_ + split_offset(rows_, n_, i) * cols_,
                split_extent(rows_, n_, i) * cols_, dtype_);
    }
    return true;
  };
}

ShardReduceScatter::ShardReduceScatter(comm::Communicator& c, int64_t rows, int64_t cols, DType dtype,
                                       const float* full, float* shard_out, bool accumulate)
    : comm_(&c),
      rows_(rows),
      cols_(cols),
      n_(c.size()),
      me_(c.rank()),
      dtype_(dtype),
      full_(full),
      out_(shard_out),
      accumulate_(accumulate) {
  const int64_t block_rows = (rows + n_ - 1) / n_;
  block_ = block_rows * cols;
  direct_ = dtype == DType::F32 && rows % n_ == 0 && !accumulate;
  const size_t es = dtype_size(dtype);
  const void* send = full;
  void* recv = shard_out;
  if (!direct_) {
    send_ = Kokkos::View<char*>("shardflow::train::rs_send", static_cast<size_t>(block_ * n_) * es);
    recv_ = Kokkos::View<char*>("shardflow::train::rs_recv", static_cast<size_t>(block_) * es);
    send = send_.data();
    recv = recv_.data();
  }
  coll_ = std::make_unique<comm::Collective>(
      c, comm::CollectivePlan::reduce_scatter(dtype, static_cast<size_t>(block_), comm::ReduceOp::Mean), send, recv);
}

int64_t ShardReduceScatter::staging_bytes() const {
  return static_cast<int64_t>(send_.extent(0) + recv_.extent(0));
}

std::function<bool()> ShardReduceScatter::start() {
  if (!direct_) {
    const size_t es = dtype_size(dtype_);
    if (rows_ % n_ != 0) Kokkos::deep_copy(send_, char(0));  // padding rows contribute zeros
    for (int64_t i = 0; i < n_; ++i)
      cast_out(full_ + split_offset(rows_, n_, i) * cols_, send_.data() + static_cast<size_t>(i * block_) * es,
               split_extent(rows_, n_, i) * cols_, dtype_);
  }
  auto req = std::make_shared<comm::Request>(coll_->start());
  auto tmp = std::make_shared<Kokkos::View<float*>>();
  return [this, req, tmp] {
    if (!req->test()) return false;
    if (!direct_) {
      const int64_t my = split_extent(rows_, n_, me_) * cols_;
      if (accumulate_) add_in(recv_.data(), out_, my, dtype_, *tmp);
      else cast_in(recv_.data(), out_, my, dtype_);
    }
    return true;
  };
}

}  // namespace shardflow::train::detail
