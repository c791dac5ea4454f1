// Tensor parallelism from the kernels (MPI, np 1, 2, 4): every rank holds a vocabulary
// slice of embed/lm_head, a head range of the attention (head-aware qkv rows, matching out
// columns) and a feature range of the MLP (gate/up rows, down columns), with uneven splits;
// MPI all-reduces join the partial sums. The loss and every gradient shard must equal the
// one-rank reference model (GptModel, one layer, f64).
#include <gtest/gtest.h>
#include <mpi.h>

#include <vector>

#include "layout/layout.hpp"
#include "nn/gpt.hpp"
#include "nn/init.hpp"
#include "nn/kernels.hpp"
#include "nn/nn_test_util.hpp"
#include "support/test_util.hpp"

namespace {
using namespace shardflow::test::nn;
using namespace shardflow::nn;
using HTen3 = Kokkos::View<double***, Kokkos::LayoutRight, Kokkos::HostSpace>;

void allreduce(HMat m, MPI_Op op = MPI_SUM) {
  MPI_Allreduce(MPI_IN_PLACE, m.data(), static_cast<int>(m.span()), MPI_DOUBLE, op, MPI_COMM_WORLD);
}
void allreduce(HVec v, MPI_Op op = MPI_SUM) {
  MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.span()), MPI_DOUBLE, op, MPI_COMM_WORLD);
}
HMat view(const GptModel<double>& m, const std::string& name, bool grad = false) {
  const auto& p = m.info(name);
  double* d = (grad ? m.grad(name) : m.param(name)).data();
  return HMat(d, p.shape[0], p.shape.size() == 2 ? p.shape[1] : 1);
}
HMat copy(const HMat& m) {
  HMat o("copy", m.extent(0), m.extent(1));
  Kokkos::deep_copy(o, m);
  return o;
}
/// Rows [r0, r1) of each of `blocks` equal row blocks of m, stacked.
HMat block_rows(const HMat& m, int blocks, int64_t r0, int64_t r1) {
  const int64_t per = static_cast<int64_t>(m.extent(0)) / blocks;
  HMat o("block_rows", blocks * (r1 - r0), m.extent(1));
  for (int b = 0; b < blocks; ++b)
    for (int64_t r = r0; r < r1; ++r)
      for (size_t c = 0; c < m.extent(1); ++c) o(b * (r1 - r0) + (r - r0), c) = m(b * per + r, c);
  return o;
}

TEST(NnTensorParallel, ShardedLayerHeadAndEmbeddingEqualOneRank) {
  const int rank = shardflow::test::world_rank(), P = shardflow::test::world_size();
  GptConfig c;
  c.vocab = 13;
  c.seq = 5;
  c.hidden = 12;
  c.heads = 6;  // D = 2; over 4 ranks: 2, 2, 1, 1 heads
  c.ffn = 10;   // over 4 ranks: 3, 3, 2, 2 features
  c.layers = 1;
  const int64_t B = 2, T = B * c.seq, H = c.hidden, D = c.head_dim(), F = c.ffn, V = c.vocab, S = c.seq;
  GptModel<double> ref(c, B);
  for (const auto& p : ref.parameters()) Init<double>::fill(ref.param(p.name), 77, p.name + "#tp", p.shape, 0.5);
  for (const char* g : {"layers.0.attn_norm.weight", "layers.0.mlp_norm.weight", "final_norm.weight"})
    for (int64_t j = 0; j < H; ++j) ref.param(g)(j) = 1.0 + 0.3 * init_value(5, g, j, 1.0);
  std::mt19937_64 rng(99);
  HTok in = rand_tokens(T, static_cast<int32_t>(V), rng), tg = rand_tokens(T, static_cast<int32_t>(V), rng);
  const double ref_loss = ref.forward_backward(in, tg);

  // this rank's slices (the project's uneven rule)
  const int64_t v0 = shardflow::split_offset(V, P, rank), vl = shardflow::split_extent(V, P, rank);
  const int64_t a0 = shardflow::split_offset(c.heads, P, rank), al = shardflow::split_extent(c.heads, P, rank);
  const int64_t f0 = shardflow::split_offset(F, P, rank), fl = shardflow::split_extent(F, P, rank);
  HMat emb = rows(view(ref, "embed.weight"), v0, v0 + vl), lm = rows(view(ref, "lm_head.weight"), v0, v0 + vl);
  HMat pos = copy(view(ref, "pos_embed.weight"));
  HMat wqkv = block_rows(view(ref, "layers.0.attn.qkv.weight"), 3, a0 * D, (a0 + al) * D);
  HMat wout = cols(view(ref, "layers.0.attn.out.weight"), a0 * D, (a0 + al) * D);
  HMat wgu = block_rows(view(ref, "layers.0.mlp.gate_up.weight"), 2, f0, f0 + fl);
  HMat wdown = cols(view(ref, "layers.0.mlp.down.weight"), f0, f0 + fl);
  HVec g1(ref.param("layers.0.attn_norm.weight").data(), H), g2(ref.param("layers.0.mlp_norm.weight").data(), H),
      gf(ref.param("final_norm.weight").data(), H);
  using Lin = Linear<double>;
  using Norm = RmsNorm<double>;

  // ---- forward ----
  HMat x("x", T, H);
  Embedding<double>::forward(in, emb, v0, x);
  allreduce(x);  // vocabulary-parallel embedding: partial rows add up
  PositionEmbedding<double>::forward(pos, x);
  HMat n1("n1", T, H), qkv("qkv", T, 3 * al * D), att("att", T, al * D), xmid("xmid", T, H);
  HVec r1("r1", T), r2("r2", T), rf("rf", T);
  HTen3 probs("probs", B * al, S, S);
  Norm::forward(x, g1, n1, r1);
  Lin::forward(n1, wqkv, qkv);  // column-parallel, head-aware
  Attention<double>::forward(qkv, al, probs, att);
  Lin::forward(att, wout, xmid);  // row-parallel: partial sum
  allreduce(xmid);
  Residual<double>::add(xmid, x);
  HMat n2("n2", T, H), gu("gu", T, 2 * fl), h("h", T, fl), y("y", T, H);
  Norm::forward(xmid, g2, n2, r2);
  Lin::forward(n2, wgu, gu);
  SwiGlu<double>::forward(gu, h);
  Lin::forward(h, wdown, y);
  allreduce(y);
  Residual<double>::add(y, xmid);
  HMat nf("nf", T, H), logits("logits", T, vl), stats("stats", T, 2);
  HVec rmax("rmax", T);
  Norm::forward(y, gf, nf, rf);
  Lin::forward(nf, lm, logits);  // vocabulary-parallel head
  CrossEntropy<double>::local_max(logits, rmax);
  allreduce(rmax, MPI_MAX);
  CrossEntropy<double>::local_sumexp_target(logits, rmax, tg, v0, stats);
  allreduce(stats);
  const double loss = CrossEntropy<double>::loss_and_grad(logits, rmax, stats, tg, v0, 1.0 / T, logits) / T;
  EXPECT_NEAR(loss, ref_loss, 1e-13);

  // ---- backward ----
  HMat dlm("dlm", vl, H), dnf("dnf", T, H), dy("dy", T, H);
  HVec dgf("dgf", H), dg1("dg1", H), dg2("dg2", H);
  Lin::backward_weight(logits, nf, dlm);
  Lin::backward_input(logits, lm, dnf);
  allreduce(dnf);
  Norm::backward(dnf, y, gf, rf, dy, dgf);
  HMat dh("dh", T, fl), dgu("dgu", T, 2 * fl), dwdown("dwdown", H, fl), dwgu("dwgu", 2 * fl, H), dn("dn", T, H);
  Lin::backward_weight(dy, h, dwdown);
  Lin::backward_input(dy, wdown, dh);
  SwiGlu<double>::backward(dh, gu, dgu);
  Lin::backward_weight(dgu, n2, dwgu);
  Lin::backward_input(dgu, wgu, dn);
  allreduce(dn);  // column-parallel input gradient: partial sums
  Norm::backward(dn, xmid, g2, r2, dy, dg2, /*accumulate_dx=*/true);  // dy is now d(xmid)
  HMat datt("datt", T, al * D), dwout("dwout", H, al * D), dqkv("dqkv", T, 3 * al * D), dwqkv("dwqkv", 3 * al * D, H);
  HMat dprobs("dprobs", S, S);
  Lin::backward_weight(dy, att, dwout);
  Lin::backward_input(dy, wout, datt);
  Attention<double>::backward(datt, qkv, probs, al, dprobs, dqkv);
  Lin::backward_weight(dqkv, n1, dwqkv);
  Lin::backward_input(dqkv, wqkv, dn);
  allreduce(dn);
  Norm::backward(dn, x, g1, r1, dy, dg1, true);  // dy is now d(x)
  HMat demb("demb", vl, H), dpos("dpos", S, H);
  Embedding<double>::Scratch scratch(vl, T);
  Embedding<double>::backward(in, dy, v0, demb, scratch);
  PositionEmbedding<double>::backward(dy, dpos);

  const double tol = 1e-13;
  EXPECT_LT(max_abs_diff(demb, rows(view(ref, "embed.weight", true), v0, v0 + vl)), tol);
  EXPECT_LT(max_abs_diff(dpos, view(ref, "pos_embed.weight", true)), tol);
  EXPECT_LT(max_abs_diff(dlm, rows(view(ref, "lm_head.weight", true), v0, v0 + vl)), tol);
  EXPECT_LT(max_abs_diff(dwqkv, block_rows(view(ref, "layers.0.attn.qkv.weight", true), 3, a0 * D, (a0 + al) * D)),
            tol);
  EXPECT_LT(max_abs_diff(dwout, cols(view(ref, "layers.0.attn.out.weight", true), a0 * D, (a0 + al) * D)), tol);
  EXPECT_LT(max_abs_diff(dwgu, block_rows(view(ref, "layers.0.mlp.gate_up.weight", true), 2, f0, f0 + fl)), tol);
  EXPECT_LT(max_abs_diff(dwdown, cols(view(ref, "layers.0.mlp.down.weight", true), f0, f0 + fl)), tol);
  EXPECT_LT(max_abs_diff(dg1, HVec(ref.grad("layers.0.attn_norm.weight").data(), H)), tol);
  EXPECT_LT(max_abs_diff(dg2, HVec(ref.grad("layers.0.mlp_norm.weight").data(), H)), tol);
  EXPECT_LT(max_abs_diff(dgf, HVec(ref.grad("final_norm.weight").data(), H)), tol);
}

}  // namespace
