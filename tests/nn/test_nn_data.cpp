// Mesh independence of the data loader and the initialiser (MPI, np 1, 2, 4): every rank
// computes its replica's slice / its shard's box on its own; gathered together they equal
// the global batch / the whole tensor. Also: Philox known-answer vectors, offsets in
// range, errors naming the corpus and sizes.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <set>

#include "core/error.hpp"
#include "data/loader.hpp"
#include "layout/layout.hpp"
#include "nn/init.hpp"
#include "nn/philox.hpp"
#include "support/test_util.hpp"

namespace {
using shardflow::data::Corpus;
using shardflow::data::DataLoader;
using FV = Kokkos::View<float*, Kokkos::HostSpace>;

TEST(NnPhilox, KnownAnswerVectors) {
  // Random123's kat_vectors for philox4x32-10.
  struct Kat {
    uint32_t ctr[4], key[2], out[4];
  } kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const auto& k : kats) {
    uint32_t out[4];
    shardflow::nn::Philox4x32::generate(k.ctr, k.key, out);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], k.out[i]) << "word " << i;
  }
}

Corpus test_corpus(int64_t n) {
  std::vector<uint8_t> b(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) b[static_cast<size_t>(i)] = static_cast<uint8_t>((i * 131 + i / 7) % 251);
  return Corpus(std::move(b), "synthetic");
}

TEST(NnData, OffsetsInRangeDeterministicAndSpread) {
  const int64_t len = 1000, S = 64, B = 4096;
  auto o1 = shardflow::data::batch_offsets(7, 3, B, S, len);
  auto o2 = shardflow::data::batch_offsets(7, 3, B, S, len);
  EXPECT_EQ(o1, o2);
  EXPECT_NE(o1, shardflow::data::batch_offsets(7, 4, B, S, len));
  EXPECT_NE(o1, shardflow::data::batch_offsets(8, 3, B, S, len));
  std::set<int64_t> seen(o1.begin(), o1.end());
  EXPECT_EQ(*seen.begin(), 0);                // every offset in [0, len − S − 1] is reachable
  EXPECT_EQ(*seen.rbegin(), len - S - 1);     // (4096 draws over 936 values)
  EXPECT_GT(seen.size(), size_t(900));
  // smallest legal corpus: S + 2 bytes gives offsets 0 and 1
  auto small = shardflow::data::batch_offsets(1, 1, 64, S, S + 2);
  for (auto o : small) EXPECT_TRUE(o == 0 || o == 1);
}

TEST(NnData, BatchTakesSPlusOneBytes) {
  DataLoader dl(test_corpus(5000), 11, 6, 32);
  auto b = dl.global_batch(2);
  ASSERT_EQ(b.count(), 6);
  ASSERT_EQ(b.inputs.size(), size_t(6 * 32));
  const auto& bytes = dl.corpus().bytes();
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t s = 0; s < 32; ++s) {
      EXPECT_EQ(b.inputs[static_cast<size_t>(i * 32 + s)], bytes[static_cast<size_t>(b.offsets[i] + s)]);
      EXPECT_EQ(b.targets[static_cast<size_t>(i * 32 + s)], bytes[static_cast<size_t>(b.offsets[i] + s + 1)]);
    }
}

TEST(NnData, ReplicaSlicesConcatenateToTheGlobalBatch) {
  DataLoader dl(test_corpus(3000), 5, 7, 16);
  for (int64_t step = 1; step <= 3; ++step) {
    auto g = dl.global_batch(step);
    for (int64_t r = 1; r <= 8; ++r) {
      std::vector<int32_t> in, tg;
      std::vector<int64_t> offs;
      for (int64_t i = 0; i < r; ++i) {
        auto s = dl.replica_batch(step, r, i);
        EXPECT_EQ(s.first, static_cast<int64_t>(offs.size()));
        EXPECT_EQ(s.count(), 7 / r + (i < 7 % r ? 1 : 0));  // uneven rule: the first B mod R get one more
        offs.insert(offs.end(), s.offsets.begin(), s.offsets.end());
        in.insert(in.end(), s.inputs.begin(), s.inputs.end());
        tg.insert(tg.end(), s.targets.begin(), s.targets.end());
      }
      EXPECT_EQ(offs, g.offsets);
      EXPECT_EQ(in, g.inputs);
      EXPECT_EQ(tg, g.targets);
    }
  }
}

TEST(NnData, RanksAsReplicasGatherTheGlobalBatch) {
  const int rank = shardflow::test::world_rank(), size = shardflow::test::world_size();
  DataLoader dl(test_corpus(4000), 99, 10, 8);
  auto mine = dl.replica_batch(4, size, rank);
  std::vector<int> counts(static_cast<size_t>(size)), displs(static_cast<size_t>(size));
  int n = static_cast<int>(mine.inputs.size());
  MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::partial_sum(counts.begin(), counts.end() - 1, displs.begin() + 1);
  std::vector<int32_t> all(static_cast<size_t>(displs.back() + counts.back()));
  MPI_Allgatherv(mine.inputs.data(), n, MPI_INT32_T, all.data(), counts.data(), displs.data(), MPI_INT32_T,
                 MPI_COMM_WORLD);
  EXPECT_EQ(all, dl.global_batch(4).inputs);
}

TEST(NnData, ErrorsNameTheFileAndSizes) {
  try {
    Corpus::load("/nonexistent/dir/corpus.bin");
    FAIL();
  } catch (const shardflow::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/corpus.bin"), std::string::npos) << e.what();
  }
  try {
    DataLoader dl(Corpus(std::vector<uint8_t>(9), "tiny.txt"), 1, 2, 8);
    FAIL();
  } catch (const shardflow::InputError& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("tiny.txt"), std::string::npos) << w;
    EXPECT_NE(w.find("9 bytes"), std::string::npos) << w;
    EXPECT_NE(w.find("10"), std::string::npos) << w;
  }
  EXPECT_NO_THROW(DataLoader(Corpus(std::vector<uint8_t>(10), "ok.txt"), 1, 2, 8));
  // a directory is named as one (it used to fail with "basic_filebuf::underflow ... Is a directory")
  try {
    Corpus::load("/tmp");
    FAIL();
  } catch (const shardflow::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'/tmp' is a directory"), std::string::npos) << e.what();
  }
}

TEST(NnData, ShippedCorpusLoads) {
  const Corpus c = Corpus::load(SHARDFLOW_CORPUS_PATH);
  EXPECT_GT(c.size(), 500000);
  EXPECT_LT(c.size(), 2100000);
  for (uint8_t b : c.bytes()) ASSERT_LT(b, 128) << "corpus should be plain ASCII text";
}

// ---- initialisation ------------------------------------------------------------------------
TEST(NnInit, StatisticsAndGains) {
  FV w("w", 256 * 128), w2("w2", 256 * 128), g("g", 128);
  shardflow::nn::Init<float>::fill(w, 3, "embed.weight", {256, 128});
  shardflow::nn::Init<float>::fill(w2, 3, "lm_head.weight", {256, 128});
  shardflow::nn::Init<float>::fill(g, 3, "layers.2.mlp_norm.weight", {128});
  double s = 0, ss = 0;
  int same = 0;
  for (size_t i = 0; i < w.extent(0); ++i) {
    s += w(i);
    ss += double(w(i)) * w(i);
    same += w(i) == w2(i);
  }
  const double n = static_cast<double>(w.extent(0)), mean = s / n, sd = std::sqrt(ss / n - mean * mean);
  EXPECT_LT(std::abs(mean), 4 * 0.02 / std::sqrt(n));
  EXPECT_NEAR(sd, 0.02, 0.02 * 0.02);
  EXPECT_LT(same, 3);  // different names, different streams
  for (size_t i = 0; i < g.extent(0); ++i) EXPECT_EQ(g(i), 1.0f);
  EXPECT_EQ(static_cast<float>(shardflow::nn::init_value(3, "embed.weight", 777)), w(777));
}

TEST(NnInit, EveryRanksShardEqualsTheWholeTensorsBox) {
  const int rank = shardflow::test::world_rank(), size = shardflow::test::world_size();
  const int64_t A = 5, D = 3, H = 7, F = 9;
  struct Case {
    std::string name;
    shardflow::Shape view;  // the layout's (possibly head-aware) view of the tensor
    std::vector<shardflow::PartitionSpec> specs;
  };
  const std::vector<Case> cases{
      {"layers.0.attn.qkv.weight", {3, A, D, H}, {{{}, {"tensor"}, {}, {}}, {{}, {"tensor"}, {}, {"data"}}}},
      {"layers.0.mlp.gate_up.weight", {2, F, H}, {{{}, {"tensor"}, {}}, {{}, {"data", "tensor"}, {}}}},
      {"layers.1.mlp.down.weight", {H, F}, {{{"data"}, {"tensor"}}, {{}, {"tensor", "data"}}}},
      {"final_norm.weight", {H}, {{{"tensor"}}}},
  };
  for (const auto& f : shardflow::test::factorisations(size, 2)) {
    shardflow::MeshShape mesh({"data", "tensor"}, {f[0], f[1]});
    for (const auto& c : cases) {
      FV whole("whole", static_cast<size_t>(shardflow::numel(c.view)));
      shardflow::nn::Init<float>::fill(whole, 2024, c.name, c.view);
      const auto strides = shardflow::row_major_strides(c.view);
      for (const auto& spec : c.specs) {
        shardflow::Layout layout(c.view, spec, mesh);
        const shardflow::Box box = layout.box(rank);
        FV mine("mine", static_cast<size_t>(box.numel()));
        shardflow::nn::Init<float>::fill_box(mine, 2024, c.name, c.view, box);
        // walk the box row-major and compare with the whole tensor
        std::vector<int64_t> idx(c.view.size(), 0);
        for (int64_t j = 0; j < box.numel(); ++j) {
          int64_t rest = j, flat = 0;
          for (int d = static_cast<int>(c.view.size()) - 1; d >= 0; --d) {
            flat += (box.offset[d] + rest % box.extent[d]) * strides[d];
            rest /= box.extent[d];
          }
          ASSERT_EQ(mine(j), whole(flat)) << c.name << " " << spec.to_string() << " rank " << rank << " element " << j;
        }
      }
    }
  }
  // a checksum of everything gathered from the shards equals the whole tensor's
  shardflow::MeshShape mesh({"data", "tensor"}, {1, size});
  shardflow::Layout layout({3 * H, H}, {{"tensor"}, {}}, mesh);
  const auto box = layout.box(rank);
  FV mine("mine", static_cast<size_t>(box.numel())), whole("whole", 3 * H * H);
  shardflow::nn::Init<float>::fill_box(mine, 1, "layers.0.attn.out.weight", {3 * H, H}, box);
  shardflow::nn::Init<float>::fill(whole, 1, "layers.0.attn.out.weight", {3 * H, H});
  double local = 0, global = 0, ref = 0;
  for (size_t i = 0; i < mine.extent(0); ++i) local += std::abs(double(mine(i))) * (box.offset[0] * H + double(i) + 1);
  for (size_t i = 0; i < whole.extent(0); ++i) ref += std::abs(double(whole(i))) * (double(i) + 1);
  MPI_Allreduce(&local, &global, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_NEAR(global, ref, 1e-12 * ref);
}

}  // namespace
