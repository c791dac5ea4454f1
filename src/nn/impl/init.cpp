// Mesh-independent initialisation: one Philox stream per (seed, tensor name), indexed by
// the element's global flat index.
#include "nn/init.hpp"

#include "core/error.hpp"

namespace shardflow::nn {

uint64_t tensor_key(uint64_t seed, const std::string& name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a 64
  for (const unsigned char ch : name) {
    h ^= ch;
    h *= 0x100000001B3ull;
  }
  return mix64(h ^ mix64(seed));
}

bool is_norm_gain(const std::string& name) {
  const std::string suffix = "norm.weight";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

double init_value(uint64_t seed, const std::string& name, int64_t index, double stddev) {
  if (is_norm_gain(name)) return 1.0;
  return stddev * normal_sample(tensor_key(seed, name), static_cast<uint64_t>(index));
}

namespace {
constexpr int kMaxRank = 8;
struct BoxMap {
  int rank = 0;
  int64_t extent[kMaxRank] = {};       // box extents
  int64_t offset[kMaxRank] = {};       // box offsets
  int64_t gstride[kMaxRank] = {};      // global row-major strides
};
}  // namespace

template <class Scalar, class Exec>
void Init<Scalar, Exec>::fill_box(typename V::Vec out, uint64_t seed, const std::string& name,
                                  const Shape& global_shape, const Box& box, double stddev) {
  SHARDFLOW_REQUIRE(box.ndim() == global_shape.size() && box.offset.size() == box.extent.size(), "Init::fill_box(",
                    name, "): box ", box.to_string(), " does not match shape ", shape_to_string(global_shape));
  SHARDFLOW_REQUIRE(global_shape.size() <= static_cast<size_t>(kMaxRank), "Init::fill_box(", name, "): rank ",
                    global_shape.size(), " exceeds ", kMaxRank);
  for (size_t d = 0; d < global_shape.size(); ++d)
    SHARDFLOW_REQUIRE(box.offset[d] >= 0 && box.extent[d] >= 0 && box.offset[d] + box.extent[d] <= global_shape[d],
                      "Init::fill_box(", name, "): box ", box.to_string(), " leaves shape ",
                      shape_to_string(global_shape), " in dimension ", d);
  SHARDFLOW_REQUIRE(static_cast<int64_t>(out.extent(0)) == box.numel(), "Init::fill_box(", name, "): out has ",
                    out.extent(0), " elements but box ", box.to_string(), " has ", box.numel());
  if (is_norm_gain(name)) {
    Kokkos::deep_copy(out, Scalar(1));
    return;
  }
  BoxMap m;
  m.rank = static_cast<int>(global_shape.size());
  const Shape strides = row_major_strides(global_shape);
  for (int d = 0; d < m.rank; ++d) {
    m.extent[d] = box.extent[d];
    m.offset[d] = box.offset[d];
    m.gstride[d] = strides[d];
  }
  const uint64_t key = tensor_key(seed, name);
  Kokkos::parallel_for(
      "nn::init_normal", Kokkos::RangePolicy<Exec>(0, out.extent(0)), KOKKOS_LAMBDA(const int64_t j) {
        int64_t rest = j, global = 0;
        for (int d = m.rank - 1; d >= 0; --d) {
          const int64_t c = rest % m.extent[d];
          rest /= m.extent[d];
          global += (m.offset[d] + c) * m.gstride[d];
        }
        out(j) = static_cast<Scalar>(stddev * normal_sample(key, static_cast<uint64_t>(global)));
      });
}

template <class Scalar, class Exec>
void Init<Scalar, Exec>::fill(typename V::Vec out, uint64_t seed, const std::string& name, const Shape& global_shape,
                              double stddev) {
  Box all;
  all.offset.assign(global_shape.size(), 0);
  all.extent = global_shape;
  fill_box(out, seed, name, global_shape, all, stddev);
}

template struct Init<float>;
template struct Init<double>;

}  // namespace shardflow::nn
