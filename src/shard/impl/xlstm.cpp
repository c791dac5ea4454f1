#include "shard/xlstm.hpp"

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <numeric>

#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "core/half.hpp"
#include "kernels/pack.hpp"

namespace shardflow::shard {

namespace {

using Exec = Kokkos::DefaultHostExecutionSpace;
template <class T>
using CView = Kokkos::View<const T*, Exec::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
template <class T>
using MView = Kokkos::View<T*, Exec::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

/// Calls f(T{}) with the C++ type of a floating dtype.
template <class F>
void with_float_type(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::F32:
      f(float{});
      return;
    case DType::F64:
      f(double{});
      return;
    case DType::BF16:
      f(bf16{});
      return;
    case DType::F16:
      f(f16{});
      return;
    default:
      break;
  }
  throw InputError(std::string(what) + ": dtype " + dtype_name(t) + " is not a floating dtype (f32, f64, bf16, f16)");
}

template <class S, class D>
void cast(const Exec& exec, const S* src, D* dst, std::size_t n) {
  Kokkos::parallel_for(
      "shardflow::shard::cast", Kokkos::RangePolicy<Exec>(exec, 0, n),
      KOKKOS_LAMBDA(std::size_t i) { dst[i] = Convert<S, D>::apply(src[i]); });
  exec.fence();
}

/// Box of block i (of n) along `axis` of `full`.
Box block_box(const Shape& local, int axis, int i) {
  Box b{Shape(local.size(), 0), local};
  b.offset[static_cast<std::size_t>(axis)] = static_cast<std::int64_t>(i) * local[static_cast<std::size_t>(axis)];
  return b;
}

void require_mpi(const comm::Communicator& c, const char* what) {
  SHARDFLOW_REQUIRE_INPUT(c.backend() == comm::Backend::Mpi, what, ": communicator '", c.name(), "' has backend ",
                          comm::backend_name(c.backend()), " but the parameter container lives in host memory (mpi)");
}

}  // namespace

// ---- container ---------------------------------------------------------------------------
ShardedParam replicated_param(std::string name, Shape shape, const MeshShape& mesh, std::vector<float> data) {
  SHARDFLOW_REQUIRE_INPUT(static_cast<std::int64_t>(data.size()) == numel(shape), "parameter '", name,
                          "': ", data.size(), " values for shape ", shape_to_string(shape));
  Layout l = Layout::replicated(shape, mesh);
  return ShardedParam{std::move(name), std::move(l), std::move(data)};
}

// ---- shard_params ------------------------------------------------------------------------
int shard_dim(const Layout& layout, const std::string& axis_name, std::int64_t min_weight_size) {
  const MeshShape& mesh = layout.mesh();
  SHARDFLOW_REQUIRE_INPUT(mesh.has_axis(axis_name), "shard_params: the mesh ", mesh.to_string(), " has no axis '",
                          axis_name, "'");
  if (layout.spec().uses_axis(axis_name) || layout.pinned().count(axis_name)) return -1;  // already on the axis
  // Per-shard size (shard 0 is the largest under the uneven rule; the same on every rank).
  const auto owners = layout.shard_owners();
  const std::int64_t shard_size = owners.empty() ? 0 : layout.local_numel(owners.front());
  if (shard_size <= min_weight_size) return -1;
  const Shape& shape = layout.global_shape();
  std::vector<int> order(shape.size());
  std::iota(order.begin(), order.end(), 0);
  // Largest first; among equal extents the later dimension first (numpy argsort()[::-1]).
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    const auto ea = shape[static_cast<std::size_t>(a)], eb = shape[static_cast<std::size_t>(b)];
    return ea != eb ? ea > eb : a > b;
  });
  const int n = mesh.axis_size(axis_name);
  for (int d : order)
    if (layout.spec()[static_cast<std::size_t>(d)].empty() && shape[static_cast<std::size_t>(d)] % n == 0) return d;
  return -1;
}

ParamList shard_params(const ParamList& params, int rank, const std::string& axis_name, std::int64_t min_weight_size) {
  Exec exec;
  ParamList out;
  out.reserve(params.size());
  for (const auto& p : params) {
    const int d = shard_dim(p.layout, axis_name, min_weight_size);
    if (d < 0) {
      out.push_back(p);
      continue;
    }
    PartitionSpec spec = p.layout.spec();
    spec[static_cast<std::size_t>(d)] = {axis_name};
    Layout l(p.layout.global_shape(), spec, p.layout.mesh(), p.layout.pinned());
    const Box old_box = p.layout.box(rank), new_box = l.box(rank);
    SHARDFLOW_REQUIRE_INPUT(static_cast<std::int64_t>(p.data.size()) == old_box.numel(), "shard_params: parameter '",
                            p.name, "' holds ", p.data.size(), " values but its box ", old_box.to_string(), " has ",
                            old_box.numel());
    Box rel = new_box;
    for (std::size_t k = 0; k < rel.ndim(); ++k) rel.offset[k] -= old_box.offset[k];
    std::vector<float> data(static_cast<std::size_t>(new_box.numel()));
    if (!data.empty())
      kernels::pack_box<Exec, float>(exec, CView<float>(p.data.data(), p.data.size()), old_box.extent, rel,
                                     MView<float>(data.data(), data.size()));
    exec.fence();
    out.push_back(ShardedParam{p.name, std::move(l), std::move(data)});
  }
  return out;
}

// ---- gather_array_with_mean_grads --------------------------------------------------------
struct GatherWithMeanGrads::Impl {
  Exec exec;
  int n = 1;
  int axis = 0;
  bool leading = false;  // blocks along the axis are contiguous: no pack/unpack needed
  DType gather_dtype, scatter_dtype;
  std::size_t local_numel = 0, full_numel = 0;
  // byte buffers (operator new alignment suffices for every dtype), allocated once
  std::vector<unsigned char> g_send, g_recv, g_full, s_full, s_send, s_recv;
  std::unique_ptr<comm::Collective> gather, scatter;
};

GatherWithMeanGrads::GatherWithMeanGrads(comm::Communicator& axis_comm, Shape local_shape, int axis, DType gather_dtype,
                                         DType grad_scatter_dtype)
    : local_(std::move(local_shape)), impl_(std::make_unique<Impl>()) {
  require_mpi(axis_comm, "gather_array_with_mean_grads");
  SHARDFLOW_REQUIRE_INPUT(axis >= 0 && axis < static_cast<int>(local_.size()), "gather_array_with_mean_grads: axis ",
                          axis, " is out of range for shape ", shape_to_string(local_));
  with_float_type(gather_dtype, "gather_array_with_mean_grads gather_dtype", [](auto) {});
  with_float_type(grad_scatter_dtype, "gather_array_with_mean_grads grad_scatter_dtype", [](auto) {});
  Impl& m = *impl_;
  m.n = axis_comm.size();
  m.axis = axis;
  m.gather_dtype = gather_dtype;
  m.scatter_dtype = grad_scatter_dtype;
  full_ = local_;
  full_[static_cast<std::size_t>(axis)] *= m.n;
  m.local_numel = static_cast<std::size_t>(numel(local_));
  m.full_numel = static_cast<std::size_t>(numel(full_));
  std::int64_t outer = 1;
  for (int k = 0; k < axis; ++k) outer *= local_[static_cast<std::size_t>(k)];
  m.leading = outer == 1;
  const std::size_t gs = dtype_size(gather_dtype), ss = dtype_size(grad_scatter_dtype);
  m.g_send.resize(m.local_numel * gs);
  m.g_recv.resize(m.full_numel * gs);
  if (!m.leading) m.g_full.resize(m.full_numel * gs);
  m.s_full.resize(m.full_numel * ss);
  if (!m.leading) m.s_send.resize(m.full_numel * ss);
  m.s_recv.resize(m.local_numel * ss);
  m.gather = std::make_unique<comm::Collective>(
      axis_comm, comm::CollectivePlan::all_gather(gather_dtype, m.local_numel), m.g_send.data(), m.g_recv.data());
  const void* scatter_in = m.leading ? m.s_full.data() : m.s_send.data();
  m.scatter = std::make_unique<comm::Collective>(
      axis_comm, comm::CollectivePlan::reduce_scatter(grad_scatter_dtype, m.local_numel, comm::ReduceOp::Mean),
      scatter_in, m.s_recv.data());
}

GatherWithMeanGrads::~GatherWithMeanGrads() = default;

void GatherWithMeanGrads::forward(const float* x_local, float* x_full) {
  Impl& m = *impl_;
  with_float_type(m.gather_dtype, "gather", [&](auto tag) {
    using T = decltype(tag);
    auto* send = reinterpret_cast<T*>(m.g_send.data());
    auto* recv = reinterpret_cast<T*>(m.g_recv.data());
    cast(m.exec, x_local, send, m.local_numel);
    m.gather->start().wait();
    const T* full = recv;
    if (!m.leading && m.local_numel > 0) {
      auto* stage = reinterpret_cast<T*>(m.g_full.data());
      for (int i = 0; i < m.n; ++i)
        kernels::unpack_box<Exec, T>(m.exec, CView<T>(recv, m.full_numel), static_cast<std::size_t>(i) * m.local_numel,
                                     MView<T>(stage, m.full_numel), full_, block_box(local_, m.axis, i));
      m.exec.fence();
      full = stage;
    }
    cast(m.exec, full, x_full, m.full_numel);
  });
}

void GatherWithMeanGrads::backward(const float* g_full, float* g_local) {
  Impl& m = *impl_;
  with_float_type(m.scatter_dtype, "scatter", [&](auto tag) {
    using T = decltype(tag);
    auto* full = reinterpret_cast<T*>(m.s_full.data());
    cast(m.exec, g_full, full, m.full_numel);
    if (!m.leading && m.local_numel > 0) {
      auto* send = reinterpret_cast<T*>(m.s_send.data());
      for (int i = 0; i < m.n; ++i)
        kernels::pack_box<Exec, T>(m.exec, CView<T>(full, m.full_numel), full_, block_box(local_, m.axis, i),
                                   MView<T>(send, m.full_numel), static_cast<std::size_t>(i) * m.local_numel);
      m.exec.fence();
    }
    m.scatter->start().wait();
    cast(m.exec, reinterpret_cast<const T*>(m.s_recv.data()), g_local, m.local_numel);
  });
}

std::vector<float> gather_array_forward(comm::Communicator& axis_comm, const std::vector<float>& x,
                                        const Shape& local_shape, int axis, DType gather_dtype) {
  SHARDFLOW_REQUIRE_INPUT(static_cast<std::int64_t>(x.size()) == numel(local_shape),
                          "gather_array_with_mean_grads: ", x.size(), " values for shape ",
                          shape_to_string(local_shape));
  GatherWithMeanGrads op(axis_comm, local_shape, axis, gather_dtype, DType::F32);
  std::vector<float> out(static_cast<std::size_t>(numel(op.full_shape())));
  op.forward(x.data(), out.data());
  return out;
}

std::vector<float> gather_array_backward(comm::Communicator& axis_comm, const std::vector<float>& g_full,
                                         const Shape& local_shape, int axis, DType grad_scatter_dtype) {
  GatherWithMeanGrads op(axis_comm, local_shape, axis, DType::F32, grad_scatter_dtype);
  SHARDFLOW_REQUIRE_INPUT(static_cast<std::int64_t>(g_full.size()) == numel(op.full_shape()),
                          "gather_array_with_mean_grads backward: ", g_full.size(), " gradient values for shape ",
                          shape_to_string(op.full_shape()));
  std::vector<float> out(static_cast<std::size_t>(numel(local_shape)));
  op.backward(g_full.data(), out.data());
  return out;
}

// ---- gather_params -----------------------------------------------------------------------
GatheredParams::GatheredParams(const ParamList& sharded, const comm::CommSet& comms, const std::string& axis_name,
                               DType gather_dtype, DType grad_scatter_dtype) {
  comm::Communicator& c = comms.axis(axis_name);
  const int rank = comms.mesh().rank();
  for (const auto& p : sharded) {
    ShardedParam meta{p.name, p.layout, {}};
    const int d = p.layout.spec().dim_of_axis(axis_name);
    if (d < 0) {
      sharded_meta_.push_back(std::move(meta));
      gathered_.push_back(p);
      ops_.push_back(nullptr);
      continue;
    }
    const auto ud = static_cast<std::size_t>(d);
    SHARDFLOW_REQUIRE_INPUT(p.layout.spec()[ud].size() == 1, "gather_params: parameter '", p.name,
                            "' splits dimension ", d, " over several axes ", p.layout.spec().to_string(),
                            "; gathering '", axis_name, "' alone needs it to be the dimension's only axis");
    SHARDFLOW_REQUIRE_INPUT(p.layout.global_shape()[ud] % c.size() == 0, "gather_params: parameter '", p.name,
                            "' has extent ", p.layout.global_shape()[ud], " on dimension ", d,
                            ", not divisible by the size ", c.size(), " of axis '", axis_name, "'");
    PartitionSpec spec = p.layout.spec();
    spec[ud].clear();
    Layout full(p.layout.global_shape(), spec, p.layout.mesh(), p.layout.pinned());
    auto op = std::make_unique<GatherWithMeanGrads>(c, p.layout.local_shape(rank), d, gather_dtype, grad_scatter_dtype);
    gathered_.push_back(
        ShardedParam{p.name, full, std::vector<float>(static_cast<std::size_t>(full.local_numel(rank)))});
    sharded_meta_.push_back(std::move(meta));
    ops_.push_back(std::move(op));
  }
  refresh(sharded);
}

GatheredParams::GatheredParams(GatheredParams&&) noexcept = default;
GatheredParams& GatheredParams::operator=(GatheredParams&&) noexcept = default;
GatheredParams::~GatheredParams() = default;

void GatheredParams::refresh(const ParamList& sharded) {
  SHARDFLOW_REQUIRE_INPUT(sharded.size() == sharded_meta_.size(), "gather_params: ", sharded.size(),
                          " parameters given, ", sharded_meta_.size(), " expected");
  for (std::size_t i = 0; i < sharded.size(); ++i) {
    SHARDFLOW_REQUIRE_INPUT(sharded[i].name == sharded_meta_[i].name && sharded[i].layout == sharded_meta_[i].layout,
                            "gather_params: parameter ", i, " is '", sharded[i].name, "' ",
                            sharded[i].layout.to_string(), ", expected '", sharded_meta_[i].name, "' ",
                            sharded_meta_[i].layout.to_string());
    if (!ops_[i]) {
      gathered_[i].data = sharded[i].data;
      continue;
    }
    SHARDFLOW_REQUIRE_INPUT(static_cast<std::int64_t>(sharded[i].data.size()) == numel(ops_[i]->local_shape()),
                            "gather_params: parameter '", sharded[i].name, "' holds ", sharded[i].data.size(),
                            " values for a shard of shape ", shape_to_string(ops_[i]->local_shape()));
    ops_[i]->forward(sharded[i].data.data(), gathered_[i].data.data());
  }
}

ParamList GatheredParams::backward(const ParamList& grads) const {
  SHARDFLOW_REQUIRE_INPUT(grads.size() == gathered_.size(), "gather_params backward: ", grads.size(),
                          " gradients given for ", gathered_.size(), " parameters");
  ParamList out;
  out.reserve(grads.size());
  for (std::size_t i = 0; i < grads.size(); ++i) {
    const auto& g = grads[i];
    SHARDFLOW_REQUIRE_INPUT(g.data.size() == gathered_[i].data.size(), "gather_params backward: gradient '", g.name,
                            "' holds ", g.data.size(), " values, its parameter '", gathered_[i].name, "' ",
                            gathered_[i].data.size());
    if (!ops_[i]) {
      out.push_back(ShardedParam{sharded_meta_[i].name, sharded_meta_[i].layout, g.data});
      continue;
    }
    std::vector<float> local(static_cast<std::size_t>(numel(ops_[i]->local_shape())));
    ops_[i]->backward(g.data.data(), local.data());
    out.push_back(ShardedParam{sharded_meta_[i].name, sharded_meta_[i].layout, std::move(local)});
  }
  return out;
}

GatheredParams gather_params(const ParamList& sharded, const comm::CommSet& comms, const std::string& axis_name,
                             DType gather_dtype, DType grad_scatter_dtype) {
  return GatheredParams(sharded, comms, axis_name, gather_dtype, grad_scatter_dtype);
}

// ---- shard_module_params -----------------------------------------------------------------
ShardedModuleParams::ShardedModuleParams(const ParamList& init, const comm::CommSet& comms,
                                         const std::string& axis_name, std::int64_t min_weight_size, DType gather_dtype,
                                         DType grad_scatter_dtype)
    : sharded_(shard_params(init, comms.mesh().rank(), axis_name, min_weight_size)),
      gathered_(sharded_, comms, axis_name, gather_dtype, grad_scatter_dtype) {}

const ParamList& ShardedModuleParams::gather() {
  gathered_.refresh(sharded_);
  return gathered_.params();
}

ShardedModuleParams shard_module_params(const ParamList& init, const comm::CommSet& comms, const std::string& axis_name,
                                        std::int64_t min_weight_size, DType gather_dtype, DType grad_scatter_dtype) {
  return ShardedModuleParams(init, comms, axis_name, min_weight_size, gather_dtype, grad_scatter_dtype);
}

// ---- sync_gradients ----------------------------------------------------------------------
void sync_gradients(ParamList& grads, const comm::CommSet& comms, const std::vector<std::string>& axis_names) {
  for (const auto& a : axis_names)
    SHARDFLOW_REQUIRE_INPUT(comms.mesh().shape().has_axis(a), "sync_gradients: the mesh ",
                            comms.mesh().shape().to_string(), " has no axis '", a, "'");
  for (auto& g : grads) {
    std::vector<std::string> replicated;
    for (const auto& a : axis_names)
      if (!g.layout.spec().uses_axis(a) && !g.layout.pinned().count(a)) replicated.push_back(a);
    if (replicated.empty()) continue;
    comm::Communicator& c = comms.group(replicated);
    require_mpi(c, "sync_gradients");
    if (c.size() == 1) continue;
    c.all_reduce(g.data.data(), g.data.data(), g.data.size(), DType::F32, comm::ReduceOp::Mean).wait();
  }
}

}  // namespace shardflow::shard
