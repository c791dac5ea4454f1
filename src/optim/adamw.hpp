#pragma once
// AdamW exactly as MODEL.md, elementwise on any shard of a tensor (flat view).
//
// For optimizer step t = 1, 2, ... (t counts updates, starting at 1):
//   lr_t     = lr · min(1, t / warmup)            (warmup = 0: lr_t = lr)
//   ‖g‖²     = Σ over the whole unsharded model of g² (each element counted once; the
//              caller adds the local sum_of_squares of the shards it owns uniquely and
//              all-reduces)
//   c        = min(1, clip_norm / (‖g‖ + 1e-6))   (clip_scale; PyTorch's clip_grad_norm_)
//   g̃        = c · g
//   p        ← p − lr_t · λ · p                   (λ = 0.1 on decayed tensors, else 0)
//   m        ← β1 · m + (1 − β1) · g̃
//   v        ← β2 · v + (1 − β2) · g̃²
//   p        ← p − lr_t · (m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + ε)
// with β1 = 0.9, β2 = 0.95, ε = 1e-8 (torch.optim.AdamW's update with those settings).
// Weight decay applies to 2-D tensors other than embed.weight and pos_embed.weight.
#include <cstdint>
#include <string>

#include "nn/types.hpp"

namespace shardflow::optim {

struct AdamWConfig {
  double lr = 1e-3;
  int64_t warmup = 0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip_norm = 1.0;
  /// Throws InputError naming the field and value when a setting is out of range.
  void validate() const;
};

/// lr_t for step t >= 1 (throws Error for t < 1).
double learning_rate(const AdamWConfig& cfg, int64_t step);
/// True for 2-D tensors other than embed.weight and pos_embed.weight.
bool uses_weight_decay(const std::string& name, size_t ndim);
/// min(1, max_norm / (sqrt(global_sq_norm) + 1e-6)).
double clip_scale(double global_sq_norm, double max_norm);

/// The per-step scalars of the update, computed once on the host.
struct AdamWStep {
  int64_t step = 0;
  double lr = 0;          // lr_t
  double grad_scale = 1;  // clip scale c
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  double bias1 = 1, bias2 = 1;  // 1 − β1ᵗ, 1 − β2ᵗ
};
/// The scalars of step t given the global squared gradient norm.
AdamWStep make_step(const AdamWConfig& cfg, int64_t step, double global_sq_norm);

template <class Scalar, class Exec = Kokkos::DefaultExecutionSpace>
struct AdamW {
  using V = nn::ViewTypes<Scalar, Exec>;
  /// Σ g² (accumulated in double, fixed order).
  static double sum_of_squares(typename V::CVec g);
  /// One update of a shard: p, m, v updated in place from g; all four of equal length. The
  /// arithmetic is elementwise in Scalar (IEEE, no contraction), the step scalars rounded once
  /// from double, so any split of a tensor into shards updates bitwise like the whole.
  static void update(typename V::Vec p, typename V::CVec g, typename V::Vec m, typename V::Vec v,
                     const AdamWStep& s, bool weight_decay);
};

extern template struct AdamW<float>;
extern template struct AdamW<double>;

}  // namespace shardflow::optim
