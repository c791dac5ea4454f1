// Checkpoint building blocks: CRC-32C (published check values, hardware vs table on
// random data and lengths, chaining), the manifest (JSON round trip, validation errors,
// coverage checking, path safety, checksum block arithmetic).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "ckpt/checksum.hpp"
#include "ckpt/manifest.hpp"
#include "core/error.hpp"

namespace {
using namespace shardflow;
using namespace shardflow::ckpt;

TEST(Crc32c, KnownValues) {
  const std::string s = "123456789";
  EXPECT_EQ(crc32c(s.data(), s.size()), 0xE3069283u);  // the CRC-32C check value
  EXPECT_EQ(crc32c_portable(s.data(), s.size()), 0xE3069283u);
  std::vector<unsigned char> zeros(32, 0), ones(32, 0xff), inc(32);
  for (int i = 0; i < 32; ++i) inc[static_cast<size_t>(i)] = static_cast<unsigned char>(i);
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);  // RFC 3720 B.4 test vectors
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(crc32c(inc.data(), 32), 0x46DD794Eu);
  EXPECT_EQ(crc32c(nullptr, 0), 0u);
}

TEST(Crc32c, FastPathEqualsTableOnRandomData) {
  std::mt19937 rng(9);
  std::vector<unsigned char> buf(200000);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t len : {size_t(1), size_t(7), size_t(8), size_t(63), size_t(24575), size_t(24576), size_t(24583),
                     size_t(49152), size_t(100001), size_t(200000)}) {
    size_t off = rng() % 8;
    if (off + len > buf.size()) off = 0;
    ASSERT_EQ(crc32c(buf.data() + off, len), crc32c_portable(buf.data() + off, len)) << len;
  }
  for (int i = 0; i < 200; ++i) {
    size_t len = rng() % buf.size();
    ASSERT_EQ(crc32c(buf.data(), len), crc32c_portable(buf.data(), len)) << len;
  }
  // chaining
  const std::uint32_t whole = crc32c(buf.data(), 150000);
  EXPECT_EQ(crc32c(buf.data() + 70001, 150000 - 70001, crc32c(buf.data(), 70001)), whole);
  // one flipped bit changes it
  buf[77777] ^= 4;
  EXPECT_NE(crc32c(buf.data(), 150000), whole);
}

Manifest sample() {
  Manifest m;
  m.step = 42;
  m.world_size = 2;
  m.created = "2026-01-01T00:00:00Z";
  m.meta.step = 42;
  m.meta.ints["data_position"] = -5;
  m.meta.reals["loss"] = 0.125;
  m.meta.strings["deck"] = "a = \"b\"\n[c]\n";
  m.meta.blobs["rng"] = {1, 2, 250};
  TensorRecord t;
  t.name = "w";
  t.shape = {5, 3};
  t.dtype = DType::BF16;
  t.spec = "('data', None)";
  t.mesh = MeshShape({"data"}, {2});
  ShardRecord a{Box{{0, 0}, {3, 3}}, "shard-0.h5", "/w", 2, {0xdeadbeef, 1}, 0};
  ShardRecord b{Box{{3, 0}, {2, 3}}, "shard-1.h5", "/w", 2, {7}, 1};
  t.shards = {a, b};
  m.tensors.push_back(t);
  TensorRecord s;
  s.name = "scalar";
  s.dtype = DType::I64;
  s.spec = "PartitionSpec()";
  s.mesh = MeshShape({"data"}, {2});
  s.shards = {ShardRecord{Box{}, "shard-0.h5", "/scalar", 1, {3}, 0}};
  m.tensors.push_back(s);
  return m;
}

TEST(Manifest, JsonRoundTrip) {
  Manifest m = sample();
  m.validate("mem");
  Manifest back = Manifest::parse(m.to_json(), "mem");
  EXPECT_EQ(back.to_json(), m.to_json());
  EXPECT_EQ(back.meta, m.meta);
  ASSERT_EQ(back.tensors.size(), 2u);
  EXPECT_EQ(back.tensors[0].shards[0].crc32c[0], 0xdeadbeefu);
  EXPECT_EQ(back.tensors[0].mesh, m.tensors[0].mesh);
  EXPECT_TRUE(coverage_problem(back.tensors[0]).empty());
  EXPECT_TRUE(coverage_problem(back.tensors[1]).empty());
}

TEST(Manifest, ValidationNamesTensorAndValue) {
  auto expect_bad = [](Manifest m, const std::string& needle) {
    try {
      m.validate("ck/manifest.json");
      ADD_FAILURE() << "accepted; expected " << needle;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("ck/manifest.json"), std::string::npos) << e.what();
    }
  };
  Manifest m = sample();
  m.tensors[0].shards[1].file = "../x.h5";
  expect_bad(m, "../x.h5");
  m = sample();
  m.tensors[0].shards[1].file = "/abs/x.h5";
  expect_bad(m, "/abs/x.h5");
  m = sample();
  m.tensors[0].shards[1].box.extent = {3, 3};  // leaves the shape
  expect_bad(m, "'w'");
  m = sample();
  m.tensors[0].shards[0].crc32c.pop_back();
  expect_bad(m, "checksums");
  m = sample();
  m.tensors[1].name = "w";
  expect_bad(m, "twice");
  m = sample();
  m.tensors[0].shards[0].dataset = "/other";
  expect_bad(m, "/other");
  EXPECT_THROW(Manifest::parse("{not json", "f"), InputError);
  EXPECT_THROW(Manifest::parse("{\"format\": \"other\"}", "f"), InputError);
}

TEST(Manifest, CoverageFindsGapsAndOverlaps) {
  TensorRecord t = sample().tensors[0];
  EXPECT_TRUE(coverage_problem(t).empty());
  t.shards[1].box = Box{{2, 0}, {2, 3}};  // overlaps row 2, misses row 4
  EXPECT_NE(coverage_problem(t).find("overlap"), std::string::npos);
  t.shards[1].box = Box{{3, 0}, {1, 3}};  // misses row 4
  EXPECT_NE(coverage_problem(t).find("cover 12 of 15"), std::string::npos) << coverage_problem(t);
  t.shards.push_back(ShardRecord{Box{{4, 0}, {1, 3}}, "shard-1.h5", "/w", 1, {0}, 1});
  EXPECT_TRUE(coverage_problem(t).empty());
}

TEST(Manifest, PathsAndBlocks) {
  EXPECT_TRUE(is_safe_relative_path("shard-0.h5"));
  EXPECT_TRUE(is_safe_relative_path("sub/shard-0.h5"));
  for (const char* bad : {"", "/x", "../x", "a/../../x", "a//b", "./x", "a/", "a\\b"})
    EXPECT_FALSE(is_safe_relative_path(bad)) << bad;
  EXPECT_FALSE(is_valid_tensor_name("a/b"));
  EXPECT_FALSE(is_valid_tensor_name(""));
  EXPECT_TRUE(is_valid_tensor_name("layers.0.attn.qkv.weight"));
  EXPECT_EQ(block_rows_for({100, 256}, 4, 1 << 20), 1024);
  EXPECT_EQ(num_blocks({100, 256}, 1024), 1);
  EXPECT_EQ(block_rows_for({100, 256}, 4, 4096), 4);
  EXPECT_EQ(num_blocks({100, 256}, 4), 25);
  EXPECT_EQ(num_blocks({101, 256}, 4), 26);
  EXPECT_EQ(block_rows_for({10, 1 << 20}, 4, 1024), 1);  // a row larger than a block
  EXPECT_EQ(num_blocks({}, 1), 1);
  EXPECT_EQ(num_blocks({0, 3}, 1), 0);
}

}  // namespace
