// Per-weight strategies (MAX vocabulary) on real data: exact contents of shards, round
// trips over many random shapes and device counts, uneven splits, view-shape layouts, and
// bad input.
#include <gtest/gtest.h>

#include <random>

#include "core/error.hpp"
#include "strategy/sharding_strategy.hpp"
#include "strategy/weight_sharding.hpp"
#include "strategy_test_util.hpp"

using namespace shardflow;
using shardflow::test::iota_tensor;

namespace {
/// Row r of a [R, C] row-major tensor.
std::vector<float> row(const HostTensor<float>& t, int64_t r) {
  const int64_t c = t.shape[1];
  return std::vector<float>(t.data.begin() + r * c, t.data.begin() + (r + 1) * c);
}
std::vector<float> col(const HostTensor<float>& t, int64_t c) {
  std::vector<float> out;
  for (int64_t r = 0; r < t.shape[0]; ++r) out.push_back(t.data[static_cast<size_t>(r * t.shape[1] + c)]);
  return out;
}
}  // namespace

TEST(WeightSharding, StackedQkvShardHoldsExactlyItsHeadsQkvRows) {
  // H = 12, A = 3 heads of D = 4, K = 5 input columns, on 2 devices: 2 heads + 1 head.
  const int A = 3, D = 4, K = 5, H = A * D;
  auto w = iota_tensor({3 * H, K});
  auto s = WeightSharding::stacked_qkv(A, D);
  const int n = 2;
  int head0 = 0;
  for (int dev = 0; dev < n; ++dev) {
    const int heads = dev == 0 ? 2 : 1;  // first A % n devices get one more head
    auto shard = s.shard(w, dev, n);
    ASSERT_EQ(shard.shape, (Shape{3 * heads * D, K}));
    int64_t r = 0;
    for (int block = 0; block < 3; ++block)        // Q, K, V
      for (int a = head0; a < head0 + heads; ++a)  // this device's heads
        for (int d = 0; d < D; ++d, ++r)
          EXPECT_EQ(row(shard, r), row(w, block * H + a * D + d))
              << "device " << dev << " block " << block << " head " << a;
    head0 += heads;
  }
}

TEST(WeightSharding, HeadAwareColumnwiseHoldsItsHeadsInputColumns) {
  const int A = 5, D = 2, R = 3;
  auto w = iota_tensor({R, A * D});
  auto s = WeightSharding::head_aware_columnwise(A, D);
  const int n = 3;  // heads 2, 2, 1
  const int heads_of[] = {2, 2, 1};
  int head0 = 0;
  for (int dev = 0; dev < n; ++dev) {
    auto shard = s.shard(w, dev, n);
    ASSERT_EQ(shard.shape, (Shape{R, heads_of[dev] * D}));
    for (int c = 0; c < heads_of[dev] * D; ++c) EXPECT_EQ(col(shard, c), col(w, head0 * D + c));
    head0 += heads_of[dev];
  }
}

TEST(WeightSharding, GateUpSplitsGateAndUpHalvesSeparately) {
  const int F = 5, H = 3;
  auto w = iota_tensor({2 * F, H});
  auto s = WeightSharding::gate_up(0);
  const int n = 2;  // F rows 3 + 2 of each half
  int64_t f0 = 0;
  for (int dev = 0; dev < n; ++dev) {
    const int64_t f = split_extent(F, n, dev);
    auto shard = s.shard(w, dev, n);
    ASSERT_EQ(shard.shape, (Shape{2 * f, H}));
    for (int64_t i = 0; i < f; ++i) {
      EXPECT_EQ(row(shard, i), row(w, f0 + i)) << "gate row";
      EXPECT_EQ(row(shard, f + i), row(w, F + f0 + i)) << "up row";
    }
    f0 += f;
  }
  // Along axis 1 of a transposed [H, 2F] weight.
  auto wt = iota_tensor({H, 2 * F});
  auto st = WeightSharding::gate_up(1);
  auto shard1 = st.shard(wt, 1, 2);
  ASSERT_EQ(shard1.shape, (Shape{H, 4}));
  EXPECT_EQ(col(shard1, 0), col(wt, 3));
  EXPECT_EQ(col(shard1, 1), col(wt, 4));
  EXPECT_EQ(col(shard1, 2), col(wt, F + 3));
  EXPECT_EQ(col(shard1, 3), col(wt, F + 4));
}

TEST(WeightSharding, RowwiseColumnwiseAxiswiseReplicateExpert) {
  auto w = iota_tensor({7, 4});
  auto r = WeightSharding::rowwise().shard(w, 2, 3);  // rows 5..6 (3, 2, 2)
  ASSERT_EQ(r.shape, (Shape{2, 4}));
  EXPECT_EQ(row(r, 0), row(w, 5));
  auto c = WeightSharding::columnwise().shard(w, 1, 3);  // columns 2 (2, 1, 1)
  ASSERT_EQ(c.shape, (Shape{7, 1}));
  EXPECT_EQ(col(c, 0), col(w, 2));
  auto a = WeightSharding::axiswise(1).shard(w, 0, 2);
  EXPECT_EQ(a, WeightSharding::columnwise().shard(w, 0, 2));
  EXPECT_EQ(WeightSharding::replicate().shard(w, 1, 4), w);
  auto e = iota_tensor({4, 2, 3});
  auto es = WeightSharding::expert_parallel().shard(e, 1, 2);
  EXPECT_EQ(es.shape, (Shape{2, 2, 3}));
  EXPECT_EQ(es.data.front(), e.data[12]);  // experts 2..3 start at element 2 * 2 * 3
}

TEST(WeightSharding, Queries) {
  EXPECT_TRUE(WeightSharding::rowwise().is_rowwise());
  EXPECT_TRUE(WeightSharding::columnwise().is_columnwise());
  EXPECT_TRUE(WeightSharding::axiswise(2).is_axiswise());
  EXPECT_EQ(WeightSharding::axiswise(2).axis(), 2);
  EXPECT_TRUE(WeightSharding::replicate().is_replicate());
  EXPECT_TRUE(WeightSharding::stacked_qkv(4, 8).is_stacked_qkv());
  EXPECT_TRUE(WeightSharding::head_aware_columnwise(4, 8).is_head_aware_columnwise());
  EXPECT_TRUE(WeightSharding::gate_up().is_gate_up());
  EXPECT_TRUE(WeightSharding::expert_parallel().is_expert_parallel());
  auto tp = WeightSharding::tensor_parallel(ParamKind::StackedQkv, 4, 8);
  EXPECT_TRUE(tp.is_tensor_parallel());
  EXPECT_TRUE(tp.resolve().is_stacked_qkv());
  EXPECT_TRUE(WeightSharding::tensor_parallel(ParamKind::AttentionOut, 4, 8).resolve().is_head_aware_columnwise());
  EXPECT_TRUE(WeightSharding::tensor_parallel(ParamKind::GateUp).resolve().is_gate_up());
  EXPECT_TRUE(WeightSharding::tensor_parallel(ParamKind::Down).resolve().is_columnwise());
  EXPECT_TRUE(WeightSharding::tensor_parallel(ParamKind::Embedding).resolve().is_rowwise());
  EXPECT_TRUE(WeightSharding::tensor_parallel(ParamKind::NormGain).resolve().is_replicate());
  EXPECT_NE(tp.to_string().find("stacked_qkv(num_heads=4, head_dim=8)"), std::string::npos) << tp.to_string();
}

TEST(WeightSharding, ViewShapesAndSpecs) {
  auto v = WeightSharding::stacked_qkv(4, 32).view({384, 128}, "tensor");
  EXPECT_EQ(v.view_shape, (Shape{3, 4, 32, 128}));
  EXPECT_EQ(v.spec, PartitionSpec::parse("(None, 'tensor', None, None)"));
  auto g = WeightSharding::gate_up(0).view({688, 128}, "tensor");
  EXPECT_EQ(g.view_shape, (Shape{2, 344, 128}));
  EXPECT_EQ(g.spec, PartitionSpec::parse("(None, 'tensor', None)"));
  auto o = WeightSharding::head_aware_columnwise(4, 32).view({128, 128}, "tensor");
  EXPECT_EQ(o.view_shape, (Shape{128, 4, 32}));
  EXPECT_EQ(o.spec, PartitionSpec::parse("(None, 'tensor', None)"));
  EXPECT_EQ(WeightSharding::replicate().view({3, 4}, "tensor").spec, PartitionSpec::replicated(2));
  // TensorParallelStrategy's named specs agree with the per-weight views.
  TensorParallelStrategy tp("tensor");
  EXPECT_EQ(tp.get_attention_qkv_spec(), v.spec);
  EXPECT_EQ(tp.get_attention_output_spec(), o.spec);
}

TEST(WeightSharding, LayoutOverViewMatchesShards) {
  // The Layout over the view shape gives every rank exactly the box shard() cuts.
  MeshShape mesh({"data", "tensor"}, {2, 3});
  const int A = 4, D = 3, K = 5;
  auto w = iota_tensor({3 * A * D, K});
  auto s = WeightSharding::stacked_qkv(A, D);
  Layout l = s.layout(w.shape, mesh, "tensor");
  EXPECT_EQ(l.global_shape(), (Shape{3, A, D, K}));
  std::vector<HostTensor<float>> per_rank;
  for (int r = 0; r < mesh.size(); ++r) {
    const int dev = mesh.coord(r, "tensor");
    EXPECT_EQ(l.box(r), s.view_box(w.shape, dev, 3)) << "rank " << r;
    per_rank.push_back(reshape(s.shard(w, dev, 3), l.box(r).extent));
  }
  shardflow::test::expect_reassembles(l, reshape(w, l.global_shape()), per_rank, "stacked_qkv layout");
}

TEST(WeightSharding, RandomRoundTrips) {
  std::mt19937 rng(42);
  int checked = 0;
  for (int iter = 0; iter < 400; ++iter) {
    const int kind = iter % 8;
    std::uniform_int_distribution<int> small(1, 6);
    const int n = small(rng);
    Shape shape;
    WeightSharding s = WeightSharding::replicate();
    switch (kind) {
      case 0:
        shape = {small(rng), small(rng)};
        s = WeightSharding::rowwise();
        break;
      case 1:
        shape = {small(rng), small(rng), small(rng)};
        s = WeightSharding::columnwise();
        break;
      case 2: {
        shape = shardflow::test::random_shape(rng, 4, 7);
        s = WeightSharding::axiswise(std::uniform_int_distribution<int>(0, static_cast<int>(shape.size()) - 1)(rng));
        break;
      }
      case 3: {
        const int A = std::max(n, small(rng)), D = small(rng);
        shape = {3 * A * D, small(rng)};
        s = WeightSharding::stacked_qkv(A, D);
        break;
      }
      case 4: {
        const int A = std::max(n, small(rng)), D = small(rng);
        shape = {small(rng), A * D};
        s = WeightSharding::head_aware_columnwise(A, D);
        break;
      }
      case 5:
        shape = {2 * small(rng), small(rng)};
        s = WeightSharding::gate_up(0);
        break;
      case 6:
        shape = {std::max(n, small(rng)), small(rng), small(rng)};
        s = WeightSharding::expert_parallel();
        break;
      case 7:
        shape = shardflow::test::random_shape(rng, 3, 5);
        s = WeightSharding::replicate();
        break;
    }
    std::mt19937 data_rng(static_cast<unsigned>(iter));
    auto w = shardflow::test::random_tensor(shape, data_rng);
    std::vector<HostTensor<double>> shards;
    int64_t total = 0;
    for (int d = 0; d < n; ++d) {
      shards.push_back(s.shard(w, d, n));
      EXPECT_EQ(shards.back().shape, s.shard_shape(shape, d, n));
      total += shards.back().numel();
    }
    if (!s.is_replicate()) {
      EXPECT_EQ(total, w.numel()) << s.to_string() << " " << shape_to_string(shape);
    }
    EXPECT_EQ(s.unshard(shards, shape), w)
        << s.to_string() << " on " << n << " devices, shape " << shape_to_string(shape);
    ++checked;
  }
  EXPECT_EQ(checked, 400);
}

TEST(WeightSharding, BadInputNamesTheNumbers) {
  auto qkv = WeightSharding::stacked_qkv(3, 4);
  try {
    qkv.shard(iota_tensor({36, 5}), 0, 4);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("4 devices"), std::string::npos) << m;
    EXPECT_NE(m.find("3 heads"), std::string::npos) << m;
  }
  EXPECT_THROW(WeightSharding::head_aware_columnwise(2, 4).shard(iota_tensor({3, 8}), 0, 3), InputError);
  EXPECT_THROW(qkv.shard(iota_tensor({35, 5}), 0, 2), InputError);                        // not 3*A*D rows
  EXPECT_THROW(WeightSharding::gate_up(0).shard(iota_tensor({5, 2}), 0, 2), InputError);  // odd
  EXPECT_THROW(WeightSharding::columnwise().shard(iota_tensor({5}), 0, 2), InputError);   // rank 1
  EXPECT_THROW(WeightSharding::axiswise(2).shard(iota_tensor({5, 2}), 0, 2), InputError);
  EXPECT_THROW(WeightSharding::rowwise().shard(iota_tensor({5, 2}), 2, 2), InputError);  // device out of range
  EXPECT_THROW(WeightSharding::rowwise().shard(iota_tensor({5, 2}), 0, 0), InputError);
  EXPECT_THROW(WeightSharding::expert_parallel().shard(iota_tensor({2, 2}), 0, 3), InputError);
  EXPECT_THROW(WeightSharding::stacked_qkv(0, 4), InputError);
  EXPECT_THROW(WeightSharding::axiswise(-1), InputError);
}

TEST(HostTensor, BoxCopiesAgainstElementLoops) {
  // extract_box / insert_box against a naive per-element index computation.
  std::mt19937 rng(5);
  for (int iter = 0; iter < 200; ++iter) {
    Shape shape = shardflow::test::random_shape(rng, 4, 6);
    auto t = shardflow::test::iota_tensor(shape);
    Box b{Shape(shape.size()), Shape(shape.size())};
    for (size_t d = 0; d < shape.size(); ++d) {
      b.offset[d] = std::uniform_int_distribution<int64_t>(0, shape[d] - 1)(rng);
      b.extent[d] = std::uniform_int_distribution<int64_t>(0, shape[d] - b.offset[d])(rng);
    }
    auto piece = extract_box(t, b);
    ASSERT_EQ(piece.shape, b.extent);
    const Shape ts = row_major_strides(shape), ps = row_major_strides(b.extent);
    for (int64_t i = 0; i < piece.numel(); ++i) {
      int64_t src = 0;
      for (size_t d = 0; d < shape.size(); ++d) src += ((i / ps[d]) % b.extent[d] + b.offset[d]) * ts[d];
      ASSERT_EQ(piece.data[static_cast<size_t>(i)], t.data[static_cast<size_t>(src)]) << b.to_string();
    }
    HostTensor<float> zero(shape);
    insert_box(zero, b, piece);
    for (int64_t j = 0; j < zero.numel(); ++j) {
      bool inside = true;
      for (size_t d = 0; d < shape.size(); ++d) {
        const int64_t c = (j / ts[d]) % shape[d];
        inside = inside && c >= b.offset[d] && c < b.offset[d] + b.extent[d];
      }
      ASSERT_EQ(zero.data[static_cast<size_t>(j)], inside ? t.data[static_cast<size_t>(j)] : 0.0f) << b.to_string();
    }
  }
  EXPECT_THROW(extract_box(shardflow::test::iota_tensor({3, 3}), Box{{2, 0}, {2, 3}}), Error);
  EXPECT_THROW((HostTensor<float>({2, 2}, std::vector<float>(3))), InputError);
  EXPECT_THROW(reshape(shardflow::test::iota_tensor({2, 3}), {4}), InputError);
}

// The model's view of each kind (model/param_kind.hpp) is the view the kind's per-weight
// strategy splits: the LayoutPlan refuses a plan where they differ.
TEST(WeightSharding, ModelViewsAreTheStrategiesViews) {
  const int64_t A = 4, D = 32, H = 128, F = 344, V = 256, S = 64, E = 4;
  const std::vector<std::pair<ParamKind, Shape>> kinds = {
      {ParamKind::Embedding, {V, H}},      {ParamKind::PosEmbedding, {S, H}}, {ParamKind::NormGain, {H}},
      {ParamKind::StackedQkv, {3 * H, H}}, {ParamKind::AttentionOut, {H, H}}, {ParamKind::GateUp, {2 * F, H}},
      {ParamKind::Down, {H, F}},           {ParamKind::LmHead, {V, H}},       {ParamKind::Router, {E, H}},
      {ParamKind::ExpertGateUp, {E, 2 * F, H}}, {ParamKind::ExpertDown, {E, H, F}}};
  for (const auto& [kind, shape] : kinds)
    EXPECT_EQ(view_shape(kind, shape, A, D),
              WeightSharding::tensor_parallel(kind, static_cast<int>(A), static_cast<int>(D)).view(shape, "tensor").view_shape)
        << param_kind_name(kind);
}
