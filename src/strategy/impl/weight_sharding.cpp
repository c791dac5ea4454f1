#include "strategy/weight_sharding.hpp"

#include "core/error.hpp"

namespace shardflow {


WeightSharding WeightSharding::replicate() { return WeightSharding(Kind::Replicate, 0, 0, 0); }
WeightSharding WeightSharding::rowwise() { return WeightSharding(Kind::Rowwise, 0, 0, 0); }
WeightSharding WeightSharding::columnwise() { return WeightSharding(Kind::Columnwise, 1, 0, 0); }
WeightSharding WeightSharding::axiswise(int axis) {
  SHARDFLOW_REQUIRE_INPUT(axis >= 0, "axiswise: axis ", axis, " is negative");
  return WeightSharding(Kind::Axiswise, axis, 0, 0);
}
WeightSharding WeightSharding::stacked_qkv(int num_heads, int head_dim) {
  SHARDFLOW_REQUIRE_INPUT(num_heads >= 1 && head_dim >= 1, "stacked_qkv: num_heads ", num_heads, " and head_dim ",
                          head_dim, " must both be >= 1");
  return WeightSharding(Kind::StackedQkv, 0, num_heads, head_dim);
}
WeightSharding WeightSharding::head_aware_columnwise(int num_heads, int head_dim) {
  SHARDFLOW_REQUIRE_INPUT(num_heads >= 1 && head_dim >= 1, "head_aware_columnwise: num_heads ", num_heads,
                          " and head_dim ", head_dim, " must both be >= 1");
  return WeightSharding(Kind::HeadAwareColumnwise, 1, num_heads, head_dim);
}
WeightSharding WeightSharding::head_aware_rowwise(int num_heads, int head_dim) {
  SHARDFLOW_REQUIRE_INPUT(num_heads >= 1 && head_dim >= 1, "head_aware_rowwise: num_heads ", num_heads,
                          " and head_dim ", head_dim, " must both be >= 1");
  return WeightSharding(Kind::HeadAwareRowwise, 0, num_heads, head_dim);
}
WeightSharding WeightSharding::grouped_kv(int head_dim) {
  SHARDFLOW_REQUIRE_INPUT(head_dim >= 1, "grouped_kv: head_dim ", head_dim, " must be >= 1");
  return WeightSharding(Kind::GroupedKv, 1, 0, head_dim);
}

bool kv_heads_aligned(int64_t heads, int64_t kv_heads, int tensor) {
  SHARDFLOW_REQUIRE(heads >= 1 && kv_heads >= 1 && heads % kv_heads == 0 && tensor >= 1, "kv_heads_aligned: heads ",
                    heads, ", kv_heads ", kv_heads, ", tensor ", tensor);
  const int64_t group = heads / kv_heads;
  if (tensor > kv_heads) return false;
  for (int r = 0; r < tensor; ++r) {
    const int64_t a0 = split_offset(heads, tensor, r), a1 = a0 + split_extent(heads, tensor, r);
    const int64_t k0 = split_offset(kv_heads, tensor, r), k1 = k0 + split_extent(kv_heads, tensor, r);
    // the kv heads of query heads [a0, a1) are [a0 / group, (a1 - 1) / group]
    if (a1 <= a0 || a0 / group != k0 || (a1 - 1) / group + 1 != k1) return false;
  }
  return true;
}

WeightSharding WeightSharding::gate_up(int axis) {
  SHARDFLOW_REQUIRE_INPUT(axis >= 0, "gate_up: axis ", axis, " is negative");
  return WeightSharding(Kind::GateUp, axis, 0, 0);
}
WeightSharding WeightSharding::expert_parallel() { return WeightSharding(Kind::ExpertParallel, 0, 0, 0); }
WeightSharding WeightSharding::tensor_parallel(ParamKind kind, int num_heads, int head_dim) {
  WeightSharding w(Kind::TensorParallel, 0, num_heads, head_dim, kind);
  w.resolve();  // validates the head numbers for head-aware kinds
  return w;
}

WeightSharding WeightSharding::resolve() const {
  if (kind_ != Kind::TensorParallel) return *this;
  switch (param_kind_) {
    case ParamKind::StackedQkv:
      return stacked_qkv(heads_, head_dim_);
    case ParamKind::AttentionOut:
      return head_aware_columnwise(heads_, head_dim_);
    case ParamKind::Query:
      return head_aware_rowwise(heads_, head_dim_);
    case ParamKind::KeyValue:
      return grouped_kv(head_dim_);
    case ParamKind::GateUp:
      return gate_up(0);
    case ParamKind::Down:
      return columnwise();
    case ParamKind::Embedding:
    case ParamKind::LmHead:
      return rowwise();
    case ParamKind::PosEmbedding:
    case ParamKind::NormGain:
    case ParamKind::Router:
      return replicate();
    case ParamKind::ExpertGateUp:
      return gate_up(1);
    case ParamKind::ExpertDown:
      return axiswise(2);
  }
  throw Error("WeightSharding::resolve: invalid ParamKind");
}

std::string WeightSharding::to_string() const {
  switch (kind_) {
    case Kind::Replicate:
      return "replicate";
    case Kind::Rowwise:
      return "rowwise";
    case Kind::Columnwise:
      return "columnwise";
    case Kind::Axiswise:
      return "axiswise(axis=" + std::to_string(axis_) + ")";
    case Kind::StackedQkv:
      return "stacked_qkv(num_heads=" + std::to_string(heads_) + ", head_dim=" + std::to_string(head_dim_) + ")";
    case Kind::HeadAwareColumnwise:
      return "head_aware_columnwise(num_heads=" + std::to_string(heads_) + ", head_dim=" + std::to_string(head_dim_) +
             ")";
    case Kind::HeadAwareRowwise:
      return "head_aware_rowwise(num_heads=" + std::to_string(heads_) + ", head_dim=" + std::to_string(head_dim_) +
             ")";
    case Kind::GroupedKv:
      return "grouped_kv(head_dim=" + std::to_string(head_dim_) + ")";
    case Kind::GateUp:
      return "gate_up(axis=" + std::to_string(axis_) + ")";
    case Kind::ExpertParallel:
      return "expert_parallel";
    case Kind::TensorParallel:
      return "tensor_parallel(" + param_kind_name(param_kind_) + ") = " + resolve().to_string();
  }
  throw Error("WeightSharding::to_string: invalid kind");
}

namespace {

struct ViewPlan {
  Shape view_shape;
  int split_dim = -1;
  std::vector<int> weight_dim_of;
};

ViewPlan identity_view(const Shape& w, int split_dim) {
  ViewPlan p{w, split_dim, {}};
  for (size_t d = 0; d < w.size(); ++d) p.weight_dim_of.push_back(static_cast<int>(d));
  return p;
}

ViewPlan make_view(const WeightSharding& s, const Shape& w) {
  const std::string name = s.to_string();
  const int nd = static_cast<int>(w.size());
  auto need_rank = [&](int min_rank) {
    SHARDFLOW_REQUIRE_INPUT(nd >= min_rank, name, " needs a weight of rank >= ", min_rank, " but got shape ",
                            shape_to_string(w));
  };
  switch (s.kind()) {
    case WeightSharding::Kind::Replicate:
      return identity_view(w, -1);
    case WeightSharding::Kind::Rowwise:
    case WeightSharding::Kind::ExpertParallel:
      need_rank(1);
      return identity_view(w, 0);
    case WeightSharding::Kind::Columnwise:
      need_rank(2);
      return identity_view(w, 1);
    case WeightSharding::Kind::Axiswise:
      SHARDFLOW_REQUIRE_INPUT(s.axis() < nd, name, ": axis ", s.axis(), " is out of range for weight ",
                              shape_to_string(w));
      return identity_view(w, s.axis());
    case WeightSharding::Kind::StackedQkv: {
      const int64_t a = s.num_heads(), hd = s.head_dim();
      SHARDFLOW_REQUIRE_INPUT(nd == 2 && w[0] == 3 * a * hd, name, " needs a weight of shape [3 * ", a, " * ", hd,
                              " = ", 3 * a * hd, ", K] but got ", shape_to_string(w));
      return ViewPlan{{3, a, hd, w[1]}, 1, {0, 0, 0, 1}};
    }
    case WeightSharding::Kind::HeadAwareColumnwise: {
      const int64_t a = s.num_heads(), hd = s.head_dim();
      SHARDFLOW_REQUIRE_INPUT(nd == 2 && w[1] == a * hd, name, " needs a weight of shape [R, ", a, " * ", hd, " = ",
                              a * hd, "] but got ", shape_to_string(w));
      return ViewPlan{{w[0], a, hd}, 1, {0, 1, 1}};
    }
    case WeightSharding::Kind::HeadAwareRowwise: {
      const int64_t a = s.num_heads(), hd = s.head_dim();
      SHARDFLOW_REQUIRE_INPUT(nd == 2 && w[0] == a * hd, name, " needs a weight of shape [", a, " * ", hd, " = ",
                              a * hd, ", K] but got ", shape_to_string(w));
      return ViewPlan{{a, hd, w[1]}, 0, {0, 0, 1}};
    }
    case WeightSharding::Kind::GroupedKv: {
      const int64_t hd = s.head_dim();
      SHARDFLOW_REQUIRE_INPUT(nd == 2 && w[0] > 0 && w[0] % (2 * hd) == 0, name,
                              " needs a weight of shape [2 * kv_heads * ", hd, ", K] but got ", shape_to_string(w));
      return ViewPlan{{2, w[0] / (2 * hd), hd, w[1]}, 1, {0, 0, 0, 1}};
    }
    case WeightSharding::Kind::GateUp: {
      const int ax = s.axis();
      SHARDFLOW_REQUIRE_INPUT(ax < nd, name, ": axis ", ax, " is out of range for weight ", shape_to_string(w));
      SHARDFLOW_REQUIRE_INPUT(w[static_cast<size_t>(ax)] % 2 == 0, name, " needs an even extent on axis ", ax,
                              " (gate and up halves) but weight ", shape_to_string(w), " has ",
                              w[static_cast<size_t>(ax)]);
      ViewPlan p;
      for (int d = 0; d < nd; ++d) {
        if (d == ax) {
          p.view_shape.push_back(2);
          p.weight_dim_of.push_back(d);
          p.view_shape.push_back(w[static_cast<size_t>(d)] / 2);
        } else {
          p.view_shape.push_back(w[static_cast<size_t>(d)]);
        }
        p.weight_dim_of.push_back(d);
      }
      p.split_dim = ax + 1;
      return p;
    }
    case WeightSharding::Kind::TensorParallel:
      return make_view(s.resolve(), w);
  }
  throw Error("WeightSharding: invalid kind");
}

}  // namespace

void WeightSharding::validate(const Shape& weight_shape, int num_devices) const {
  SHARDFLOW_REQUIRE_INPUT(num_devices >= 1, to_string(), ": number of devices ", num_devices, " must be >= 1");
  ViewPlan p = make_view(*this, weight_shape);
  if (p.split_dim < 0) return;
  const WeightSharding r = resolve();
  const int64_t extent = p.view_shape[static_cast<size_t>(p.split_dim)];
  if (r.is_grouped_kv()) {
    SHARDFLOW_REQUIRE_INPUT(num_devices <= extent, to_string(), ": ", num_devices, " devices but only ", extent,
                            " key/value heads in weight ", shape_to_string(weight_shape));
  } else if (r.is_stacked_qkv() || r.is_head_aware_columnwise() || r.is_head_aware_rowwise()) {
    SHARDFLOW_REQUIRE_INPUT(num_devices <= r.num_heads(), to_string(), ": ", num_devices, " devices but only ",
                            r.num_heads(), " heads (each device needs at least one head)");
  } else if (r.is_expert_parallel()) {
    SHARDFLOW_REQUIRE_INPUT(num_devices <= extent, to_string(), ": ", num_devices, " devices but only ", extent,
                            " experts in weight ", shape_to_string(weight_shape));
  }
}

WeightView WeightSharding::view(const Shape& weight_shape, const std::string& mesh_axis) const {
  ViewPlan p = make_view(*this, weight_shape);
  WeightView v;
  v.view_shape = p.view_shape;
  v.split_dim = p.split_dim;
  v.weight_dim_of = p.weight_dim_of;
  v.spec = PartitionSpec::replicated(p.view_shape.size());
  if (p.split_dim >= 0) v.spec[static_cast<size_t>(p.split_dim)] = {mesh_axis};
  return v;
}

Layout WeightSharding::layout(const Shape& weight_shape, const MeshShape& mesh, const std::string& mesh_axis) const {
  validate(weight_shape, mesh.axis_size(mesh_axis));
  WeightView v = view(weight_shape, mesh_axis);
  return Layout(v.view_shape, v.spec, mesh);
}

Box WeightSharding::view_box(const Shape& weight_shape, int device, int num_devices) const {
  validate(weight_shape, num_devices);
  SHARDFLOW_REQUIRE_INPUT(device >= 0 && device < num_devices, to_string(), ": device ", device, " out of range [0, ",
                          num_devices, ")");
  ViewPlan p = make_view(*this, weight_shape);
  Box b{Shape(p.view_shape.size(), 0), p.view_shape};
  if (p.split_dim >= 0) {
    const auto d = static_cast<size_t>(p.split_dim);
    b.offset[d] = split_offset(p.view_shape[d], num_devices, device);
    b.extent[d] = split_extent(p.view_shape[d], num_devices, device);
  }
  return b;
}

Shape WeightSharding::shard_shape(const Shape& weight_shape, int device, int num_devices) const {
  Box b = view_box(weight_shape, device, num_devices);
  ViewPlan p = make_view(*this, weight_shape);
  Shape out(weight_shape.size(), 1);
  for (size_t v = 0; v < p.view_shape.size(); ++v) out[static_cast<size_t>(p.weight_dim_of[v])] *= b.extent[v];
  return out;
}

}  // namespace shardflow
