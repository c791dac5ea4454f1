// The xlstm-jax primitives: shard_params picks xlstm-jax's dimension and slices exactly;
// gather_array_with_mean_grads gathers exactly and its backward equals the analytic mean
// over the axis (f32, bf16, f16 scatter); gather_params / shard_module_params round trip;
// sync_gradients averages replicated gradients and leaves partitioned ones untouched.
#include <gtest/gtest.h>

#include <cmath>

#include "comm/comm_set.hpp"
#include "core/error.hpp"
#include "core/half.hpp"
#include "shard/xlstm.hpp"
#include "support/test_util.hpp"

using namespace shardflow;
using namespace shardflow::shard;

namespace {

/// Exact test values: k/64 with |k| < 256 (exact in bf16 and f16; sums of four and their
/// means are exact in f32). `salt` distinguishes tensors and ranks.
float val(std::int64_t flat, int salt) { return static_cast<float>((flat * 37 + salt * 101) % 511 - 255) / 64.0f; }

std::vector<float> full_tensor(const Shape& s, int salt) {
  std::vector<float> v(static_cast<std::size_t>(numel(s)));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = val(static_cast<std::int64_t>(i), salt);
  return v;
}

/// Box `b` of a row-major tensor of shape `s`, as a row-major vector.
std::vector<float> slice(const std::vector<float>& full, const Shape& s, const Box& b) {
  std::vector<float> out;
  const Shape gs = row_major_strides(s), ls = row_major_strides(b.extent);
  for (std::int64_t i = 0; i < b.numel(); ++i) {
    std::int64_t rem = i, g = 0;
    for (std::size_t d = 0; d < b.ndim(); ++d) {
      const std::int64_t c = rem / ls[d];
      rem -= c * ls[d];
      g += (c + b.offset[d]) * gs[d];
    }
    out.push_back(full[static_cast<std::size_t>(g)]);
  }
  return out;
}

float round_to(DType t, float x) {
  if (t == DType::BF16) return static_cast<float>(bf16(x));
  if (t == DType::F16) return static_cast<float>(f16(x));
  return x;
}

struct Env {
  int n = test::world_size();
  int nd = n >= 2 ? 2 : 1;
  int nf = n / nd;
  Mesh mesh{MeshShape({"data", "fsdp"}, {nd, nf})};
  comm::CommSet comms{mesh, comm::Backend::Mpi};
  int rank() const { return mesh.rank(); }
};

TEST(Xlstm, ShardParamsPicksTheLargestDivisibleDimensionAndSlices) {
  Env e;
  const int nf = e.nf;
  const MeshShape& ms = e.mesh.shape();
  ParamList params;
  auto add = [&](const std::string& name, Shape s, int salt) {
    params.push_back(replicated_param(name, s, ms, full_tensor(s, salt)));
  };
  add("tie", {4 * nf, 4 * nf}, 1);       // equal extents: the later dimension
  add("odd", {16 * nf + 1, 4 * nf}, 2);  // 16nf+1 divisible only when nf == 1
  add("none", {7, 9}, 3);                // divisible only when nf == 1 (then the 9)
  add("small", {2, 3}, 4);               // 6 <= min_weight_size: stays
  {
    Layout l({8 * nf, 3}, PartitionSpec{{"fsdp"}, {}}, ms);  // already over fsdp: stays
    params.push_back(ShardedParam{"pre", l, slice(full_tensor({8 * nf, 3}, 5), {8 * nf, 3}, l.box(e.rank()))});
  }
  const std::int64_t min_size = 6;
  ParamList out = shard_params(params, e.rank(), "fsdp", min_size);
  ASSERT_EQ(out.size(), params.size());
  const std::vector<int> want_dim{1, nf == 1 ? 0 : 1, nf == 1 ? 1 : -1, -1, 0};
  for (std::size_t i = 0; i < out.size(); ++i) {
    const auto& p = out[i];
    EXPECT_EQ(p.name, params[i].name);
    EXPECT_EQ(p.layout.spec().dim_of_axis("fsdp"), want_dim[i]) << p.name << " " << p.layout.to_string();
    const Shape& s = p.layout.global_shape();
    EXPECT_EQ(p.data, slice(full_tensor(s, static_cast<int>(i) + 1), s, p.layout.box(e.rank()))) << p.name;
  }
  // 6 > 5: now sharded, on the 3 when nf divides it, else on the 2 when nf divides that
  EXPECT_EQ(shard_dim(params[3].layout, "fsdp", 5), 3 % nf == 0 ? 1 : 2 % nf == 0 ? 0 : -1);
  EXPECT_THROW(shard_params(params, e.rank(), "expert"), InputError);
}

TEST(Xlstm, GatherArrayWithMeanGradsForwardAndAnalyticBackward) {
  Env e;
  comm::Communicator& c = e.comms.axis("fsdp");
  const auto members = e.mesh.shape().group_ranks(e.rank(), {"fsdp"});
  const int n = c.size(), me = c.rank();
  const Shape local{3, 2, 5};
  for (int axis = 0; axis < 3; ++axis) {
    Shape full = local;
    full[static_cast<std::size_t>(axis)] *= n;
    Box mine{Shape(3, 0), local};
    mine.offset[static_cast<std::size_t>(axis)] = me * local[static_cast<std::size_t>(axis)];
    for (DType gd : {DType::F32, DType::BF16}) {
      // forward: every rank holds its block of one tensor; the gather rebuilds it
      std::vector<float> whole(static_cast<std::size_t>(numel(full)));
      for (std::size_t i = 0; i < whole.size(); ++i)
        whole[i] = static_cast<float>(i) / 3.0f + 0.001f;  // not exact in bf16: tests the cast
      auto x = slice(whole, full, mine);
      auto got = gather_array_forward(c, x, local, axis, gd);
      ASSERT_EQ(got.size(), whole.size());
      for (std::size_t i = 0; i < whole.size(); ++i)
        ASSERT_EQ(got[i], round_to(gd, whole[i])) << "axis " << axis << " " << dtype_name(gd) << " i " << i;
    }
    for (DType sd : {DType::F32, DType::BF16, DType::F16}) {
      // backward: rank r's upstream gradient is full_tensor(full, salt = its mesh rank); the
      // gradient of my shard is the mean over the axis of their blocks at my position
      auto g = full_tensor(full, members[static_cast<std::size_t>(me)]);
      auto got = gather_array_backward(c, g, local, axis, sd);
      std::vector<double> sum(static_cast<std::size_t>(numel(local)), 0.0);
      for (int r : members) {
        auto blk = slice(full_tensor(full, r), full, mine);
        for (std::size_t k = 0; k < sum.size(); ++k) sum[k] += blk[k];
      }
      for (std::size_t k = 0; k < sum.size(); ++k)
        ASSERT_EQ(got[k], round_to(sd, static_cast<float>(sum[k] / n))) << "axis " << axis << " " << dtype_name(sd);
    }
  }
  EXPECT_THROW(GatherWithMeanGrads(c, local, 3), InputError);
  try {
    GatherWithMeanGrads op(c, local, 0, DType::I32);
    FAIL();
  } catch (const InputError& err) {
    EXPECT_NE(std::string(err.what()).find("i32"), std::string::npos);
  }
}

TEST(Xlstm, ShardModuleParamsRoundTripAndMeanGradients) {
  Env e;
  const int nf = e.nf;
  const MeshShape& ms = e.mesh.shape();
  ParamList init{replicated_param("w", {4, 6 * nf}, ms, full_tensor({4, 6 * nf}, 11)),
                 replicated_param("b", {3}, ms, full_tensor({3}, 12)),
                 replicated_param("e", {8 * nf, 2}, ms, full_tensor({8 * nf, 2}, 13))};
  for (DType gd : {DType::F32, DType::BF16}) {
    ShardedModuleParams mod = shard_module_params(init, e.comms, "fsdp", 4, gd, DType::F32);
    EXPECT_TRUE(mod.sharded()[0].layout.spec().uses_axis("fsdp"));
    EXPECT_FALSE(mod.sharded()[1].layout.spec().uses_axis("fsdp"));  // 3 <= 4
    EXPECT_EQ(mod.sharded()[0].data.size(), static_cast<std::size_t>(4 * 6));
    const ParamList& full = mod.gather();
    for (std::size_t i = 0; i < init.size(); ++i) {
      EXPECT_TRUE(full[i].layout.spec().is_replicated());
      ASSERT_EQ(full[i].data.size(), init[i].data.size());
      for (std::size_t k = 0; k < init[i].data.size(); ++k) EXPECT_EQ(full[i].data[k], round_to(gd, init[i].data[k]));
    }
    // an optimizer step on the shards shows up in the next gather
    for (auto& v : mod.sharded()[2].data) v += 1.0f;
    const ParamList& again = mod.gather();
    for (std::size_t k = 0; k < init[2].data.size(); ++k)
      EXPECT_EQ(again[2].data[k], round_to(gd, init[2].data[k] + 1.0f));
    // gradients of the gathered params: rank-dependent; shards get the mean over fsdp
    ParamList grads = full;
    for (std::size_t i = 0; i < grads.size(); ++i)
      grads[i].data = full_tensor(grads[i].layout.global_shape(), e.rank());
    ParamList sg = mod.scatter_grads(grads);
    const auto members = ms.group_ranks(e.rank(), {"fsdp"});
    for (std::size_t i = 0; i < sg.size(); ++i) {
      const Shape& s = init[i].layout.global_shape();
      const Box b = mod.sharded()[i].layout.box(e.rank());
      EXPECT_EQ(sg[i].layout, mod.sharded()[i].layout);
      if (i == 1) {  // not sharded: passed through
        EXPECT_EQ(sg[i].data, grads[i].data);
        continue;
      }
      std::vector<double> want(static_cast<std::size_t>(b.numel()), 0.0);
      for (int r : members) {
        auto blk = slice(full_tensor(s, r), s, b);
        for (std::size_t k = 0; k < want.size(); ++k) want[k] += blk[k] / members.size();
      }
      for (std::size_t k = 0; k < want.size(); ++k) ASSERT_EQ(sg[i].data[k], static_cast<float>(want[k])) << sg[i].name;
    }
  }
}

TEST(Xlstm, SyncGradientsAveragesReplicatedAndLeavesPartitioned) {
  Env e;
  const MeshShape& ms = e.mesh.shape();
  const int me = e.rank();
  auto grad = [&](const std::string& name, Layout l, int salt) {
    return ShardedParam{name, l, slice(full_tensor(l.global_shape(), salt + 7 * me), l.global_shape(), l.box(me))};
  };
  const Shape s{4, 8};
  ParamList g{grad("rep", Layout::replicated(s, ms), 1), grad("fs", Layout(s, PartitionSpec{{}, {"fsdp"}}, ms), 2),
              grad("both", Layout(s, PartitionSpec{{"data"}, {"fsdp"}}, ms), 3),
              grad("pin", Layout(s, PartitionSpec{{}, {"fsdp"}}, ms, {{"data", 0}}), 4)};
  ParamList before = g;
  sync_gradients(g, e.comms, {"data", "fsdp"});
  auto mean_over = [&](std::size_t i, const std::vector<int>& ranks) {
    const Layout& l = before[i].layout;
    std::vector<double> acc(before[i].data.size(), 0.0);
    for (int r : ranks) {
      auto v = slice(full_tensor(s, static_cast<int>(i) + 1 + 7 * r), s, l.box(me));
      for (std::size_t k = 0; k < acc.size(); ++k) acc[k] += v[k];
    }
    std::vector<float> out;
    for (double a : acc) out.push_back(static_cast<float>(a / ranks.size()));
    return out;
  };
  std::vector<int> all(static_cast<std::size_t>(e.n));
  for (int r = 0; r < e.n; ++r) all[static_cast<std::size_t>(r)] = r;
  EXPECT_EQ(g[0].data, mean_over(0, all));
  EXPECT_EQ(g[1].data, mean_over(1, ms.group_ranks(me, {"data"})));
  EXPECT_EQ(g[2].data, before[2].data);  // split over both axes: untouched
  EXPECT_EQ(g[3].data, before[3].data);  // split over fsdp, pinned to data: untouched
  // a gradient partitioned over the only axis named is untouched
  ParamList g2{before[1]};
  sync_gradients(g2, e.comms, {"fsdp"});
  EXPECT_EQ(g2[0].data, before[1].data);
  try {
    sync_gradients(g, e.comms, {"data", "tensor"});
    FAIL();
  } catch (const InputError& err) {
    EXPECT_NE(std::string(err.what()).find("'tensor'"), std::string::npos) << err.what();
  }
}

}  // namespace
