#include "kernels/strided_box.hpp"

#include <sstream>

#include "core/error.hpp"

namespace shardflow::kernels {

namespace {
void check_rank(size_t n, const char* what) {
  SHARDFLOW_REQUIRE_INPUT(n <= static_cast<size_t>(kMaxBoxDims), "StridedBox: ", what, " has ", n,
                          " dimensions, more than the supported ", kMaxBoxDims);
}
}  // namespace

StridedBox StridedBox::row_major(const Shape& shape, const Box& box) {
  SHARDFLOW_REQUIRE_INPUT(box.offset.size() == shape.size() && box.extent.size() == shape.size(),
                          "StridedBox::row_major: box ", box.to_string(), " has a different rank than shape ",
                          shape_to_string(shape));
  for (size_t d = 0; d < shape.size(); ++d) {
    SHARDFLOW_REQUIRE_INPUT(shape[d] >= 0 && box.offset[d] >= 0 && box.extent[d] >= 0 &&
                                box.offset[d] + box.extent[d] <= shape[d],
                            "StridedBox::row_major: box ", box.to_string(), " leaves shape ", shape_to_string(shape),
                            " in dimension ", d);
  }
  return strided(row_major_strides(shape), box, 0);
}

StridedBox StridedBox::strided(const Shape& strides, const Box& box, std::int64_t base) {
  check_rank(box.extent.size(), "box");
  SHARDFLOW_REQUIRE_INPUT(box.offset.size() == box.extent.size() && strides.size() == box.extent.size(),
                          "StridedBox::strided: box ", box.to_string(), " and strides ", shape_to_string(strides),
                          " differ in rank");
  SHARDFLOW_REQUIRE_INPUT(base >= 0, "StridedBox::strided: negative base index ", base);
  StridedBox s;
  s.ndim = static_cast<int>(box.extent.size());
  s.offset = base;
  for (int d = 0; d < s.ndim; ++d) {
    SHARDFLOW_REQUIRE_INPUT(strides[d] >= 0, "StridedBox::strided: negative stride ", strides[d], " in dimension ", d);
    SHARDFLOW_REQUIRE_INPUT(box.offset[d] >= 0 && box.extent[d] >= 0, "StridedBox::strided: box ", box.to_string(),
                            " has a negative offset or extent");
    s.extent[d] = box.extent[d];
    s.stride[d] = strides[d];
    s.offset += box.offset[d] * strides[d];
  }
  return s;
}

StridedBox StridedBox::of_array(const Shape& extent, const Shape& strides, std::int64_t base) {
  Box b{Shape(extent.size(), 0), extent};
  return strided(strides, b, base);
}

std::int64_t StridedBox::span_end() const {
  if (numel() == 0) return offset;
  std::int64_t last = offset;
  for (int d = 0; d < ndim; ++d) last += (extent[d] - 1) * stride[d];
  return last + 1;
}

StridedBox StridedBox::simplified() const {
  StridedBox s;
  s.offset = offset;
  if (numel() == 0) {  // keep one empty dimension so that numel() stays 0
    s.ndim = 1;
    s.extent[0] = 0;
    s.stride[0] = 1;
    return s;
  }
  for (int d = 0; d < ndim; ++d) {
    if (extent[d] == 1) continue;
    if (s.ndim > 0 && s.stride[s.ndim - 1] == stride[d] * extent[d]) {
      // the previous (outer) kept dimension steps exactly over this one: merge
      s.extent[s.ndim - 1] *= extent[d];
      s.stride[s.ndim - 1] = stride[d];
      continue;
    }
    s.extent[s.ndim] = extent[d];
    s.stride[s.ndim] = stride[d];
    ++s.ndim;
  }
  if (s.ndim == 0) {  // a single element
    s.ndim = 1;
    s.extent[0] = 1;
    s.stride[0] = 1;
  }
  return s;
}

std::int64_t StridedBox::contiguous_run() const {
  StridedBox s = simplified();
  return s.stride[s.ndim - 1] == 1 ? s.extent[s.ndim - 1] : 1;
}

std::string StridedBox::to_string() const {
  std::ostringstream os;
  os << "StridedBox{offset " << offset << ", extent [";
  for (int d = 0; d < ndim; ++d) os << (d ? ", " : "") << extent[d];
  os << "], stride [";
  for (int d = 0; d < ndim; ++d) os << (d ? ", " : "") << stride[d];
  os << "]}";
  return os.str();
}

}  // namespace shardflow::kernels
