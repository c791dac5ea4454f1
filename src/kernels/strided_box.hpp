#pragma once
// StridedBox: a plain, device-copyable description of an N-D box inside a strided 1-D
// buffer. Element (i_0, ..., i_{n-1}) of the box lives at buffer index
//   offset + sum_d i_d * stride[d],   0 <= i_d < extent[d].
// The pack/unpack kernels copy between such a box and a contiguous buffer holding the box
// row-major over `extent`.
#include <Kokkos_Macros.hpp>
#include <cstdint>
#include <string>

#include "layout/layout.hpp"

namespace shardflow::kernels {

/// The largest number of dimensions a StridedBox describes.
constexpr int kMaxBoxDims = 8;

struct StridedBox {
  int ndim = 0;
  std::int64_t offset = 0;
  std::int64_t extent[kMaxBoxDims] = {};
  std::int64_t stride[kMaxBoxDims] = {};

  /// Box `box` (offsets relative to the array) of a row-major array of shape `shape`.
  /// Throws InputError when ranks differ, the box leaves the shape, or ndim > kMaxBoxDims.
  static StridedBox row_major(const Shape& shape, const Box& box);
  /// Box `box` of an array with the given element strides (>= 0) whose element (0,...,0)
  /// is at buffer index `base`. The box is not checked against any shape.
  static StridedBox strided(const Shape& strides, const Box& box, std::int64_t base = 0);
  /// A whole array of shape `extent` with the given element strides.
  static StridedBox of_array(const Shape& extent, const Shape& strides, std::int64_t base = 0);

  KOKKOS_INLINE_FUNCTION std::int64_t numel() const {
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= extent[d];
    return n;
  }
  /// One past the largest buffer index the box touches (offset when empty).
  std::int64_t span_end() const;
  /// The same box with dimensions of extent 1 dropped and adjacent dimensions merged where
  /// the memory is contiguous across them (stride[d] == stride[d+1] * extent[d+1]). The
  /// element order (row-major over the box) is unchanged; an empty box stays empty.
  StridedBox simplified() const;
  /// Elements in the innermost contiguous run after simplification (1 when the innermost
  /// stride is not 1).
  std::int64_t contiguous_run() const;
  std::string to_string() const;
};

}  // namespace shardflow::kernels
