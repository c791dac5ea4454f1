#pragma once
// Pack / unpack kernels: copy an N-D box between a strided buffer and a contiguous one
// (row-major over the box), optionally converting the element type on the way (fused
// cast-and-pack, e.g. f32 -> bf16, and unpack-and-cast, e.g. bf16 -> f32).
//
// All kernels are templates over the Kokkos execution space (and so its memory space): a
// Kokkos built with CUDA runs them on the GPU. They are enqueued on `exec` and, like any
// Kokkos kernel, may return before they complete on an asynchronous (device) space; call
// exec.fence() before touching the result from the host or from another stream. On host
// spaces (Serial, OpenMP, Threads) they are complete when Serial returns.
//
// Speed: the two boxes are first simplified jointly (dimensions of extent 1 dropped,
// dimensions merged where both sides are contiguous across them). On host spaces a work
// item is a chunk of innermost runs, walked with an odometer (no divisions per run), and
// when both sides are contiguous and of the same type the runs along the second-innermost
// dimension are one call of detail::host_copy_runs (AVX2 where the CPU has it). On device
// spaces a work item is one element, so consecutive threads touch consecutive addresses.
//
// Views are 1-D and contiguous (LayoutRight/LayoutLeft, managed or unmanaged); element
// strides and offsets of the boxes are in elements of the view they describe. Copies are
// not defined for boxes that overlap in the destination (e.g. stride 0 on the unpack side).
#include <Kokkos_Core.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/error.hpp"
#include "core/half.hpp"
#include "kernels/host_copy.hpp"
#include "kernels/strided_box.hpp"
#include "layout/layout.hpp"

namespace shardflow::kernels {

/// True when kernels on ExecSpace run on the host (use the run-wise host path).
template <class ExecSpace>
constexpr bool is_host_space_v = std::is_same<typename ExecSpace::memory_space, Kokkos::HostSpace>::value;

namespace detail {

/// Two boxes of equal extents simplified together (see the header comment).
struct BoxPair {
  int ndim = 0;
  std::int64_t extent[kMaxBoxDims] = {};
  std::int64_t src_stride[kMaxBoxDims] = {};
  std::int64_t dst_stride[kMaxBoxDims] = {};
  std::int64_t src_offset = 0;
  std::int64_t dst_offset = 0;
};

inline BoxPair simplify_pair(const StridedBox& s, const StridedBox& d) {
  BoxPair p;
  p.src_offset = s.offset;
  p.dst_offset = d.offset;
  for (int i = 0; i < s.ndim; ++i) {
    if (s.extent[i] == 1) continue;
    const int k = p.ndim - 1;
    if (k >= 0 && p.src_stride[k] == s.stride[i] * s.extent[i] && p.dst_stride[k] == d.stride[i] * d.extent[i]) {
      p.extent[k] *= s.extent[i];
      p.src_stride[k] = s.stride[i];
      p.dst_stride[k] = d.stride[i];
      continue;
    }
    p.extent[p.ndim] = s.extent[i];
    p.src_stride[p.ndim] = s.stride[i];
    p.dst_stride[p.ndim] = d.stride[i];
    ++p.ndim;
  }
  if (p.ndim == 0) {
    p.ndim = 1;
    p.extent[0] = 1;
    p.src_stride[0] = 1;
    p.dst_stride[0] = 1;
  }
  return p;
}

struct HostTag {};    // work item = a chunk of runs
struct DeviceTag {};  // work item = one element

/// dst_box <- src_box, element-wise Convert<S, D>.
template <class S, class D>
struct BoxCopy {
  const S* src;
  D* dst;
  BoxPair p;
  std::int64_t run;            // innermost extent
  std::int64_t nruns;          // product of the outer extents
  std::int64_t runs_per_item;  // host path: runs per work item

  // Host path: a chunk of runs [r0, r1). Runs along the second-innermost dimension are
  // copied in a tight loop; the dimensions outside it advance like an odometer.
  KOKKOS_INLINE_FUNCTION void operator()(HostTag, std::int64_t item) const {
    const int nd = p.ndim;
    const std::int64_t r0 = item * runs_per_item;
    const std::int64_t r1 = r0 + runs_per_item < nruns ? r0 + runs_per_item : nruns;
    if (r0 >= r1) return;
    std::int64_t idx[kMaxBoxDims] = {};
    std::int64_t s = p.src_offset, d = p.dst_offset;
    std::int64_t rem = r0;
    for (int k = nd - 2; k >= 0; --k) {
      idx[k] = rem % p.extent[k];
      rem /= p.extent[k];
      s += idx[k] * p.src_stride[k];
      d += idx[k] * p.dst_stride[k];
    }
    if (nd == 1) {  // one run
      copy_runs(1, s, d, 0, 0);
      return;
    }
    const int k2 = nd - 2;
    const std::int64_t s2 = p.src_stride[k2], d2 = p.dst_stride[k2];
    std::int64_t r = r0;
    while (r < r1) {
      std::int64_t cnt = p.extent[k2] - idx[k2];
      if (cnt > r1 - r) cnt = r1 - r;
      copy_runs(cnt, s, d, s2, d2);
      r += cnt;
      idx[k2] += cnt;
      s += cnt * s2;
      d += cnt * d2;
      if (idx[k2] < p.extent[k2]) break;  // only at r == r1
      for (int k = k2; k >= 0; --k) {     // odometer step: wrap k, carry into k-1
        s -= p.extent[k] * p.src_stride[k];
        d -= p.extent[k] * p.dst_stride[k];
        idx[k] = 0;
        if (k == 0) break;
        s += p.src_stride[k - 1];
        d += p.dst_stride[k - 1];
        if (++idx[k - 1] < p.extent[k - 1]) break;
      }
    }
  }

  /// `cnt` runs, the i-th at src[s + i*s2], dst[d + i*d2].
  KOKKOS_INLINE_FUNCTION void copy_runs(std::int64_t cnt, std::int64_t s, std::int64_t d, std::int64_t s2,
                                        std::int64_t d2) const {
    const std::int64_t ss = p.src_stride[p.ndim - 1], ds = p.dst_stride[p.ndim - 1];
#if !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
    if constexpr (std::is_same<S, D>::value) {
      if (ss == 1 && ds == 1) {
        host_copy_runs(reinterpret_cast<char*>(dst + d), reinterpret_cast<const char*>(src + s), cnt,
                       static_cast<std::size_t>(run) * sizeof(S), d2 * static_cast<std::int64_t>(sizeof(S)),
                       s2 * static_cast<std::int64_t>(sizeof(S)));
        return;
      }
    }
#endif
    for (std::int64_t i = 0; i < cnt; ++i) {
      if (ss == 1 && ds == 1) {
        const S* __restrict__ a = src + s + i * s2;
        D* __restrict__ b = dst + d + i * d2;
        for (std::int64_t j = 0; j < run; ++j) b[j] = Convert<S, D>::apply(a[j]);
      } else {
        const std::int64_t si = s + i * s2, di = d + i * d2;
        for (std::int64_t j = 0; j < run; ++j) dst[di + j * ds] = Convert<S, D>::apply(src[si + j * ss]);
      }
    }
  }

  // Device path: one element per work item.
  KOKKOS_INLINE_FUNCTION void operator()(DeviceTag, std::int64_t i) const {
    const int nd = p.ndim;
    std::int64_t r = i / run;
    const std::int64_t j = i - r * run;
    std::int64_t s = p.src_offset + j * p.src_stride[nd - 1];
    std::int64_t d = p.dst_offset + j * p.dst_stride[nd - 1];
    for (int k = nd - 2; k >= 0; --k) {
      const std::int64_t q = r / p.extent[k];
      const std::int64_t ik = r - q * p.extent[k];
      r = q;
      s += ik * p.src_stride[k];
      d += ik * p.dst_stride[k];
    }
    dst[d] = Convert<S, D>::apply(src[s]);
  }
};

template <class View>
void check_view(const View& v, const char* fn, const char* which) {
  static_assert(View::rank == 1, "shardflow::kernels: views must be 1-D");
  SHARDFLOW_REQUIRE(v.span_is_contiguous(), "kernels::", fn, ": ", which, " view '", v.label(),
                    "' is not contiguous");
}

}  // namespace detail

/// How copy_box distributes work: Auto picks Runs on host spaces and Elements on device
/// spaces; the others force one path (for tests and benchmarks; both are always correct).
enum class CopyPath { Auto, Runs, Elements };

/// Copies box `src_box` of `src` into box `dst_box` of `dst` (equal extents), converting
/// elements when the view types differ. The general form behind pack and unpack.
template <class ExecSpace, class SrcView, class DstView>
void copy_box(const ExecSpace& exec, const SrcView& src, const StridedBox& src_box, const DstView& dst,
              const StridedBox& dst_box, CopyPath path = CopyPath::Auto) {
  using S = std::remove_const_t<typename SrcView::value_type>;
  using D = typename DstView::value_type;
  static_assert(!std::is_const<D>::value, "kernels::copy_box: destination view must not be const");
  static_assert(Kokkos::SpaceAccessibility<ExecSpace, typename SrcView::memory_space>::accessible,
                "kernels::copy_box: source view not accessible from the execution space");
  static_assert(Kokkos::SpaceAccessibility<ExecSpace, typename DstView::memory_space>::accessible,
                "kernels::copy_box: destination view not accessible from the execution space");
  detail::check_view(src, "copy_box", "source");
  detail::check_view(dst, "copy_box", "destination");
  SHARDFLOW_REQUIRE(src_box.ndim == dst_box.ndim, "kernels::copy_box: ", src_box.to_string(), " and ",
                    dst_box.to_string(), " differ in rank");
  for (int k = 0; k < src_box.ndim; ++k)
    SHARDFLOW_REQUIRE(src_box.extent[k] == dst_box.extent[k], "kernels::copy_box: extents differ: ",
                      src_box.to_string(), " vs ", dst_box.to_string());
  const std::int64_t n = src_box.numel();
  if (n == 0) return;
  SHARDFLOW_REQUIRE(src_box.span_end() <= static_cast<std::int64_t>(src.extent(0)), "kernels::copy_box: source ",
                    src_box.to_string(), " reaches index ", src_box.span_end() - 1, " of view '", src.label(),
                    "' of ", src.extent(0), " elements");
  SHARDFLOW_REQUIRE(dst_box.span_end() <= static_cast<std::int64_t>(dst.extent(0)),
                    "kernels::copy_box: destination ", dst_box.to_string(), " reaches index ", dst_box.span_end() - 1,
                    " of view '", dst.label(), "' of ", dst.extent(0), " elements");
  detail::BoxCopy<S, D> f{src.data(), dst.data(), detail::simplify_pair(src_box, dst_box), 0, 0, 0};
  f.run = f.p.extent[f.p.ndim - 1];
  f.nruns = n / f.run;
  if (path == CopyPath::Auto) path = is_host_space_v<ExecSpace> ? CopyPath::Runs : CopyPath::Elements;
  if (path == CopyPath::Runs) {
    // a few work items per thread, each at least ~256 KiB, so that chunking costs nothing
    const std::int64_t conc = ExecSpace::concurrency();
    const std::int64_t run_bytes = f.run * static_cast<std::int64_t>(sizeof(D));
    const std::int64_t min_runs = (std::int64_t(1) << 18) / (run_bytes > 0 ? run_bytes : 1) + 1;
    std::int64_t items = 4 * (conc > 0 ? conc : 1);
    std::int64_t per = (f.nruns + items - 1) / items;
    if (per < min_runs) per = min_runs;
    f.runs_per_item = per;
    items = (f.nruns + per - 1) / per;
    Kokkos::parallel_for("shardflow::kernels::copy_box",
                         Kokkos::RangePolicy<ExecSpace, detail::HostTag, Kokkos::IndexType<std::int64_t>>(exec, 0, items),
                         f);
  } else {
    Kokkos::parallel_for("shardflow::kernels::copy_box",
                         Kokkos::RangePolicy<ExecSpace, detail::DeviceTag, Kokkos::IndexType<std::int64_t>>(exec, 0, n),
                         f);
  }
}

/// Packs `box` of `src` into dst[dst_offset ...] contiguously (row-major over box.extent).
/// Converts elements when the value types differ (fused cast-and-pack).
template <class ExecSpace, class SrcView, class DstView>
void pack(const ExecSpace& exec, const SrcView& src, const StridedBox& box, const DstView& dst,
          std::size_t dst_offset = 0) {
  Shape ext(box.extent, box.extent + box.ndim);
  StridedBox packed = StridedBox::of_array(ext, row_major_strides(ext), static_cast<std::int64_t>(dst_offset));
  copy_box(exec, src, box, dst, packed);
}

/// Unpacks src[src_offset ...] (row-major over box.extent) into `box` of `dst`, whose
/// strides are arbitrary. Converts elements when the value types differ (unpack-and-cast).
template <class ExecSpace, class SrcView, class DstView>
void unpack(const ExecSpace& exec, const SrcView& src, std::size_t src_offset, const DstView& dst,
            const StridedBox& box) {
  Shape ext(box.extent, box.extent + box.ndim);
  StridedBox packed = StridedBox::of_array(ext, row_major_strides(ext), static_cast<std::int64_t>(src_offset));
  copy_box(exec, src, packed, dst, box);
}

/// Fused cast-and-pack (e.g. f32 -> bf16 / f16, rounding to nearest even).
template <class ExecSpace, class SrcView, class DstView>
void cast_pack(const ExecSpace& exec, const SrcView& src, const StridedBox& box, const DstView& dst,
               std::size_t dst_offset = 0) {
  static_assert(!std::is_same<std::remove_const_t<typename SrcView::value_type>, typename DstView::value_type>::value,
                "cast_pack converts between element types; use pack for a plain copy");
  pack(exec, src, box, dst, dst_offset);
}

/// Fused unpack-and-cast (e.g. bf16 / f16 -> f32, exact).
template <class ExecSpace, class SrcView, class DstView>
void unpack_cast(const ExecSpace& exec, const SrcView& src, std::size_t src_offset, const DstView& dst,
                 const StridedBox& box) {
  static_assert(!std::is_same<std::remove_const_t<typename SrcView::value_type>, typename DstView::value_type>::value,
                "unpack_cast converts between element types; use unpack for a plain copy");
  unpack(exec, src, src_offset, dst, box);
}

template <class ExecSpace, class T>
using ConstUnmanagedView =
    Kokkos::View<const T*, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
template <class ExecSpace, class T>
using UnmanagedView = Kokkos::View<T*, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

/// Copies sub-box `box` (offsets relative to the array) of a row-major array of shape
/// `shape` into dst[dst_offset ...] contiguously (row-major over box.extent).
/// Managed views convert implicitly when T is given: pack_box<Exec, float>(...).
template <class ExecSpace, class T>
void pack_box(const ExecSpace& exec, ConstUnmanagedView<ExecSpace, T> src, const Shape& shape, const Box& box,
              UnmanagedView<ExecSpace, T> dst, std::size_t dst_offset = 0) {
  SHARDFLOW_REQUIRE(static_cast<std::int64_t>(src.extent(0)) >= numel(shape), "kernels::pack_box: source of ",
                    src.extent(0), " elements is smaller than shape ", shape_to_string(shape));
  pack(exec, src, StridedBox::row_major(shape, box), dst, dst_offset);
}

/// Copies src[src_offset ...] (row-major over box.extent) into sub-box `box` of a
/// row-major array of shape `shape`.
template <class ExecSpace, class T>
void unpack_box(const ExecSpace& exec, ConstUnmanagedView<ExecSpace, T> src, std::size_t src_offset,
                UnmanagedView<ExecSpace, T> dst, const Shape& shape, const Box& box) {
  SHARDFLOW_REQUIRE(static_cast<std::int64_t>(dst.extent(0)) >= numel(shape), "kernels::unpack_box: destination of ",
                    dst.extent(0), " elements is smaller than shape ", shape_to_string(shape));
  unpack(exec, src, src_offset, dst, StridedBox::row_major(shape, box));
}

}  // namespace shardflow::kernels
