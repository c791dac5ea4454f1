#pragma once
// HostTensor: a dense row-major tensor in host memory, used to shard and reassemble real
// data on the host (tests, planners, checkpoint tools). Box copies go through
// extract_box / insert_box; reshape reinterprets the same row-major data with a view shape.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/error.hpp"
#include "layout/layout.hpp"

namespace shardflow {

template <typename T>
struct HostTensor {
  Shape shape;
  std::vector<T> data;

  HostTensor() = default;
  /// A zero-filled tensor of the given shape.
  explicit HostTensor(Shape s) : shape(std::move(s)), data(static_cast<size_t>(shardflow::numel(shape))) {}
  /// Throws InputError when data.size() differs from the shape's element count.
  HostTensor(Shape s, std::vector<T> d) : shape(std::move(s)), data(std::move(d)) {
    SHARDFLOW_REQUIRE_INPUT(static_cast<int64_t>(data.size()) == shardflow::numel(shape), "HostTensor: shape ",
                            shape_to_string(shape), " has ", shardflow::numel(shape), " elements but ", data.size(),
                            " values were given");
  }
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  size_t ndim() const { return shape.size(); }
  bool operator==(const HostTensor& o) const { return shape == o.shape && data == o.data; }
  bool operator!=(const HostTensor& o) const { return !(*this == o); }
};

namespace detail {
/// Calls f(src_linear, dst_linear, run) for every contiguous run of the box, where the
/// source is the full tensor of shape `full` and the destination is the box itself.
template <typename F>
void for_each_box_run(const Shape& full, const Box& box, F&& f) {
  const size_t nd = full.size();
  SHARDFLOW_REQUIRE(box.ndim() == nd, "box ", box.to_string(), " has rank ", box.ndim(), " but the tensor ",
                    shape_to_string(full), " has rank ", nd);
  for (size_t d = 0; d < nd; ++d)
    SHARDFLOW_REQUIRE(box.offset[d] >= 0 && box.extent[d] >= 0 && box.offset[d] + box.extent[d] <= full[d], "box ",
                      box.to_string(), " does not fit in tensor ", shape_to_string(full));
  if (box.numel() == 0) return;
  if (nd == 0) {
    f(int64_t{0}, int64_t{0}, int64_t{1});
    return;
  }
  const Shape fs = row_major_strides(full);
  const Shape bs = row_major_strides(box.extent);
  const int64_t run = box.extent[nd - 1];
  const int64_t rows = box.numel() / run;
  Shape idx(nd, 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, src = 0, dst = 0;
    for (size_t d = nd - 1; d-- > 0;) {
      int64_t i = rem % box.extent[d];
      rem /= box.extent[d];
      src += (box.offset[d] + i) * fs[d];
      dst += i * bs[d];
    }
    src += box.offset[nd - 1];
    f(src, dst, run);
  }
}
}  // namespace detail

/// The part of `t` inside `box`, as a tensor of shape box.extent.
template <typename T>
HostTensor<T> extract_box(const HostTensor<T>& t, const Box& box) {
  HostTensor<T> out(box.extent);
  detail::for_each_box_run(t.shape, box, [&](int64_t src, int64_t dst, int64_t run) {
    for (int64_t k = 0; k < run; ++k) out.data[static_cast<size_t>(dst + k)] = t.data[static_cast<size_t>(src + k)];
  });
  return out;
}

/// Writes `piece` (shape box.extent) into `t` at `box`.
template <typename T>
void insert_box(HostTensor<T>& t, const Box& box, const HostTensor<T>& piece) {
  SHARDFLOW_REQUIRE(piece.shape == box.extent, "insert_box: piece of shape ", shape_to_string(piece.shape), " for box ",
                    box.to_string());
  detail::for_each_box_run(t.shape, box, [&](int64_t src, int64_t dst, int64_t run) {
    for (int64_t k = 0; k < run; ++k) t.data[static_cast<size_t>(src + k)] = piece.data[static_cast<size_t>(dst + k)];
  });
}

/// The same row-major data viewed with another shape of equal element count.
template <typename T>
HostTensor<T> reshape(HostTensor<T> t, Shape s) {
  SHARDFLOW_REQUIRE_INPUT(shardflow::numel(s) == t.numel(), "cannot view a tensor of shape ", shape_to_string(t.shape),
                          " as ", shape_to_string(s));
  t.shape = std::move(s);
  return t;
}

}  // namespace shardflow
