#include "train/impl/shard_collectives.hpp"

#include <type_traits>

#include "comm/plan.hpp"
#include "comm/request.hpp"
#include "core/error.hpp"
#include "core/half.hpp"
#include "layout/layout.hpp"

namespace shardflow::train::detail {

namespace {
constexpr int kF32 = 0, kBF16 = 1, kF16 = 2;
int dtype_code(DType t) {
  if (t == DType::F32) return kF32;
  if (t == DType::BF16) return kBF16;
  if (t == DType::F16) return kF16;
  throw Error("training collectives move f32, bf16 or f16, not " + dtype_name(t));
}
}  // namespace

namespace {

/// Runs op(o, i0, i1) over the slabs o of an [outer, nrows, inner] box: rows r0 .. r0 + nrows
/// of slab o are one contiguous run of nrows * inner elements on both sides (the box spans
/// whole rows), so a host space takes one run per work item (a plain loop that vectorises,
/// no division per element); a device space takes one element per thread.
template <class Op>
void for_each_slab_run(const char* name, int64_t outer, int64_t run, const Op& op) {
  using Exec = Kokkos::DefaultExecutionSpace;
  if constexpr (Kokkos::SpaceAccessibility<Kokkos::HostSpace, Exec::memory_space>::accessible) {
    Kokkos::parallel_for(
        name, Kokkos::RangePolicy<Exec>(0, outer), KOKKOS_LAMBDA(int64_t o) { op(o, int64_t(0), run); });
  } else {
    Kokkos::parallel_for(
        name, Kokkos::RangePolicy<Exec>(0, outer * run), KOKKOS_LAMBDA(int64_t k) {
          const int64_t o = k / run, i = k - o * run;
          op(o, i, i + 1);
        });
  }
}

/// f32 -> wire dtype (Code), one element.
template <int Code, class Out>
KOKKOS_INLINE_FUNCTION Out to_wire(float v) {
  if constexpr (Code == kF32)
    return v;
  else if constexpr (Code == kBF16)
    return bf16(v).bits;
  else
    return f16(v).bits;
}
template <int Code, class In>
KOKKOS_INLINE_FUNCTION float from_wire(In v) {
  if constexpr (Code == kF32)
    return v;
  else if constexpr (Code == kBF16)
    return static_cast<float>(bf16::from_bits(v));
  else
    return static_cast<float>(f16::from_bits(v));
}

template <int Code>
void pack_rows_as(const float* src, int64_t src_rows, int64_t src_r0, void* dst, int64_t dst_rows, int64_t dst_r0,
                  int64_t outer, int64_t nrows, int64_t inner) {
  using Out = std::conditional_t<Code == kF32, float, std::uint16_t>;
  Out* d = static_cast<Out*>(dst);
  for_each_slab_run("shardflow::train::pack_rows", outer, nrows * inner,
                    KOKKOS_LAMBDA(int64_t o, int64_t i0, int64_t i1) {
                      const float* __restrict__ s = src + (o * src_rows + src_r0) * inner;
                      Out* __restrict__ t = d + (o * dst_rows + dst_r0) * inner;
                      for (int64_t i = i0; i < i1; ++i) t[i] = to_wire<Code, Out>(s[i]);
                    });
}

template <int Code>
void unpack_rows_as(const void* src, int64_t src_rows, int64_t src_r0, float* dst, int64_t dst_rows,
                    int64_t dst_r0, int64_t outer, int64_t nrows, int64_t inner, bool accumulate) {
  using In = std::conditional_t<Code == kF32, float, std::uint16_t>;
  const In* sp = static_cast<const In*>(src);
  if (accumulate)
    for_each_slab_run("shardflow::train::unpack_rows_add", outer, nrows * inner,
                      KOKKOS_LAMBDA(int64_t o, int64_t i0, int64_t i1) {
                        const In* __restrict__ s = sp + (o * src_rows + src_r0) * inner;
                        float* __restrict__ t = dst + (o * dst_rows + dst_r0) * inner;
                        for (int64_t i = i0; i < i1; ++i) t[i] += from_wire<Code, In>(s[i]);
                      });
  else
    for_each_slab_run("shardflow::train::unpack_rows", outer, nrows * inner,
                      KOKKOS_LAMBDA(int64_t o, int64_t i0, int64_t i1) {
                        const In* __restrict__ s = sp + (o * src_rows + src_r0) * inner;
                        float* __restrict__ t = dst + (o * dst_rows + dst_r0) * inner;
                        for (int64_t i = i0; i < i1; ++i) t[i] = from_wire<Code, In>(s[i]);
                      });
}

}  // namespace

void pack_rows(const float* src, int64_t src_rows, int64_t src_r0, void* dst, int64_t dst_rows, int64_t dst_r0,
               int64_t outer, int64_t nrows, int64_t inner, DType to) {
  const int code = dtype_code(to);
  if (outer * nrows * inner == 0) return;
  if (code == kF32)
    pack_rows_as<kF32>(src, src_rows, src_r0, dst, dst_rows, dst_r0, outer, nrows, inner);
  else if (code == kBF16)
    pack_rows_as<kBF16>(src, src_rows, src_r0, dst, dst_rows, dst_r0, outer, nrows, inner);
  else
    pack_rows_as<kF16>(src, src_rows, src_r0, dst, dst_rows, dst_r0, outer, nrows, inner);
}

void unpack_rows(const void* src, int64_t src_rows, int64_t src_r0, float* dst, int64_t dst_rows, int64_t dst_r0,
                 int64_t outer, int64_t nrows, int64_t inner, DType from, bool accumulate) {
  const int code = dtype_code(from);
  if (outer * nrows * inner == 0) return;
  if (code == kF32)
    unpack_rows_as<kF32>(src, src_rows, src_r0, dst, dst_rows, dst_r0, outer, nrows, inner, accumulate);
  else if (code == kBF16)
    unpack_rows_as<kBF16>(src, src_rows, src_r0, dst, dst_rows, dst_r0, outer, nrows, inner, accumulate);
  else
    unpack_rows_as<kF16>(src, src_rows, src_r0, dst, dst_rows, dst_r0, outer, nrows, inner, accumulate);
}

// A flat copy is a box of one slab: one contiguous run of n elements.
void cast_out(const float* src, void* dst, int64_t n, DType to) { pack_rows(src, 1, 0, dst, 1, 0, 1, 1, n, to); }

void cast_in(const void* src, float* dst, int64_t n, DType from) {
  unpack_rows(src, 1, 0, dst, 1, 0, 1, 1, n, from, false);
}

ShardGather::ShardGather(comm::Communicator& c, int64_t outer, int64_t rows, int64_t inner, DType dtype,
                         const float* shard, float* full, char* arena)
    : comm_(&c),
      outer_(outer),
      rows_(rows),
      cols_(inner),
      n_(c.size()),
      me_(c.rank()),
      dtype_(dtype),
      shard_(shard),
      full_(full) {
  const int64_t block_rows = (rows + n_ - 1) / n_;
  block_ = outer * block_rows * inner;
  const bool aliased = shard >= full && shard < full + outer * rows * inner;
  direct_ = dtype == DType::F32 && rows % n_ == 0 && outer == 1 && !aliased;
  const size_t es = dtype_size(dtype);
  const void* send = shard;
  void* recv = full;
  if (!direct_) {
    const size_t sb = static_cast<size_t>(block_) * es, rb = static_cast<size_t>(block_ * n_) * es;
    if (arena != nullptr) {  // unmanaged views of the pooled staging
      send_ = Kokkos::View<char*>(arena, sb);
      recv_ = Kokkos::View<char*>(arena + sb, rb);
    } else {
      send_ = Kokkos::View<char*>("shardflow::train::gather_send", sb);
      recv_ = Kokkos::View<char*>("shardflow::train::gather_recv", rb);
    }
    send = send_.data();
    recv = recv_.data();
  }
  coll_ = std::make_unique<comm::Collective>(c, comm::CollectivePlan::all_gather(dtype, static_cast<size_t>(block_)),
                                             send, recv);
}

int64_t ShardGather::staging_bytes() const { return static_cast<int64_t>(send_.extent(0) + recv_.extent(0)); }

std::function<bool()> ShardGather::start() {
  if (!direct_) {
    const int64_t my = split_extent(rows_, n_, me_);
    if (shard_ >= full_ && shard_ < full_ + outer_ * rows_ * cols_)  // the shard is my rows of full: O runs
      pack_rows(full_, rows_, split_offset(rows_, n_, me_), send_.data(), my, 0, outer_, my, cols_, dtype_);
    else
      cast_out(shard_, send_.data(), outer_ * my * cols_, dtype_);
  }
  auto req = std::make_shared<comm::Request>(coll_->start());
  return [this, req] {
    if (!req->test()) return false;
    if (!direct_) {
      const size_t es = dtype_size(dtype_);
      for (int64_t i = 0; i < n_; ++i) {
        const int64_t ri = split_extent(rows_, n_, i);
        unpack_rows(recv_.data() + static_cast<size_t>(i * block_) * es, ri, 0, full_, rows_,
                    split_offset(rows_, n_, i), outer_, ri, cols_, dtype_, false);
      }
    }
    return true;
  };
}

ShardReduceScatter::ShardReduceScatter(comm::Communicator& c, int64_t outer, int64_t rows, int64_t inner, DType dtype,
                                       const float* full, float* shard_out, bool accumulate, comm::ReduceOp op,
                                       char* arena)
    : comm_(&c),
      outer_(outer),
      rows_(rows),
      cols_(inner),
      n_(c.size()),
      me_(c.rank()),
      dtype_(dtype),
      full_(full),
      out_(shard_out),
      accumulate_(accumulate) {
  const int64_t block_rows = (rows + n_ - 1) / n_;
  block_ = outer * block_rows * inner;
  direct_ = dtype == DType::F32 && rows % n_ == 0 && outer == 1 && !accumulate;
  const size_t es = dtype_size(dtype);
  const void* send = full;
  void* recv = shard_out;
  if (!direct_) {
    const size_t sb = static_cast<size_t>(block_ * n_) * es, rb = static_cast<size_t>(block_) * es;
    if (arena != nullptr) {  // unmanaged views of the pooled staging
      send_ = Kokkos::View<char*>(arena, sb);
      recv_ = Kokkos::View<char*>(arena + sb, rb);
    } else {
      send_ = Kokkos::View<char*>("shardflow::train::rs_send", sb);
      recv_ = Kokkos::View<char*>("shardflow::train::rs_recv", rb);
    }
    send = send_.data();
    recv = recv_.data();
  }
  coll_ = std::make_unique<comm::Collective>(
      c, comm::CollectivePlan::reduce_scatter(dtype, static_cast<size_t>(block_), op), send, recv);
}

int64_t ShardReduceScatter::staging_bytes() const { return static_cast<int64_t>(send_.extent(0) + recv_.extent(0)); }

std::function<bool()> ShardReduceScatter::start() {
  if (!direct_) {
    const size_t es = dtype_size(dtype_);
    if (rows_ % n_ != 0) Kokkos::deep_copy(send_, char(0));  // padding rows contribute zeros
    for (int64_t i = 0; i < n_; ++i) {
      const int64_t ri = split_extent(rows_, n_, i);
      pack_rows(full_, rows_, split_offset(rows_, n_, i), send_.data() + static_cast<size_t>(i * block_) * es, ri, 0,
                outer_, ri, cols_, dtype_);
    }
  }
  auto req = std::make_shared<comm::Request>(coll_->start());
  return [this, req] {
    if (!req->test()) return false;
    if (!direct_) {
      const int64_t my = split_extent(rows_, n_, me_);
      unpack_rows(recv_.data(), my, 0, out_, my, 0, outer_, my, cols_, dtype_, accumulate_);
    }
    return true;
  };
}

}  // namespace shardflow::train::detail
