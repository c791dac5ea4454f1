// scale / accumulate / cast against serial references, for f32, f64, bf16, f16 and mixed
// element types; 16-bit results must equal one rounding of the f32 result.
#include <gtest/gtest.h>

#include <Kokkos_Core.hpp>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "core/error.hpp"
#include "core/half.hpp"
#include "kernels/elementwise.hpp"

namespace {
using namespace shardflow;
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
std::vector<float> random_floats(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 10.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

TEST(Elementwise, ScaleF32AndF64) {
  auto v = random_floats(10007, 1);
  auto d = to_device(v, "x");
  kernels::scale(Exec(), d, 0.25);
  Exec().fence();
  auto r = to_host(d);
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(r[i], v[i] * 0.25f);
  std::vector<double> w(v.begin(), v.end());
  auto dw = to_device(w, "w");
  kernels::scale(Exec(), dw, 1.0 / 3.0);
  Exec().fence();
  auto rw = to_host(dw);
  for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(rw[i], w[i] * (1.0 / 3.0));
}

TEST(Elementwise, ScaleBf16RoundsOnce) {
  auto v = random_floats(4099, 2);
  std::vector<bf16> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = to_bf16(v[i]);
  auto d = to_device(b, "b");
  kernels::scale(Exec(), d, 0.3);
  Exec().fence();
  auto r = to_host(d);
  for (size_t i = 0; i < b.size(); ++i) ASSERT_EQ(r[i].bits, to_bf16(to_f32(b[i]) * 0.3f).bits);
}

TEST(Elementwise, AccumulateSameAndMixedTypes) {
  auto a = random_floats(5003, 3), b = random_floats(5003, 4);
  auto da = to_device(a, "a");
  auto db = to_device(b, "b");
  kernels::accumulate(Exec(), da, db);
  Exec().fence();
  auto r = to_host(da);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(r[i], a[i] + b[i]);

  // f32 += bf16 (exact widening of the addend)
  std::vector<bf16> hb(b.size());
  for (size_t i = 0; i < b.size(); ++i) hb[i] = to_bf16(b[i]);
  auto dhb = to_device(hb, "hb");
  auto da2 = to_device(a, "a2");
  kernels::accumulate(Exec(), da2, dhb);
  Exec().fence();
  r = to_host(da2);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(r[i], a[i] + to_f32(hb[i]));

  // f16 += f16: one rounding of the f32 sum
  std::vector<f16> ha(a.size()), hb16(b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ha[i] = to_f16(a[i]);
    hb16[i] = to_f16(b[i]);
  }
  auto dha = to_device(ha, "ha");
  auto dhb16 = to_device(hb16, "hb16");
  kernels::accumulate(Exec(), dha, dhb16);
  Exec().fence();
  auto rh = to_host(dha);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(rh[i].bits, to_f16(to_f32(ha[i]) + to_f32(hb16[i])).bits);

  DView<float> shorter("shorter", 3);
  EXPECT_THROW(kernels::accumulate(Exec(), shorter, db), Error);
}

TEST(Elementwise, Cast) {
  auto a = random_floats(3001, 5);
  a.push_back(65520.0f);
  a.push_back(-0.0f);
  a.push_back(-std::numeric_limits<float>::infinity());
  auto da = to_device(a, "a");
  DView<f16> h("h", a.size());
  DView<bf16> b("b", a.size());
  kernels::cast(Exec(), h, da);
  kernels::cast(Exec(), b, da);
  Exec().fence();
  auto rh = to_host(h);
  auto rb = to_host(b);
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(rh[i].bits, to_f16(a[i]).bits);
    ASSERT_EQ(rb[i].bits, to_bf16(a[i]).bits);
  }
  DView<float> back("back", a.size());
  kernels::cast(Exec(), back, h);
  Exec().fence();
  auto rback = to_host(back);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(rback[i], to_f32(rh[i]));
}

}  // namespace
