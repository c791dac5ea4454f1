// Checkpoint building blocks: CRC-32C (published check values, hardware vs table on
// random data and lengths, chaining), the manifest (JSON round trip, validation errors,
// coverage checking, path safety, checksum block and tile arithmetic, shard-file records),
// the three-stream tile CRC, and the metadata checksum of a file with ranges left out.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/checksum.hpp"
#include "ckpt/impl/ckpt_internal.hpp"
#include "ckpt/lock.hpp"
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

TEST(Crc32c, ThreeStreamsEqualThreeCrcs) {
  std::mt19937 rng(5);
  std::vector<unsigned char> buf(3 * 5000);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(4096), size_t(4999)}) {
    const void* const p[3] = {buf.data(), buf.data() + 5000, buf.data() + 10000};
    std::uint32_t c[3] = {0, 0x1234u, 0xffffffffu};
    const std::uint32_t want[3] = {crc32c(p[0], n, 0), crc32c(p[1], n, 0x1234u), crc32c(p[2], n, 0xffffffffu)};
    crc32c_x3(p, n, c);
    EXPECT_EQ(c[0], want[0]) << n;
    EXPECT_EQ(c[1], want[1]) << n;
    EXPECT_EQ(c[2], want[2]) << n;
  }
}

// The strided CRC (carry-less-multiply folding along row segments where the CPU has it)
// equals the CRC of the segments gathered; shown failing with a fold constant changed.
TEST(Crc32c, StridedEqualsGatheredSegments) {
  std::mt19937 rng(23);
  std::vector<unsigned char> buf(64 * 4096 + 512);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t seg : {size_t(256), size_t(512), size_t(768), size_t(4096), size_t(100), size_t(8)})
    for (size_t count : {size_t(1), size_t(2), size_t(3), size_t(17)}) {
      const size_t stride = seg + 64 * (rng() % 4);
      const size_t off = rng() % 64;
      if (off + count * stride > buf.size()) continue;
      std::vector<unsigned char> gathered;
      for (size_t i = 0; i < count; ++i)
        gathered.insert(gathered.end(), buf.begin() + static_cast<long>(off + i * stride),
                        buf.begin() + static_cast<long>(off + i * stride + seg));
      const std::uint32_t init = static_cast<std::uint32_t>(rng());
      EXPECT_EQ(crc32c_strided(buf.data() + off, stride, seg, count, init),
                crc32c_portable(gathered.data(), gathered.size(), init))
          << "seg " << seg << " count " << count << " stride " << stride;
    }
  for (size_t len : {size_t(255), size_t(256), size_t(511), size_t(512), size_t(513), size_t(767), size_t(4096),
                     size_t(65536 + 77)})
    EXPECT_EQ(crc32c(buf.data() + 3, len, 0xabcdefu), crc32c_portable(buf.data() + 3, len, 0xabcdefu)) << len;
  std::printf("crc32c implementation: %s\n", crc32c_implementation());
}

// The copying CRC stores exactly the source segments at the destination stride (and
// nothing between them or around them) and returns the CRC of the gathered segments; fast
// (folding) and fallback segment sizes alike, and every destination alignment the folding
// copy treats apart (each 8-byte offset in a cache line: aligned stores with masked ends;
// any other: unaligned stores), with plain and with streaming (non-temporal) stores.
TEST(Crc32c, CopyStridedCopiesAndHashesTheSegments) {
  std::mt19937 rng(29);
  std::vector<unsigned char> src(64 * 4096 + 512);
  for (auto& b : src) b = static_cast<unsigned char>(rng());
  for (CopyStores stores : {CopyStores::Cached, CopyStores::Streaming})
    for (size_t doff : {size_t(0), size_t(8), size_t(16), size_t(24), size_t(32), size_t(40), size_t(48), size_t(56),
                        size_t(4), size_t(7)})
      for (size_t seg : {size_t(256), size_t(512), size_t(4096), size_t(100), size_t(8)})
        for (size_t count : {size_t(1), size_t(2), size_t(17)}) {
          const size_t src_stride = seg + 64 * (rng() % 4), dst_stride = seg + 8 * (rng() % 9);
          const size_t off = rng() % 64;
          if (off + count * src_stride > src.size()) continue;
          std::vector<unsigned char> dst_buf(count * dst_stride + 192, 0xA5), gathered;
          // dst: doff bytes past a 64-byte boundary, 64 guard bytes before it
          const size_t lead = 64 + (64 - reinterpret_cast<std::uintptr_t>(dst_buf.data()) % 64) % 64 + doff;
          unsigned char* dst = dst_buf.data() + lead;
          for (size_t i = 0; i < count; ++i)
            gathered.insert(gathered.end(), src.begin() + static_cast<long>(off + i * src_stride),
                            src.begin() + static_cast<long>(off + i * src_stride + seg));
          const std::uint32_t init = static_cast<std::uint32_t>(rng());
          const std::uint32_t got =
              crc32c_copy_strided(dst, dst_stride, src.data() + off, src_stride, seg, count, init, stores);
          EXPECT_EQ(got, crc32c_portable(gathered.data(), gathered.size(), init))
              << "seg " << seg << " count " << count << " dst offset " << doff;
          for (size_t i = 0; i < count; ++i) {
            EXPECT_EQ(std::memcmp(dst + i * dst_stride, gathered.data() + i * seg, seg), 0)
                << "seg " << seg << " row " << i << " dst offset " << doff;
            for (size_t k = seg; k < dst_stride && i + 1 < count; ++k)
              ASSERT_EQ(dst[i * dst_stride + k], 0xA5)
                  << "seg " << seg << " dst offset " << doff << ": wrote between rows";
          }
          for (size_t k = 0; k < lead; ++k) ASSERT_EQ(dst_buf[k], 0xA5) << "dst offset " << doff << ": wrote before";
          for (size_t k = lead + (count - 1) * dst_stride + seg; k < dst_buf.size(); ++k)
            ASSERT_EQ(dst_buf[k], 0xA5) << "dst offset " << doff << ": wrote after";
        }
}

// One stored tile moved with preadv/pwritev: more rows than IOV_MAX pieces (several system
// calls), padding after each row segment written as zeros and dropped on read, rows
// scattered in memory; and a stream of pieces merged where they are adjacent.
TEST(TileIo, RoundTripsPastIovMaxWithPadding) {
  char path[] = "/tmp/sf_tile_io_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::int64_t rows = 3000;
  const std::size_t seg = 16, chunk_row = 24, stride = 40;
  std::vector<unsigned char> mem(static_cast<size_t>(rows) * stride), back(mem.size(), 0xEE);
  for (size_t i = 0; i < mem.size(); ++i) mem[i] = static_cast<unsigned char>(i * 7 + 3);
  ckpt::detail::tile_io(fd, true, 4096, mem.data(), stride, seg, chunk_row, rows, "test");
  // the file holds the segments chunk_row apart, zeros between
  std::vector<unsigned char> file(static_cast<size_t>(rows) * chunk_row);
  ASSERT_EQ(pread(fd, file.data(), file.size(), 4096), static_cast<ssize_t>(file.size() - (chunk_row - seg)));
  for (std::int64_t r = 0; r < rows; ++r) {
    ASSERT_EQ(std::memcmp(file.data() + r * chunk_row, mem.data() + r * stride, seg), 0) << r;
    if (r + 1 < rows) {
      for (size_t k = seg; k < chunk_row; ++k) ASSERT_EQ(file[static_cast<size_t>(r) * chunk_row + k], 0) << r;
    }
  }
  ckpt::detail::tile_io(fd, false, 4096, back.data(), stride, seg, chunk_row, rows, "test");
  for (std::int64_t r = 0; r < rows; ++r) {
    ASSERT_EQ(std::memcmp(back.data() + r * stride, mem.data() + r * stride, seg), 0) << r;
    ASSERT_EQ(back[static_cast<size_t>(r) * stride + seg], 0xEE) << r;  // nothing written between rows
  }
  // reading past the end of the file is an error naming the byte
  try {
    ckpt::detail::tile_io(fd, false, 1 << 20, back.data(), stride, seg, chunk_row, 2, "tile 7");
    ADD_FAILURE() << "a read past the end was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tile 7: the file ends at byte"), std::string::npos) << e.what();
  }
  close(fd);
  unlink(path);
}

// A write stream past IOV_MAX pieces and kMaxBytes goes out up to a 2 MiB boundary of the
// file and keeps the rest queued (a piece split there): the file holds every piece and
// every padding byte where it belongs.
TEST(TileIo, StreamSplitAtBoundariesWritesEveryByte) {
  char path[] = "/tmp/sf_io_stream_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::size_t piece = 4093, gap = 7, pad = 3, pieces = 2600;  // about 10.6 MiB
  const std::int64_t at = 12345;
  std::vector<unsigned char> mem(pieces * (piece + gap));
  for (size_t i = 0; i < mem.size(); ++i) mem[i] = static_cast<unsigned char>(i * 13 + 5);
  std::vector<unsigned char> want;
  {
    ckpt::detail::IoStream out(fd, true, at, "stream");
    out.write_behind();
    for (size_t k = 0; k < pieces; ++k) {
      out.add(mem.data() + k * (piece + gap), piece);  // not adjacent: one piece each
      want.insert(want.end(), mem.begin() + static_cast<std::ptrdiff_t>(k * (piece + gap)),
                  mem.begin() + static_cast<std::ptrdiff_t>(k * (piece + gap) + piece));
      if (k % 5 == 4) {
        out.pad(pad);
        want.insert(want.end(), pad, 0);
      }
    }
    out.flush();
  }
  std::vector<unsigned char> file(want.size() + 1, 0xEE);
  ASSERT_EQ(pread(fd, file.data(), file.size(), at), static_cast<ssize_t>(want.size()));  // nothing after
  file.pop_back();
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_EQ(file[i], want[i]) << "file byte " << at + static_cast<std::int64_t>(i);
  close(fd);
  unlink(path);
}

TEST(Crc32c, Combine) {
  std::mt19937 rng(3);
  std::vector<unsigned char> buf(70000);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t split : {size_t(0), size_t(1), size_t(4096), size_t(69999), size_t(70000)})
    EXPECT_EQ(crc32c_combine(crc32c(buf.data(), split), crc32c(buf.data() + split, buf.size() - split),
                             buf.size() - split),
              crc32c(buf.data(), buf.size()))
        << split;
}

// Tile checksums (three tiles at a time, the rest split in row thirds and combined) equal
// the CRC of each tile's bytes gathered in row-major order.
TEST(Crc32c, TilesEqualGatheredBytes) {
  std::mt19937 rng(17);
  for (int trial = 0; trial < 60; ++trial) {
    const std::int64_t rows = 1 + static_cast<std::int64_t>(rng() % 9), cols = 1 + static_cast<std::int64_t>(rng() % 40);
    const std::int64_t inner = 1 + static_cast<std::int64_t>(rng() % 3), bc = 1 + static_cast<std::int64_t>(rng() % 12);
    const std::size_t es = 4;
    const ckpt::detail::TileGeometry g = ckpt::detail::tile_geometry({rows, cols, inner}, es, rows, bc);
    std::vector<unsigned char> a(static_cast<size_t>(rows * cols * inner) * es);
    for (auto& b : a) b = static_cast<unsigned char>(rng());
    // all tiles, then a column sub-range read into a narrower buffer
    const std::int64_t j0 = static_cast<std::int64_t>(rng() % static_cast<unsigned>(g.col_blocks));
    for (const std::int64_t jl : {std::int64_t(0), j0}) {
      const std::int64_t jh = jl == 0 ? g.col_blocks : std::min(g.col_blocks, jl + 1 + static_cast<std::int64_t>(rng() % 4));
      const std::int64_t c0 = jl * bc, c1 = std::min(cols, jh * bc);
      const std::size_t stride = static_cast<size_t>(c1 - c0) * g.col_bytes;
      std::vector<unsigned char> sub(static_cast<size_t>(rows) * stride);
      for (std::int64_t r = 0; r < rows; ++r)
        std::memcpy(sub.data() + static_cast<size_t>(r) * stride, a.data() + static_cast<size_t>(r) * g.row_bytes +
                    static_cast<size_t>(c0) * g.col_bytes, stride);
      std::vector<std::uint32_t> got(static_cast<size_t>(jh - jl));
      ckpt::detail::tile_crcs(g, sub.data(), stride, rows, c0, jl, jh, got.data());
      for (std::int64_t j = jl; j < jh; ++j) {
        std::string bytes;
        const std::int64_t ca = j * bc, ce = std::min(cols, ca + bc);
        for (std::int64_t r = 0; r < rows; ++r)
          bytes.append(reinterpret_cast<const char*>(a.data()) + static_cast<size_t>(r) * g.row_bytes +
                           static_cast<size_t>(ca) * g.col_bytes,
                       static_cast<size_t>(ce - ca) * g.col_bytes);
        ASSERT_EQ(got[static_cast<size_t>(j - jl)], crc32c(bytes.data(), bytes.size()))
            << "rows " << rows << " cols " << cols << " inner " << inner << " block_cols " << bc << " tile " << j;
      }
    }
  }
}

TEST(Crc32c, FileWithRangesLeftOut) {
  std::mt19937 rng(11);
  std::string bytes(3u << 20, '\0');  // > the 1 MiB read buffer
  for (auto& c : bytes) c = static_cast<char>(rng());
  char name[] = "/tmp/shardflow_crc_file_XXXXXX";
  const int fd = mkstemp(name);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
  const std::int64_t n = static_cast<std::int64_t>(bytes.size());
  const std::vector<ByteRange> skip = {{0, 10}, {100, 1}, {101, 5}, {2000000, 700000}, {n - 3, 3}};
  std::string kept;
  std::int64_t pos = 0;
  for (const auto& r : skip) {
    kept += bytes.substr(static_cast<size_t>(pos), static_cast<size_t>(r.offset - pos));
    pos = r.offset + r.length;
  }
  EXPECT_EQ(file_crc32c_outside(name, n, skip), crc32c(kept.data(), kept.size()));
  EXPECT_EQ(file_crc32c_outside(name, n, {}), crc32c(bytes.data(), bytes.size()));
  EXPECT_EQ(file_crc32c_outside(name, 1000, {}), crc32c(bytes.data(), 1000));
  try {
    file_crc32c_outside(name, n + 1, skip);  // the file is shorter than the manifest says
    ADD_FAILURE() << "a short file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
  std::remove(name);
  EXPECT_THROW(file_crc32c_outside(name, 1, {}), Error);
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
  a.file_offset = 100;  // 2 tiles of 2 x 3 bf16 (the second padded): 24 bytes
  b.file_offset = 100;
  a.tiled = b.tiled = true;
  t.shards = {a, b};
  m.tensors.push_back(t);
  TensorRecord s;
  s.name = "scalar";
  s.dtype = DType::I64;
  s.spec = "PartitionSpec()";
  s.mesh = MeshShape({"data"}, {2});
  s.shards = {ShardRecord{Box{}, "shard-0.h5", "/scalar", 1, {3}, 0}};
  s.shards[0].file_offset = 124;  // 8 bytes, right after w's (0-d: contiguous)
  m.tensors.push_back(s);
  m.files = {FileRecord{"shard-0.h5", 1000, 0xabcdef01u}, FileRecord{"shard-1.h5", 112, 5}};
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
  EXPECT_EQ(back.tensors[0].shards[0].file_offset, 100);
  EXPECT_EQ(back.tensors[0].shards[0].cols_per_block(), 3);
  ASSERT_EQ(back.files.size(), 2u);
  EXPECT_EQ(back.files[0].meta_crc32c, 0xabcdef01u);
  EXPECT_EQ(back.files[1].size, 112);
  EXPECT_EQ(back.data_ranges("shard-0.h5"), (std::vector<ByteRange>{{100, 24}, {124, 8}}));
  EXPECT_TRUE(back.tensors[0].shards[0].tiled);
  EXPECT_FALSE(back.tensors[1].shards[0].tiled);
  EXPECT_TRUE(coverage_problem(back.tensors[0]).empty());
  EXPECT_TRUE(coverage_problem(back.tensors[1]).empty());
  // format 2 (still read): contiguous datasets, numel x dtype size each
  Manifest v2 = sample();
  v2.version = 2;
  const Manifest back2 = Manifest::parse(v2.to_json(), "mem");
  EXPECT_EQ(back2.version, 2);
  EXPECT_FALSE(back2.tensors[0].shards[0].tiled);
  EXPECT_EQ(back2.data_ranges("shard-0.h5"), (std::vector<ByteRange>{{100, 18}, {124, 8}}));
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
  // shard files: a record for each, data inside it, not overlapping, none without shards
  m = sample();
  m.files.pop_back();
  expect_bad(m, "'shard-1.h5' has no entry");
  m = sample();
  m.files[1].size = 111;
  expect_bad(m, "outside file 'shard-1.h5' of 111 bytes");
  m = sample();
  m.tensors[1].shards[0].file_offset = 110;
  expect_bad(m, "overlap");
  m = sample();
  m.tensors[1].shards[0].file_offset = -1;
  expect_bad(m, "'scalar'");
  m = sample();
  m.files.push_back(FileRecord{"shard-9.h5", 10, 0});
  expect_bad(m, "'shard-9.h5' holds no shard");
  m = sample();
  m.files.push_back(m.files[0]);
  expect_bad(m, "listed twice");
  m = sample();
  m.tensors[0].shards[0].block_cols = 2;  // 2 column tiles: 4 checksums needed
  expect_bad(m, "checksums");
  m.tensors[0].shards[0].crc32c = {1, 2, 3, 4};
  expect_bad(m, "overlap");  // 4 tiles of 2 x 2: 32 bytes, into the scalar's
  m.tensors[1].shards[0].file_offset = 132;
  m.validate("ok");
  m = sample();
  m.tensors[1].shards[0].block_cols = 2;  // a 0-d shard has one column tile
  expect_bad(m, "block_cols");
  // version 1 (no file records) is refused with the reason
  {
    nlohmann::json j = nlohmann::json::parse(sample().to_json());
    j["version"] = 1;
    j.erase("manifest_crc32c");  // version 1 had no checksum of its own
    try {
      Manifest::parse(j.dump(), "old/manifest.json");
      ADD_FAILURE() << "a version 1 manifest was accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("version 1 is no longer read"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(Manifest::parse("{not json", "f"), InputError);
  EXPECT_THROW(Manifest::parse("{\"format\": \"other\"}", "f"), InputError);
}

// The manifest's own checksum: an edit (a dtype changed, a tensor dropped) is reported as an
// edit of the manifest, not later as damage of the shard files it describes (issue 15 item
// 7); the same content laid out differently, or a manifest of the same format written
// before the checksum existed, is read.
TEST(Manifest, SelfChecksumCatchesEdits) {
  const std::string text = sample().to_json();
  const nlohmann::json j = nlohmann::json::parse(text);
  ASSERT_TRUE(j.contains("manifest_crc32c"));
  auto refused = [](const nlohmann::json& edited, const char* what) {
    try {
      Manifest::parse(edited.dump(), "ck/manifest.json");
      ADD_FAILURE() << what << ": accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("ck/manifest.json: the manifest does not match its own checksum"),
                std::string::npos)
          << what << ": " << e.what();
    }
  };
  nlohmann::json dtype = j;
  dtype["tensors"][0]["dtype"] = dtype["tensors"][0]["dtype"] == "f32" ? "bf16" : "f32";
  refused(dtype, "dtype changed");
  nlohmann::json dropped = j;
  dropped["tensors"].erase(1);
  refused(dropped, "tensor dropped");
  nlohmann::json step = j;
  step["step"] = 8;
  refused(step, "step changed");
  EXPECT_EQ(Manifest::parse(j.dump(4), "f").step, sample().step);  // another layout, same content
  nlohmann::json older = j;
  older.erase("manifest_crc32c");
  EXPECT_EQ(Manifest::parse(older.dump(), "f").step, sample().step);
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
  // column tiles
  EXPECT_EQ(block_cols_for({100, 256}, 4, 4096), 256);  // a row narrower than a tile: one tile
  EXPECT_EQ(block_cols_for({100, 2048}, 4, 4096), 1024);
  EXPECT_EQ(block_cols_for({100, 2000}, 4, 4095), 1024);  // rounded up to whole columns
  EXPECT_EQ(block_cols_for({10, 8, 16}, 4, 4096), 8);     // a column is 64 bytes
  EXPECT_EQ(block_cols_for({10, 100, 16}, 4, 256), 4);
  EXPECT_EQ(block_cols_for({7}, 8, 4096), 1);
  EXPECT_EQ(block_cols_for({}, 8, 4096), 1);
  EXPECT_EQ(num_blocks({100, 2048}, 256, 1024), 1 * 2);
  EXPECT_EQ(num_blocks({100, 2049}, 10, 1024), 10 * 3);
  EXPECT_EQ(num_blocks({100, 0}, 10, 1024), 10);  // rows without bytes: one tile each
  EXPECT_EQ(num_blocks({0, 5}, 10, 2), 0);
  EXPECT_EQ(num_blocks({}, 1, 1), 1);
}

}  // namespace

// A takeover is seen by the next check(), not only at the next heartbeat: with a 10 s
// heartbeat (the default), a run taken over just before a save used to save anyway (seen
// on a fast machine in fault_checkpoint_lock). Here the heartbeat is 1000 s.
TEST(RootLock, CheckSeesATakeoverBeforeTheNextHeartbeat) {
  char tmpl[] = "/tmp/shardflow_lock_unit_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string root = tmpl;
  {
    shardflow::ckpt::LockOptions o;
    o.heartbeat_s = 1000;
    shardflow::ckpt::RootLock lock(root, o);
    EXPECT_NO_THROW(lock.check());
    nlohmann::json other = nlohmann::json::parse(lock.record());
    other["token"] = "thief";
    other["host"] = "another-node";
    {
      std::ofstream f(lock.path() + ".new");
      f << other.dump();
    }
    ASSERT_EQ(std::rename((lock.path() + ".new").c_str(), lock.path().c_str()), 0);
    try {
      lock.check();
      ADD_FAILURE() << "a taken-over lock passed check()";
    } catch (const shardflow::InputError& e) {
      EXPECT_NE(std::string(e.what()).find("was taken over by"), std::string::npos) << e.what();
    }
  }
  std::remove((root + "/.lock").c_str());
  ::rmdir(root.c_str());
}
