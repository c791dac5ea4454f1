// Pack / unpack / copy_box against a naive multi-index reference, on many random shapes,
// boxes and strides (1-D to 8-D), in the default execution space (the GPU on a CUDA
// Kokkos): exact round trips, untouched elements outside the box, fused casts, errors.
#include <gtest/gtest.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "core/error.hpp"
#include "core/half.hpp"
#include "kernels/pack.hpp"

namespace {
using namespace shardflow;
using kernels::StridedBox;
using Exec = Kokkos::DefaultExecutionSpace;
template <class T>
using DView = Kokkos::View<T*, Exec::memory_space>;

template <class T>
DView<T> to_device(const std::vector<T>& v, const char* label) {
  DView<T> d(std::string(label), v.size());
  auto h = Kokkos::create_mirror_view(d);
  for (size_t i = 0; i < v.size(); ++i) h(i) = v[i];
  Kokkos::deep_copy(d, h);
  return d;
}
template <class T>
std::vector<T> to_host(const DView<T>& d) {
  auto h = Kokkos::create_mirror_view(d);
  Kokkos::deep_copy(h, d);
  return std::vector<T>(h.data(), h.data() + h.extent(0));
}

/// Buffer indices of the box elements, in row-major order over the box (the reference).
std::vector<std::int64_t> naive_indices(const StridedBox& b) {
  std::vector<std::int64_t> out;
  std::int64_t n = b.numel();
  out.reserve(static_cast<size_t>(n));
  std::vector<std::int64_t> idx(static_cast<size_t>(b.ndim), 0);
  for (std::int64_t e = 0; e < n; ++e) {
    std::int64_t pos = b.offset;
    for (int d = 0; d < b.ndim; ++d) pos += idx[static_cast<size_t>(d)] * b.stride[d];
    out.push_back(pos);
    for (int d = b.ndim - 1; d >= 0; --d) {
      if (++idx[static_cast<size_t>(d)] < b.extent[d]) break;
      idx[static_cast<size_t>(d)] = 0;
    }
  }
  return out;
}

struct Case {
  Shape shape;  // the array
  Shape strides;
  std::int64_t base = 0;
  std::int64_t buffer = 0;  // elements the array's buffer needs
  Box box;
};

/// A random array (row-major, padded, or permuted strides) and a random sub-box.
Case random_case(std::mt19937& rng, int ndim, bool strided) {
  Case c;
  std::uniform_int_distribution<int> ext(1, ndim <= 3 ? 9 : 4);
  for (int d = 0; d < ndim; ++d) c.shape.push_back(ext(rng));
  if (!strided) {
    c.strides = row_major_strides(c.shape);
  } else {
    // strides of a padded array whose dimensions are laid out in a random order
    std::vector<int> order(static_cast<size_t>(ndim));
    std::iota(order.begin(), order.end(), 0);
    if (rng() % 3 != 0) std::shuffle(order.begin(), order.end(), rng);
    c.strides.assign(static_cast<size_t>(ndim), 0);
    std::int64_t s = 1 + (rng() % 4 == 0 ? rng() % 3 : 0);  // sometimes a non-unit innermost stride
    for (int k = ndim - 1; k >= 0; --k) {
      int d = order[static_cast<size_t>(k)];
      c.strides[static_cast<size_t>(d)] = s;
      s *= c.shape[static_cast<size_t>(d)] + static_cast<std::int64_t>(rng() % 3);  // padding
    }
    c.base = rng() % 5;
  }
  for (int d = 0; d < ndim; ++d) {
    std::int64_t n = c.shape[static_cast<size_t>(d)];
    std::int64_t lo = rng() % n;
    std::int64_t len = 1 + static_cast<std::int64_t>(rng() % static_cast<std::uint32_t>(n - lo));
    if (rng() % 8 == 0) {  // sometimes the full extent, so dimensions merge
      lo = 0;
      len = n;
    }
    c.box.offset.push_back(lo);
    c.box.extent.push_back(len);
  }
  std::int64_t span = c.base + 1;
  for (int d = 0; d < ndim; ++d) span += (c.shape[static_cast<size_t>(d)] - 1) * c.strides[static_cast<size_t>(d)];
  c.buffer = span;
  return c;
}

template <class T>
void round_trip_one(const Case& c, std::mt19937& rng) {
  StridedBox sb = StridedBox::strided(c.strides, c.box, c.base);
  std::vector<T> src(static_cast<size_t>(c.buffer));
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<T>(1000003 * (i + 1) % 999983);
  auto idx = naive_indices(sb);
  const std::int64_t n = sb.numel();
  const size_t off = rng() % 7;
  std::vector<T> packed_init(static_cast<size_t>(n) + off + 3, T(-1));
  auto dsrc = to_device(src, "src");
  auto dpacked = to_device(packed_init, "packed");
  kernels::pack(Exec(), dsrc, sb, dpacked, off);
  Exec().fence();
  auto packed = to_host(dpacked);
  for (size_t i = 0; i < off; ++i) ASSERT_EQ(packed[i], T(-1)) << "pack wrote before dst_offset";
  for (std::int64_t e = 0; e < n; ++e)
    ASSERT_EQ(packed[off + static_cast<size_t>(e)], src[static_cast<size_t>(idx[static_cast<size_t>(e)])])
        << "pack element " << e << " of " << sb.to_string();
  for (size_t i = off + static_cast<size_t>(n); i < packed.size(); ++i) ASSERT_EQ(packed[i], T(-1));

  // unpack into a strided destination initialised to a sentinel
  std::vector<T> dst_init(static_cast<size_t>(c.buffer), T(-7));
  auto ddst = to_device(dst_init, "dst");
  kernels::unpack(Exec(), dpacked, off, ddst, sb);
  Exec().fence();
  auto dst = to_host(ddst);
  std::vector<char> inside(dst.size(), 0);
  for (auto i : idx) inside[static_cast<size_t>(i)] = 1;
  for (size_t i = 0; i < dst.size(); ++i) {
    if (inside[i]) ASSERT_EQ(dst[i], src[i]) << "unpack round trip at " << i << " of " << sb.to_string();
    else ASSERT_EQ(dst[i], T(-7)) << "unpack touched " << i << " outside " << sb.to_string();
  }
}

TEST(Pack, RowMajorRandomBoxes) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 600; ++trial) {
    int ndim = 1 + trial % 6;
    Case c = random_case(rng, ndim, false);
    SCOPED_TRACE(shape_to_string(c.shape) + " box " + c.box.to_string());
    if (trial % 2) round_trip_one<float>(c, rng);
    else round_trip_one<std::int64_t>(c, rng);
  }
}

TEST(Pack, StridedRandomBoxes) {
  std::mt19937 rng(2);
  for (int trial = 0; trial < 800; ++trial) {
    int ndim = 1 + trial % 8;
    Case c = random_case(rng, ndim, true);
    SCOPED_TRACE(shape_to_string(c.shape) + " strides " + shape_to_string(c.strides) + " box " + c.box.to_string());
    switch (trial % 3) {
      case 0: round_trip_one<float>(c, rng); break;
      case 1: round_trip_one<double>(c, rng); break;
      default: round_trip_one<std::int32_t>(c, rng); break;
    }
  }
}

// Many runs: the host path splits them into several work items (odometer restarts).
TEST(Pack, ManyRunsAcrossWorkItems) {
  std::mt19937 rng(3);
  Case c;
  c.shape = {5, 200, 130, 40};
  c.strides = row_major_strides(c.shape);
  c.box = Box{{1, 3, 5, 2}, {4, 190, 120, 33}};
  c.buffer = numel(c.shape);
  round_trip_one<float>(c, rng);
  c.box = Box{{0, 0, 0, 0}, {5, 200, 130, 40}};  // whole array: one merged run
  round_trip_one<float>(c, rng);
}

TEST(Pack, PackBoxContract) {
  Shape shape{5, 6, 7};
  std::vector<float> src(static_cast<size_t>(numel(shape)));
  std::iota(src.begin(), src.end(), 0.0f);
  auto dsrc = to_device(src, "src");
  Box box{{1, 2, 3}, {3, 4, 2}};
  DView<float> dpacked("packed", 10 + 24);
  kernels::pack_box<Exec, float>(Exec(), dsrc, shape, box, dpacked, 10);
  Exec().fence();
  auto packed = to_host(dpacked);
  size_t e = 10;
  for (int i = 1; i < 4; ++i)
    for (int j = 2; j < 6; ++j)
      for (int k = 3; k < 5; ++k) ASSERT_EQ(packed[e++], float((i * 6 + j) * 7 + k));
  DView<float> dback("back", src.size());
  kernels::unpack_box<Exec, float>(Exec(), dpacked, 10, dback, shape, box);
  Exec().fence();
  auto back = to_host(dback);
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 6; ++j)
      for (int k = 0; k < 7; ++k) {
        bool in = i >= 1 && i < 4 && j >= 2 && j < 6 && k >= 3 && k < 5;
        size_t at = static_cast<size_t>((i * 6 + j) * 7 + k);
        ASSERT_EQ(back[at], in ? src[at] : 0.0f);
      }
  // the exact unmanaged signature deduces T
  kernels::ConstUnmanagedView<Exec, float> us(dsrc.data(), dsrc.extent(0));
  kernels::UnmanagedView<Exec, float> ud(dpacked.data(), dpacked.extent(0));
  kernels::pack_box(Exec(), us, shape, box, ud);
}

TEST(Pack, CastPackAndUnpackCast) {
  std::mt19937 rng(4);
  for (int trial = 0; trial < 200; ++trial) {
    Case c = random_case(rng, 1 + trial % 5, trial % 2 == 1);
    StridedBox sb = StridedBox::strided(c.strides, c.box, c.base);
    std::vector<float> src(static_cast<size_t>(c.buffer));
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (auto& v : src) v = nd(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 40) - 20);
    auto idx = naive_indices(sb);
    auto dsrc = to_device(src, "src");
    DView<bf16> pb("pb", static_cast<size_t>(sb.numel()));
    DView<f16> ph("ph", static_cast<size_t>(sb.numel()));
    kernels::cast_pack(Exec(), dsrc, sb, pb);
    kernels::cast_pack(Exec(), dsrc, sb, ph);
    Exec().fence();
    auto hb = to_host(pb);
    auto hh = to_host(ph);
    for (size_t e = 0; e < idx.size(); ++e) {
      float x = src[static_cast<size_t>(idx[e])];
      ASSERT_EQ(hb[e].bits, to_bf16(x).bits);
      ASSERT_EQ(hh[e].bits, to_f16(x).bits);
    }
    // unpack-and-cast back into f32: exact widening of the rounded values
    DView<float> back("back", src.size());
    kernels::unpack_cast(Exec(), pb, 0, back, sb);
    Exec().fence();
    auto hback = to_host(back);
    for (size_t e = 0; e < idx.size(); ++e) ASSERT_EQ(hback[static_cast<size_t>(idx[e])], to_f32(hb[e]));
    kernels::unpack_cast(Exec(), ph, 0, back, sb);
    Exec().fence();
    hback = to_host(back);
    for (size_t e = 0; e < idx.size(); ++e) ASSERT_EQ(hback[static_cast<size_t>(idx[e])], to_f32(hh[e]));
  }
}

TEST(Pack, CopyBoxStridedToStrided) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    int ndim = 1 + trial % 6;
    Case a = random_case(rng, ndim, true);
    Case b = random_case(rng, ndim, true);
    // give b's box a's extents (grow b's array where needed)
    for (int d = 0; d < ndim; ++d) {
      auto ud = static_cast<size_t>(d);
      b.box.extent[ud] = a.box.extent[ud];
      if (b.box.offset[ud] + b.box.extent[ud] > b.shape[ud]) b.box.offset[ud] = b.shape[ud] - b.box.extent[ud];
      if (b.box.offset[ud] < 0) {
        b.box.offset[ud] = 0;
        b.shape[ud] = b.box.extent[ud];
      }
    }
    b.strides = row_major_strides(b.shape);
    std::reverse(b.strides.begin(), b.strides.end());  // a different (but valid) layout is enough here
    b.strides = Shape(b.strides.rbegin(), b.strides.rend());
    b.buffer = numel(b.shape);
    StridedBox sa = StridedBox::strided(a.strides, a.box, a.base);
    StridedBox sbx = StridedBox::row_major(b.shape, b.box);
    std::vector<double> src(static_cast<size_t>(a.buffer));
    for (size_t i = 0; i < src.size(); ++i) src[i] = double(i) * 0.5 + 1;
    auto dsrc = to_device(src, "src");
    auto ia = naive_indices(sa), ib = naive_indices(sbx);
    for (auto path : {kernels::CopyPath::Auto, kernels::CopyPath::Runs, kernels::CopyPath::Elements}) {
      DView<double> ddst("dst", static_cast<size_t>(b.buffer));
      kernels::copy_box(Exec(), dsrc, sa, ddst, sbx, path);
      Exec().fence();
      auto dst = to_host(ddst);
      for (size_t e = 0; e < ia.size(); ++e)
        ASSERT_EQ(dst[static_cast<size_t>(ib[e])], src[static_cast<size_t>(ia[e])]) << "path " << int(path);
    }
  }
}

// Both work distributions (chunks of runs, single elements) on the same random cases.
TEST(Pack, BothPathsAgree) {
  std::mt19937 rng(6);
  for (int trial = 0; trial < 300; ++trial) {
    Case c = random_case(rng, 1 + trial % 7, trial % 2 == 0);
    StridedBox sb = StridedBox::strided(c.strides, c.box, c.base);
    std::vector<float> src(static_cast<size_t>(c.buffer));
    for (size_t i = 0; i < src.size(); ++i) src[i] = float(i) + 0.25f;
    auto dsrc = to_device(src, "src");
    auto idx = naive_indices(sb);
    Shape ext(sb.extent, sb.extent + sb.ndim);
    StridedBox packed = StridedBox::of_array(ext, row_major_strides(ext));
    for (auto path : {kernels::CopyPath::Runs, kernels::CopyPath::Elements}) {
      DView<float> dp("packed", idx.size());
      kernels::copy_box(Exec(), dsrc, sb, dp, packed, path);
      DView<bf16> db("packed_bf16", idx.size());
      kernels::copy_box(Exec(), dsrc, sb, db, packed, path);
      Exec().fence();
      auto hp = to_host(dp);
      auto hb = to_host(db);
      for (size_t e = 0; e < idx.size(); ++e) {
        ASSERT_EQ(hp[e], src[static_cast<size_t>(idx[e])]) << "path " << int(path) << " " << sb.to_string();
        ASSERT_EQ(hb[e].bits, to_bf16(src[static_cast<size_t>(idx[e])]).bits);
      }
    }
  }
}

TEST(Pack, EmptyBoxIsANoOp) {
  DView<float> src("src", 10), dst("dst", 0);
  Shape shape{2, 5};
  kernels::pack_box<Exec, float>(Exec(), src, shape, Box{{1, 2}, {1, 0}}, dst);
  kernels::unpack_box<Exec, float>(Exec(), dst, 0, src, shape, Box{{0, 0}, {0, 5}});
  SUCCEED();
}

TEST(Pack, ErrorsNameTheValues) {
  DView<float> src("src_view", 20), dst("dst_view", 6);
  Shape shape{4, 5};
  // box leaves the shape
  try {
    kernels::pack_box<Exec, float>(Exec(), src, shape, Box{{3, 0}, {2, 5}}, dst);
    FAIL() << "expected an error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("[4, 5]"), std::string::npos) << e.what();
  }
  // destination too small
  try {
    kernels::pack_box<Exec, float>(Exec(), src, shape, Box{{0, 0}, {2, 4}}, dst);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dst_view"), std::string::npos) << e.what();
  }
  // source smaller than the shape
  try {
    kernels::pack_box<Exec, float>(Exec(), dst, shape, Box{{0, 0}, {1, 1}}, src);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[4, 5]"), std::string::npos) << e.what();
  }
  // strided box beyond the view
  StridedBox sb = StridedBox::strided({10, 1}, Box{{0, 0}, {3, 2}});
  EXPECT_THROW(kernels::pack(Exec(), src, sb, dst), Error);
  EXPECT_THROW(StridedBox::strided({-1, 1}, Box{{0, 0}, {3, 2}}), InputError);
  EXPECT_THROW(StridedBox::row_major(Shape(9, 1), Box{Shape(9, 0), Shape(9, 1)}), InputError);
}

// The batched host run copy, every implementation this CPU runs (AVX2, generic), against
// a byte loop: every run length 0..600 (all tails and block counts), odd steps and
// misaligned starts, and nothing written outside the runs.
TEST(Pack, HostCopyRunsEveryLengthAndAlignment) {
  namespace d = shardflow::kernels::detail;
  const std::string chosen = d::host_copy_impl();
  const auto impls = d::host_copy_impls();
  ASSERT_EQ(impls.front(), chosen) << "the fastest implementation is the default";
  EXPECT_EQ(impls.back(), "generic");
  for (const std::string& impl : impls) {
    d::set_host_copy_impl(impl);
    std::mt19937 g(7);
    for (std::size_t bytes = 0; bytes <= 600; ++bytes) {
      const std::int64_t cnt = 1 + static_cast<std::int64_t>(bytes % 5);
      const std::int64_t src_step = static_cast<std::int64_t>(bytes) + 3 + static_cast<std::int64_t>(bytes % 7);
      const std::int64_t dst_step = static_cast<std::int64_t>(bytes) + static_cast<std::int64_t>(bytes % 3);
      std::vector<char> src(static_cast<std::size_t>(cnt * src_step + 64)),
          dst(static_cast<std::size_t>(cnt * dst_step + 64));
      for (auto& c : src) c = static_cast<char>(g());
      std::fill(dst.begin(), dst.end(), char(0x5a));
      std::vector<char> want = dst;
      const std::size_t so = bytes % 13, doff = bytes % 11;
      for (std::int64_t r = 0; r < cnt; ++r)
        for (std::size_t b = 0; b < bytes; ++b)
          want[doff + static_cast<std::size_t>(r * dst_step) + b] =
              src[so + static_cast<std::size_t>(r * src_step) + b];
      d::host_copy_runs(dst.data() + doff, src.data() + so, cnt, bytes, dst_step, src_step);
      ASSERT_EQ(dst, want) << "bytes " << bytes << " (" << d::host_copy_impl() << ")";
    }
  }
  d::set_host_copy_impl(chosen);
  try {
    d::set_host_copy_impl("sse9");
    FAIL() << "an unknown implementation was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'sse9'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(d::host_copy_impl(), chosen);
}

// The row walk (host_copy_row_runs), every implementation, both directions (FromRows with and
// without non-temporal stores): three runs
// per walked row of lengths 0..300 bytes, each over its own range of rows (one starting
// late, one ending early), with their other sides at their own steps, against a byte loop;
// nothing written outside the runs. Run 0's other side is contiguous (each row's run lands
// right after the last one's) at every offset from a 64-byte line, so that its non-temporal
// stores complete lines across rows; run 1's has gaps. Then again with the runs covering the
// rows and the rows adjacent, at every offset of the rows from a line (IntoRows: one stream
// across runs and rows).
TEST(Pack, HostCopyRowRunsEveryLengthAndRowRange) {
  namespace d = shardflow::kernels::detail;
  const std::string chosen = d::host_copy_impl();
  for (const std::string& impl : d::host_copy_impls()) {
    d::set_host_copy_impl(impl);
    for (const d::RowWalk dir : {d::RowWalk::FromRows, d::RowWalk::IntoRows})
      for (const bool tiled : {false, true}) {  // tiled: the runs cover the rows, rows adjacent
        const bool from = dir == d::RowWalk::FromRows;
        std::mt19937 g(11);
        for (std::size_t bytes = 0; bytes <= 300; ++bytes) {
          const std::int64_t rows = 1 + static_cast<std::int64_t>(bytes % 6);
          const std::size_t len[3] = {bytes, (bytes * 7) % 97, bytes / 2 + 1};
          const std::size_t gap = tiled ? 0 : 1, at = tiled ? 0 : bytes % 5;
          const std::size_t off[3] = {at, at + len[0] + gap, at + len[0] + len[1] + 3 * gap};
          const std::int64_t row_step = static_cast<std::int64_t>(off[2] + len[2] + (tiled ? 0 : bytes % 9));
          const std::size_t bshift = (bytes * 3) % 64;  // where the walked rows start in `base`
          std::vector<char> base(static_cast<std::size_t>(rows * row_step + 80));
          for (auto& c : base) c = static_cast<char>(g());
          std::vector<char> base_want = base;
          std::vector<std::vector<char>> other(3), want(3);
          d::RowRun runs[3];
          // where each other side starts in its buffer: run 0 at every offset 0..63 over the lengths
          const std::size_t shift[3] = {(bytes * 5) % 64, 1 + bytes % 7, 2};
          for (int k = 0; k < 3; ++k) {
            d::RowRun& q = runs[k];
            q.row0 = k == 1 ? rows / 2 : 0;
            q.rows = k == 2 ? std::max<std::int64_t>(0, rows - 1) : rows - q.row0;
            q.row_off = off[k];
            q.bytes = len[k];
            q.other_step = static_cast<std::int64_t>(len[k] + static_cast<std::size_t>(k) * 3);
            other[k].resize(static_cast<std::size_t>(rows * q.other_step + 104));
            for (auto& c : other[k]) c = static_cast<char>(g());
            want[k] = other[k];
            for (std::int64_t r = q.row0; r < q.row0 + q.rows; ++r)
              for (std::size_t b = 0; b < len[k]; ++b) {
                const auto o = shift[k] + static_cast<std::size_t>((r - q.row0) * q.other_step) + b;
                const auto w = bshift + static_cast<std::size_t>(r * row_step) + off[k] + b;
                if (from)
                  want[k][o] = base[w];
                else
                  base_want[w] = other[k][o];
              }
            q.other = other[k].data() + shift[k];
            q.stream = k != 2;  // non-temporal stores for two of the three
          }
          d::host_copy_row_runs(base.data() + bshift, row_step, rows, runs, 3, dir);
          const std::string what =
              (from ? " from" : " into") + std::string(tiled ? " tiled" : "") + " rows (" + impl + ")";
          ASSERT_EQ(base, base_want) << "bytes " << bytes << what;
          for (int k = 0; k < 3; ++k) ASSERT_EQ(other[k], want[k]) << "bytes " << bytes << ", run " << k << what;
        }
      }
  }
  d::set_host_copy_impl(chosen);
}

TEST(StridedBoxTest, Simplify) {
  // a full-width sub-box of a row-major array merges into one run
  auto s = StridedBox::row_major({4, 5, 6}, Box{{1, 0, 0}, {2, 5, 6}}).simplified();
  EXPECT_EQ(s.ndim, 1);
  EXPECT_EQ(s.extent[0], 60);
  EXPECT_EQ(s.offset, 30);
  auto t = StridedBox::row_major({4, 5, 6}, Box{{1, 0, 2}, {2, 5, 3}});
  EXPECT_EQ(t.contiguous_run(), 3);
  auto u = StridedBox::strided({1, 4}, Box{{0, 0}, {4, 3}});  // column-major
  EXPECT_EQ(u.contiguous_run(), 1);
  EXPECT_EQ(u.span_end(), 12);
}

}  // namespace
