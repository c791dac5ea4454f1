// HDF5 sharded checkpoints (MPI, np 1/2/4): save a synthetic sharded state on one layout,
// restore it exactly onto many other layouts, meshes, world sizes and dtypes; metadata
// round trips; async saves; retention; every corruption case refused on every rank with
// a message naming the tensor and the file, leaving the caller's buffers untouched;
// verify and consolidate (read back with HDF5 and with h5dump).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <nlohmann/json.hpp>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>
#include <fcntl.h>
#include <unistd.h>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "ckpt/checksum.hpp"
#include "ckpt/impl/ckpt_internal.hpp"
#include "ckpt/tools.hpp"
#include "core/error.hpp"
#include "core/half.hpp"
#include "support/test_util.hpp"

namespace {
using namespace shardflow;
using namespace shardflow::ckpt;
namespace fs = std::filesystem;
using shardflow::test::world_rank;
using shardflow::test::world_size;

// ---- a synthetic model --------------------------------------------------------------------
struct Spec {
  std::string name;
  Shape shape;
  DType dtype;
};
const std::vector<Spec>& model() {
  static const std::vector<Spec> m = {
      {"embed.weight", {37, 12}, DType::F32},          {"layers.0.attn.qkv.weight", {18, 6, 4}, DType::F32},
      {"layers.0.mlp_norm.weight", {13}, DType::BF16}, {"adam.m.embed.weight", {37, 12}, DType::F16},
      {"counter", {}, DType::I64},                     {"big", {300, 70}, DType::F64},
      {"empty", {0, 5}, DType::F32},
  };
  return m;
}

/// The value of element `g` (global row-major index) of tensor `t`, exact in every dtype.
double value_of(size_t t, std::int64_t g) { return static_cast<double>((static_cast<std::int64_t>(t) * 131 + g * 7) % 251) - 125; }

/// Local buffer of a tensor for `rank` under `layout` (fill with values, or a sentinel).
std::vector<unsigned char> make_local(size_t t, const Layout& layout, DType dt, int rank, bool sentinel) {
  const Box b = layout.holds(rank) ? layout.box(rank) : Box{Shape(layout.ndim(), 0), Shape(layout.ndim(), 0)};
  const std::int64_t n = layout.holds(rank) ? b.numel() : 0;
  std::vector<unsigned char> out(static_cast<size_t>(n) * dtype_size(dt));
  const Shape gs = row_major_strides(layout.global_shape());
  std::vector<std::int64_t> idx(b.ndim(), 0);
  for (std::int64_t e = 0; e < n; ++e) {
    std::int64_t g = 0;
    for (size_t d = 0; d < b.ndim(); ++d) g += (b.offset[d] + idx[d]) * gs[d];
    double v = sentinel ? 999.0 : value_of(t, g);
    unsigned char* p = out.data() + static_cast<size_t>(e) * dtype_size(dt);
    switch (dt) {
      case DType::F32: { float f = static_cast<float>(v); std::memcpy(p, &f, 4); break; }
      case DType::F64: std::memcpy(p, &v, 8); break;
      case DType::BF16: { bf16 h = to_bf16(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
      case DType::F16: { f16 h = to_f16(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
      case DType::I32: { std::int32_t i = static_cast<std::int32_t>(v); std::memcpy(p, &i, 4); break; }
      case DType::I64: { std::int64_t i = static_cast<std::int64_t>(v); std::memcpy(p, &i, 8); break; }
    }
    for (int d = static_cast<int>(b.ndim()) - 1; d >= 0; --d) {
      if (++idx[static_cast<size_t>(d)] < b.extent[static_cast<size_t>(d)]) break;
      idx[static_cast<size_t>(d)] = 0;
    }
  }
  return out;
}

/// A full state: layouts from `spec_of`, buffers per tensor.
struct State {
  std::vector<Layout> layouts;
  std::vector<DType> dtypes;
  std::vector<std::vector<unsigned char>> bufs;
  std::vector<TensorState> tensors() {
    std::vector<TensorState> v;
    for (size_t i = 0; i < bufs.size(); ++i)
      v.push_back(TensorState{model()[i].name, layouts[i], dtypes[i], bufs[i].empty() ? nullptr : bufs[i].data()});
    return v;
  }
};

using SpecFn = std::function<PartitionSpec(size_t tensor, const Shape& shape)>;

State make_state(const MeshShape& mesh, const SpecFn& spec_of, int rank, bool sentinel,
                 const std::vector<DType>* dtypes = nullptr) {
  State s;
  for (size_t i = 0; i < model().size(); ++i) {
    const Spec& m = model()[i];
    s.layouts.emplace_back(m.shape, spec_of(i, m.shape), mesh);
    s.dtypes.push_back(dtypes ? (*dtypes)[i] : m.dtype);
    s.bufs.push_back(make_local(i, s.layouts.back(), s.dtypes.back(), rank, sentinel));
  }
  return s;
}

/// Layout families on a mesh with axes a0 (and a1): each tensor gets a spec by `variant`.
SpecFn spec_family(const MeshShape& mesh, int variant) {
  std::vector<std::string> ax = mesh.axis_names();
  return [ax, variant](size_t t, const Shape& shape) {
    PartitionSpec p = PartitionSpec::replicated(shape.size());
    if (shape.empty() || ax.empty()) return p;
    const size_t nd = shape.size();
    switch ((variant + static_cast<int>(t)) % 5) {
      case 0: break;  // replicated
      case 1: p[0] = {ax[0]}; break;
      case 2: p[nd - 1] = ax; break;  // all axes on the last dimension
      case 3:
        p[0] = {ax.back()};
        if (nd > 1 && ax.size() > 1) p[1] = {ax.front()};
        break;
      case 4: p[0] = std::vector<std::string>(ax.rbegin(), ax.rend()); break;
    }
    return p;
  };
}

std::vector<MeshShape> meshes_for(int n) {
  std::vector<MeshShape> out;
  out.emplace_back(std::vector<std::string>{"data"}, std::vector<int>{n});
  for (auto f : test::factorisations(n, 2)) {
    out.emplace_back(std::vector<std::string>{"data", "fsdp"}, f);
    out.emplace_back(std::vector<std::string>{"tensor", "pipeline"}, f);
  }
  return out;
}

std::string shared_tmpdir(MPI_Comm comm, const std::string& tag) {
  std::string d;
  int r = 0;
  MPI_Comm_rank(comm, &r);
  if (r == 0) {
    d = (fs::temp_directory_path() / ("sf_ckpt_" + tag + "_" + std::to_string(::getpid()))).string();
    fs::remove_all(d);
    fs::create_directories(d);
  }
  long long n = static_cast<long long>(d.size());
  MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, comm);
  d.resize(static_cast<size_t>(n));
  MPI_Bcast(d.data(), static_cast<int>(n), MPI_CHAR, 0, comm);
  return d;
}

void expect_state_equals(State& got, const State& want, const std::string& what) {
  for (size_t i = 0; i < got.bufs.size(); ++i)
    ASSERT_EQ(got.bufs[i], want.bufs[i]) << what << ": tensor " << model()[i].name << " layout "
                                         << got.layouts[i].to_string() << " on rank " << world_rank();
}

Metadata sample_meta(std::int64_t step) {
  Metadata m;
  m.step = step;
  m.ints["data_position"] = 123456789012345LL;
  m.reals["loss"] = 2.718281828459045;
  m.strings["deck"] = "[model]\nhidden = 128\nname = \"gpt \\\"q\\\"\"\n";
  m.blobs["rng"] = {0, 1, 2, 255, 128, 7};
  return m;
}

// ---- tests ------------------------------------------------------------------------------
// With the default 1 MiB blocks (one tile per shard here) and with 64-byte blocks: many
// row blocks and column tiles per shard, so that every restore reads partial tiles.
TEST(Checkpoint, RestoresOntoEveryLayout) {
  const int n = world_size(), rank = world_rank();
  for (const std::int64_t block_bytes : {std::int64_t(1) << 20, std::int64_t(64)}) {
    const std::string tag = "block_bytes " + std::to_string(block_bytes);
    const std::string root = shared_tmpdir(MPI_COMM_WORLD, "layouts");
    MeshShape save_mesh = meshes_for(n).back();
    State saved = make_state(save_mesh, spec_family(save_mesh, 2), rank, false);
    SaveOptions o;
    o.block_bytes = block_bytes;
    Checkpointer ck(MPI_COMM_WORLD, root, o);
    const std::string dir = ck.save(saved.tensors(), sample_meta(7));
    EXPECT_EQ(fs::path(dir).filename(), "step-00000007");
    if (block_bytes == 64) {  // the 2-d and 3-d shards have several column tiles
      std::int64_t tiled = 0;
      for (const auto& t : read_manifest(dir).tensors)
        for (const auto& sh : t.shards) tiled += sh.col_blocks() > 1;
      EXPECT_GT(tiled, 0);
    }
    int combos = 0;
    for (const MeshShape& mesh : meshes_for(n))
      for (int v = 0; v < 5; ++v) {
        State want = make_state(mesh, spec_family(mesh, v), rank, false);
        State got = make_state(mesh, spec_family(mesh, v), rank, true);
        Metadata md = restore(MPI_COMM_WORLD, root, got.tensors());
        EXPECT_EQ(md, sample_meta(7));
        expect_state_equals(got, want, tag + " mesh " + mesh.to_string() + " variant " + std::to_string(v));
        ++combos;
      }
    EXPECT_GE(combos, 5);
    VerifyReport rep = verify(MPI_COMM_WORLD, root);
    EXPECT_TRUE(rep.ok()) << (rep.problems.empty() ? "" : rep.problems[0]);
    EXPECT_EQ(rep.tensors, static_cast<std::int64_t>(model().size()));
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) fs::remove_all(root);
  }
}

/// Bytes this process has read with read()/pread() so far (/proc/self/io rchar; -1 when
/// the kernel does not provide it).
long long proc_io(const char* what) {
  std::ifstream in("/proc/self/io");
  std::string key;
  long long v = -1;
  while (in >> key >> v)
    if (key == what) return v;
  return -1;
}
long long rchar() { return proc_io("rchar:"); }  // bytes read by system calls

// Drops the files of a checkpoint directory from the page cache (written back first), so
// that the next read of them comes from storage and counts in /proc/self/io read_bytes.
void evict_from_page_cache(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// Runs f with SHARDFLOW_CKPT_MMAP set to v (restore's tile reads: "1" through a memory map,
// "0" with preadv), then restores the variable's previous state.
template <class F>
void with_tile_reads(const char* v, F&& f) {
  const char* old = std::getenv("SHARDFLOW_CKPT_MMAP");
  const std::string saved = old ? old : "";
  ::setenv("SHARDFLOW_CKPT_MMAP", v, 1);
  f();
  if (old)
    ::setenv("SHARDFLOW_CKPT_MMAP", saved.c_str(), 1);
  else
    ::unsetenv("SHARDFLOW_CKPT_MMAP");
}

// A tensor saved split by rows and restored split by columns (tensor-parallel column
// weights): each rank reads only the column tiles it needs, 1/n of the tensor, from every
// row shard; the bytes counted by restore match what the process read from files.
// Format 2 (contiguous row-major datasets, written by shardflow before format 3) is still
// read: a checkpoint written here the way format 2 wrote it (HDF5's default file format,
// one contiguous dataset, tile CRCs over row-major tiles, manifest version 2) restores onto
// a row split and a column split on every rank; one flipped data byte is still found.
TEST(Checkpoint, FormatTwoCheckpointsStillRestore) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "format2");
  const std::string dir = (fs::path(root) / "step-00000003").string();
  const Shape shape{6, 40};
  std::vector<float> w(240);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i) * 0.25f - 7.0f;
  std::int64_t data_at = 0;
  if (rank == 0) {
    fs::create_directories(dir);
    const std::string file = (fs::path(dir) / "shard-0.h5").string();
    hid_t f = H5Fcreate(file.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[2] = {6, 40};
    hid_t space = H5Screate_simple(2, dims, nullptr);
    hid_t d = H5Dcreate2(f, "/w", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w.data());
    data_at = static_cast<std::int64_t>(H5Dget_offset(d));
    H5Dclose(d);
    H5Sclose(space);
    H5Fclose(f);
    ShardRecord sh;
    sh.box = Box{{0, 0}, shape};
    sh.file = "shard-0.h5";
    sh.dataset = "/w";
    sh.block_rows = 2;
    sh.block_cols = 16;  // tiles of 2 rows x 16 columns (the last 8 wide)
    sh.writer = 0;
    sh.file_offset = data_at;
    const ckpt::detail::TileGeometry g = ckpt::detail::tile_geometry(shape, 4, 2, 16);
    sh.crc32c.assign(static_cast<size_t>(g.row_blocks * g.col_blocks), 0u);
    for (std::int64_t b = 0; b < g.row_blocks; ++b)
      ckpt::detail::tile_crcs(g, reinterpret_cast<const unsigned char*>(w.data()) + b * 2 * g.row_bytes, g.row_bytes, 2, 0, 0,
                        g.col_blocks, sh.crc32c.data() + b * g.col_blocks);
    TensorRecord t;
    t.name = "w";
    t.shape = shape;
    t.dtype = DType::F32;
    t.spec = "PartitionSpec()";
    t.mesh = MeshShape({"data"}, {1});
    t.shards = {sh};
    Manifest m;
    m.version = 2;
    m.step = 3;
    m.world_size = 1;
    m.meta.step = 3;
    m.tensors = {t};
    FileRecord fr;
    fr.name = "shard-0.h5";
    fr.size = static_cast<std::int64_t>(fs::file_size(file));
    fr.meta_crc32c = file_crc32c_outside(file, fr.size, {ByteRange{data_at, 240 * 4}});
    m.files = {fr};
    std::ofstream(fs::path(dir) / "manifest.json") << m.to_json();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(read_manifest(dir).version, 2);
  EXPECT_FALSE(read_manifest(dir).tensors.at(0).shards.at(0).tiled);
  MeshShape mesh({"data"}, {n});
  for (const PartitionSpec& spec : {PartitionSpec{{"data"}, {}}, PartitionSpec{{}, {"data"}}}) {
    const Layout lay(shape, spec, mesh);
    const Box b = lay.box(rank);
    std::vector<float> got(static_cast<size_t>(b.numel()), -1.f), want;
    for (std::int64_t i = 0; i < b.extent[0]; ++i)
      for (std::int64_t j = 0; j < b.extent[1]; ++j)
        want.push_back(w[static_cast<size_t>((b.offset[0] + i) * 40 + b.offset[1] + j)]);
    restore(MPI_COMM_WORLD, dir, {TensorState{"w", lay, DType::F32, got.data()}});
    EXPECT_EQ(got, want) << spec.to_string();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    std::fstream io((fs::path(dir) / "shard-0.h5").string(), std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(data_at + (5 * 40 + 39) * 4));  // row 5, column 39: tile (2, 2)
    io.put('\x55');
  }
  MPI_Barrier(MPI_COMM_WORLD);
  std::vector<float> all(240);
  try {
    restore(MPI_COMM_WORLD, dir, {TensorState{"w", Layout::replicated(shape, mesh), DType::F32, all.data()}});
    ADD_FAILURE() << "a damaged format 2 tile was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("checksum mismatch in block 8 (rows [4, 6), columns [32, 40))"), std::string::npos)
        << e.what();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

TEST(Checkpoint, ColumnRestoreReadsOnlyItsColumns) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "columns");
  MeshShape mesh({"tensor"}, {n});
  const Shape shape{64, 4096};  // f32: 16 KiB rows, 4 KiB column tiles, 1 MiB in all
  const std::int64_t total = 64 * 4096 * 4;
  Layout rows(shape, PartitionSpec{{"tensor"}, {}}, mesh), cols(shape, PartitionSpec{{}, {"tensor"}}, mesh);
  auto fill = [&](const Layout& l, bool sentinel) {
    std::vector<float> v(static_cast<size_t>(l.local_numel(rank)));
    const Box b = l.box(rank);
    for (std::int64_t r = 0; r < b.extent[0]; ++r)
      for (std::int64_t c = 0; c < b.extent[1]; ++c)
        v[static_cast<size_t>(r * b.extent[1] + c)] =
            sentinel ? -1.f : static_cast<float>((b.offset[0] + r) * 4096 + b.offset[1] + c);
    return v;
  };
  std::vector<float> saved = fill(rows, false);
  const std::string dir = Checkpointer(MPI_COMM_WORLD, root).save({TensorState{"w", rows, DType::F32, saved.data()}},
                                                                    sample_meta(1));
  const Manifest saved_manifest = read_manifest(dir);  // named: .at() on a temporary would dangle
  for (const auto& sh : saved_manifest.tensors.at(0).shards) EXPECT_EQ(sh.cols_per_block(), 1024);

  std::vector<float> got = fill(cols, true);
  RestoreStats st;
  RestoreOptions ro;
  ro.stats = &st;
  // tiles read with preadv: the process's read system calls carry the data
  long long before = 0, after = 0;
  with_tile_reads("0", [&] {
    before = rchar();
    restore(MPI_COMM_WORLD, root, {TensorState{"w", cols, DType::F32, got.data()}}, ro);
    after = rchar();
  });
  EXPECT_EQ(got, fill(cols, false));
  EXPECT_EQ(st.bytes_read, total / n) << "rank " << rank;
  if (before >= 0 && after >= 0) {
    // what the process read: the data, plus the files' metadata (checksum and HDF5) and,
    // on rank 0, the manifest: a few KiB per file
    EXPECT_GE(after - before, total / n);
    EXPECT_LE(after - before, total / n + 64 * 1024 * n) << "rank " << rank;
  }
  // tiles copied from a memory map: read from storage (cold page cache), only the pages of
  // the ranks' column tiles come in (counted over all ranks: a page one rank's request
  // brings in is in the cache for the others)
  got = fill(cols, true);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) evict_from_page_cache(dir);
  MPI_Barrier(MPI_COMM_WORLD);
  with_tile_reads("1", [&] {
    before = proc_io("read_bytes:");
    restore(MPI_COMM_WORLD, root, {TensorState{"w", cols, DType::F32, got.data()}}, ro);
    after = proc_io("read_bytes:");
  });
  EXPECT_EQ(got, fill(cols, false));
  EXPECT_EQ(st.bytes_read, total / n) << "rank " << rank;
  long long from_storage = before >= 0 ? after - before : -1, sum = 0, least = 0;
  MPI_Allreduce(&from_storage, &sum, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&from_storage, &least, 1, MPI_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  if (least >= 0 && sum > 0) {  // (0: storage reads not accounted on this machine)
    std::printf("rank %d: %lld bytes from storage, %lld over all ranks (tensor: %lld)\n", rank, from_storage, sum,
                static_cast<long long>(total));
    EXPECT_GE(sum, total);
    EXPECT_LE(sum, total + 64 * 1024 * n * n) << "read-around into columns no rank needs";
  }
  // restoring the saved layout reads exactly this rank's rows
  std::vector<float> same = fill(rows, true);
  restore(MPI_COMM_WORLD, root, {TensorState{"w", rows, DType::F32, same.data()}}, ro);
  EXPECT_EQ(same, saved);
  EXPECT_EQ(st.bytes_read, total / n);
  // in place (what train --resume does): the same data and the same bytes read, both layouts
  RestoreOptions ip = ro;
  ip.in_place = true;
  std::vector<float> same_ip = fill(rows, true), cols_ip = fill(cols, true);
  restore(MPI_COMM_WORLD, root, {TensorState{"w", rows, DType::F32, same_ip.data()}}, ip);
  EXPECT_EQ(same_ip, saved);
  EXPECT_EQ(st.bytes_read, total / n);
  restore(MPI_COMM_WORLD, root, {TensorState{"w", cols, DType::F32, cols_ip.data()}}, ip);
  EXPECT_EQ(cols_ip, fill(cols, false));
  EXPECT_EQ(st.bytes_read, total / n);

  // a damaged byte in the last column tile is found by the rank reading those columns
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    const ShardRecord sh = read_manifest(dir).tensors.at(0).shards.at(0);  // a copy: the manifest is a temporary
    std::fstream io((fs::path(dir) / sh.file).string(), std::ios::in | std::ios::out | std::ios::binary);
    // row 2, last column: in the last tile of the first row block (format 3: tiles stored one
    // after another, each [block_rows, block_cols] row-major)
    ASSERT_TRUE(sh.tiled);
    const std::int64_t tile = sh.col_blocks() - 1;
    const std::int64_t col_in_tile = 4095 - tile * sh.cols_per_block();
    io.seekp(static_cast<std::streamoff>(sh.file_offset + tile * sh.tile_bytes(4) +
                                         (2 * sh.cols_per_block() + col_in_tile) * 4));
    io.put('\x55');
  }
  MPI_Barrier(MPI_COMM_WORLD);
  std::vector<float> bad = fill(cols, true);
  const std::vector<float> untouched = bad;
  for (const char* mapped : {"1", "0"}) {  // tiles copied from a map, and read with preadv
    with_tile_reads(mapped, [&] {
      try {
        restore(MPI_COMM_WORLD, root, {TensorState{"w", cols, DType::F32, bad.data()}});
        ADD_FAILURE() << "a damaged column tile was accepted (SHARDFLOW_CKPT_MMAP=" << mapped << ")";
      } catch (const InputError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("'w'"), std::string::npos) << msg;
        const std::string tile =
            "checksum mismatch in block 3 (rows [0, " + std::to_string(64 / n) + "), columns [3072, 4096))";
        EXPECT_NE(msg.find(tile), std::string::npos) << msg;
      }
    });
    EXPECT_EQ(bad, untouched);
  }
  // in place, the damage is found the same way, and every rank throws
  try {
    RestoreOptions ipb;
    ipb.in_place = true;
    restore(MPI_COMM_WORLD, root, {TensorState{"w", cols, DType::F32, bad.data()}}, ipb);
    ADD_FAILURE() << "a damaged column tile was accepted in place";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    const std::string tile = "checksum mismatch in block 3 (rows [0, " + std::to_string(64 / n) + "), columns [3072, 4096))";
    EXPECT_NE(msg.find(tile), std::string::npos) << msg;
  }
  // a shard file cut short inside its tiles: a clear error naming the file on every rank,
  // by either read path (never a fault on a mapped page past the end)
  MPI_Barrier(MPI_COMM_WORLD);
  const ShardRecord cut = read_manifest(dir).tensors.at(0).shards.at(0);
  if (rank == 0) fs::resize_file(fs::path(dir) / cut.file, static_cast<std::uintmax_t>(cut.file_offset + cut.tile_bytes(4) / 2));
  MPI_Barrier(MPI_COMM_WORLD);
  for (const char* mapped : {"1", "0"})
    with_tile_reads(mapped, [&] {
      try {
        restore(MPI_COMM_WORLD, root, {TensorState{"w", cols, DType::F32, bad.data()}});
        ADD_FAILURE() << "a truncated shard file was accepted (SHARDFLOW_CKPT_MMAP=" << mapped << ")";
      } catch (const InputError& e) {
        EXPECT_NE(std::string(e.what()).find(cut.file), std::string::npos) << e.what();
      }
    });
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

TEST(Checkpoint, ReplicasWriteEachShardOnce) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "replicas");
  MeshShape mesh({"data"}, {n});
  State s = make_state(mesh, [](size_t, const Shape& sh) { return PartitionSpec::replicated(sh.size()); }, rank, false);
  Checkpointer ck(MPI_COMM_WORLD, root);
  const std::string dir = ck.save(s.tensors(), sample_meta(1));
  Manifest m = read_manifest(dir);
  std::set<int> writers;
  for (const auto& t : m.tensors) {
    EXPECT_EQ(t.shards.size(), numel(t.shape) > 0 ? 1u : 0u) << t.name;
    for (const auto& sh : t.shards) writers.insert(sh.writer);
  }
  if (n > 1) {
    EXPECT_GT(writers.size(), 1u) << "replicas should share the writing";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

TEST(Checkpoint, ConvertsDtypesOnRestore) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "dtypes");
  MeshShape mesh({"fsdp"}, {n});
  State saved = make_state(mesh, spec_family(mesh, 1), rank, false);
  Checkpointer(MPI_COMM_WORLD, root).save(saved.tensors(), sample_meta(3));
  // restore every float tensor as bf16 and as f32: values are small integers, exact in all
  for (DType target : {DType::BF16, DType::F32}) {
    std::vector<DType> dts;
    for (const auto& m : model()) dts.push_back(is_floating(m.dtype) ? target : m.dtype);
    State want = make_state(mesh, spec_family(mesh, 3), rank, false, &dts);
    State got = make_state(mesh, spec_family(mesh, 3), rank, true, &dts);
    restore(MPI_COMM_WORLD, root, got.tensors());
    expect_state_equals(got, want, "as " + dtype_name(target));
  }
  // integers cannot become floats
  std::vector<DType> bad;
  for (const auto& m : model()) bad.push_back(m.dtype == DType::I64 ? DType::F32 : m.dtype);
  State got = make_state(mesh, spec_family(mesh, 3), rank, true, &bad);
  EXPECT_THROW(restore(MPI_COMM_WORLD, root, got.tensors()), InputError);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

TEST(Checkpoint, AcrossWorldSizes) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "worlds");
  // save on a sub-communicator of ceil(n/2) ranks (n = 1: itself), restore on all n
  const int sub_n = (n + 1) / 2;
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, rank < sub_n ? 0 : 1, rank, &sub);
  if (rank < sub_n) {
    MeshShape m({"data"}, {sub_n});
    State s = make_state(m, spec_family(m, 1), rank, false);
    Checkpointer(sub, root).save(s.tensors(), sample_meta(10));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  for (const MeshShape& mesh : meshes_for(n)) {
    State want = make_state(mesh, spec_family(mesh, 4), rank, false);
    State got = make_state(mesh, spec_family(mesh, 4), rank, true);
    restore(MPI_COMM_WORLD, root, got.tensors());
    expect_state_equals(got, want, "saved on " + std::to_string(sub_n) + ", restored on " + mesh.to_string());
  }
  // and back: save on all n, restore on the sub-communicator and on rank 0 alone
  Checkpointer(MPI_COMM_WORLD, root).save(
      make_state(meshes_for(n).back(), spec_family(meshes_for(n).back(), 0), rank, false).tensors(), sample_meta(11));
  if (rank < sub_n) {
    MeshShape m({"tensor"}, {sub_n});
    State want = make_state(m, spec_family(m, 2), rank, false);
    State got = make_state(m, spec_family(m, 2), rank, true);
    restore(sub, root, got.tensors());
    expect_state_equals(got, want, "restored on the sub-communicator");
  }
  if (rank == 0) {
    State want = make_state(MeshShape(), spec_family(MeshShape(), 0), 0, false);
    State got = make_state(MeshShape(), spec_family(MeshShape(), 0), 0, true);
    Metadata md = restore(MPI_COMM_SELF, root, got.tensors());
    EXPECT_EQ(md.step, 11);
    expect_state_equals(got, want, "restored on one rank");
  }
  MPI_Comm_free(&sub);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

TEST(Checkpoint, AsyncSaveSnapshotsAndCommitsOnWait) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "async");
  MeshShape mesh({"data", "fsdp"}, {1, n});
  SaveOptions o;
  o.async = true;
  o.keep = 2;
  Checkpointer ck(MPI_COMM_WORLD, root, o);
  State s = make_state(mesh, spec_family(mesh, 1), rank, false);
  const State original = s;
  ck.save(s.tensors(), sample_meta(1));
  EXPECT_TRUE(ck.pending());
  for (auto& b : s.bufs) std::fill(b.begin(), b.end(), 0x5a);  // training goes on
  ck.save(s.tensors(), sample_meta(2));  // waits for and commits step 1 first
  EXPECT_TRUE(fs::exists(fs::path(root) / "step-00000001" / "manifest.json"));
  ck.wait();
  EXPECT_FALSE(ck.pending());
  State got = make_state(mesh, spec_family(mesh, 1), rank, true);
  restore(MPI_COMM_WORLD, (fs::path(root) / "step-00000001").string(), got.tensors());
  expect_state_equals(got, original, "async snapshot of step 1");
  Metadata md = restore(MPI_COMM_WORLD, root, got.tensors());
  EXPECT_EQ(md.step, 2);
  EXPECT_EQ(got.bufs, s.bufs);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

TEST(Checkpoint, RetentionKeepsTheNewest) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "keep");
  MeshShape mesh({"data"}, {n});
  SaveOptions o;
  o.keep = 2;
  Checkpointer ck(MPI_COMM_WORLD, root, o);
  State s = make_state(mesh, spec_family(mesh, 0), rank, false);
  for (int step : {5, 6, 8, 9}) ck.save(s.tensors(), sample_meta(step));
  std::vector<std::string> left = list_checkpoints(root);
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(fs::path(left[0]).filename(), "step-00000008");
  EXPECT_EQ(fs::path(left[1]).filename(), "step-00000009");
  EXPECT_EQ(fs::path(resolve_checkpoint_dir(root)).filename(), "step-00000009");
  // saving a step that exists is refused on every rank, and nothing changes
  EXPECT_THROW(ck.save(s.tensors(), sample_meta(9)), InputError);
  EXPECT_EQ(list_checkpoints(root).size(), 2u);
  ck.wait();  // retired checkpoints are deleted in the background: finish before removing the root
  if (rank == 0) {
    for (const auto& e : fs::directory_iterator(root)) {
      EXPECT_NE(e.path().filename().string().rfind(".trash-", 0), 0u) << e.path();
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

// The first save died after renaming its directory but before writing `latest`: the root
// still restores, from the newest step directory.
TEST(Checkpoint, RootWithoutLatestUsesNewestStep) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "nolatest");
  MeshShape mesh({"data"}, {n});
  State s = make_state(mesh, spec_family(mesh, 1), rank, false);
  Checkpointer ck(MPI_COMM_WORLD, root);
  ck.save(s.tensors(), sample_meta(3));
  ck.save(s.tensors(), sample_meta(4));
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove(fs::path(root) / "latest");
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(fs::path(resolve_checkpoint_dir(root)).filename(), "step-00000004");
  State got = make_state(mesh, spec_family(mesh, 1), rank, true);
  EXPECT_EQ(restore(MPI_COMM_WORLD, root, got.tensors()).step, 4);
  expect_state_equals(got, s, "without latest");
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

// A save killed while writing leaves .tmp-step-N behind; saving step N again replaces what
// it holds (shard files of other ranks, even a manifest) and commits only the new files.
TEST(Checkpoint, LeftoverOfAnInterruptedSaveIsReplaced) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "leftover");
  MeshShape mesh({"data"}, {n});
  State s = make_state(mesh, spec_family(mesh, 1), rank, false);
  if (rank == 0) {
    const fs::path tmp = fs::path(root) / ".tmp-step-00000003";
    fs::create_directories(tmp);
    for (const char* junk : {"shard-0.h5", "shard-99.h5", "manifest.json"}) std::ofstream(tmp / junk) << "junk";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  for (const bool async : {false, true}) {
    SaveOptions o;
    o.async = async;
    Checkpointer ck(MPI_COMM_WORLD, root, o);
    const std::string dir = ck.save(s.tensors(), sample_meta(async ? 4 : 3));
    ck.wait();
    std::set<std::string> want{"manifest.json"}, got;
    for (const auto& f : read_manifest(dir).files) want.insert(f.name);
    for (const auto& e : fs::directory_iterator(dir)) got.insert(e.path().filename().string());
    EXPECT_EQ(got, want);
    State back = make_state(mesh, spec_family(mesh, 1), rank, true);
    restore(MPI_COMM_WORLD, dir, back.tensors());
    expect_state_equals(back, s, async ? "async" : "sync");
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0 && !async) {  // a leftover for the async save too
      const fs::path tmp = fs::path(root) / ".tmp-step-00000004";
      fs::create_directories(tmp);
      std::ofstream(tmp / "shard-0.h5") << "junk";
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

// ---- corruption -------------------------------------------------------------------------

/// Saves a fresh checkpoint, lets rank 0 damage it, and checks that restore refuses it on
/// every rank with a message containing every string of `must_name`, buffers untouched.
void expect_refused(const std::string& tag, const std::function<void(const std::string& dir, const Manifest&)>& damage,
                    const std::vector<std::string>& must_name, bool rename_model = false) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, tag);
  MeshShape mesh({"data", "tensor"}, {n, 1});
  State s = make_state(mesh, spec_family(mesh, 1), rank, false);
  const std::string dir = Checkpointer(MPI_COMM_WORLD, root).save(s.tensors(), sample_meta(4));
  if (rank == 0) damage(dir, read_manifest(dir));
  MPI_Barrier(MPI_COMM_WORLD);
  MeshShape other({"fsdp"}, {n});
  State got = make_state(other, spec_family(other, 2), rank, true);
  const State untouched = got;
  std::vector<TensorState> ts = got.tensors();
  if (rename_model) ts[1].name = "layers.0.attn.qkv_renamed.weight";
  try {
    restore(MPI_COMM_WORLD, root, ts);
    ADD_FAILURE() << tag << ": restore accepted a damaged checkpoint";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    for (const auto& s2 : must_name) EXPECT_NE(msg.find(s2), std::string::npos) << tag << ": '" << s2 << "' not in: " << msg;
  }
  EXPECT_EQ(got.bufs, untouched.bufs) << tag << ": buffers modified";
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

/// `text` (a manifest, edited) with a valid manifest_crc32c: the checksum catches edits and
/// damage, not a crafted manifest (anyone can compute a CRC), so the checks behind it must
/// still refuse what a consistent-looking manifest says.
std::string with_valid_checksum(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text);
  j.erase("manifest_crc32c");
  const std::string body = j.dump();
  char b[16];
  std::snprintf(b, sizeof b, "%08x", shardflow::ckpt::crc32c(body.data(), body.size()));
  j["manifest_crc32c"] = b;
  return j.dump(1);
}

/// Where HDF5 says the raw data of `dataset` in `file` starts (its first tile, format 3),
/// independently of the manifest.
std::int64_t hdf5_data_offset(const std::string& file, const std::string& dataset) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  hid_t space = H5Dget_space(d);
  std::vector<hsize_t> origin(static_cast<size_t>(H5Sget_simple_extent_ndims(space)), 0);
  H5Sclose(space);
  unsigned mask = 0;
  haddr_t addr = HADDR_UNDEF;
  hsize_t bytes = 0;
  const herr_t rc = H5Dget_chunk_info_by_coord(d, origin.data(), &mask, &addr, &bytes);
  H5Dclose(d);
  H5Fclose(f);
  EXPECT_GE(rc, 0);
  EXPECT_NE(addr, HADDR_UNDEF);
  return static_cast<std::int64_t>(addr);
}

const ShardRecord& shard_of(const Manifest& m, const std::string& tensor) {
  for (const auto& t : m.tensors)
    if (t.name == tensor) return t.shards.at(0);
  throw std::runtime_error("no tensor " + tensor);
}

TEST(CheckpointCorruption, FlippedByte) {
  expect_refused("flip", [](const std::string& dir, const Manifest& m) {
    const ShardRecord& s = shard_of(m, "big");
    const std::string file = (fs::path(dir) / s.file).string();
    const std::int64_t off = hdf5_data_offset(file, "/big");
    EXPECT_EQ(off, s.file_offset);
    std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(static_cast<std::streamoff>(off + 1000));
    char c = 0;
    io.read(&c, 1);
    c ^= 0x10;
    io.seekp(static_cast<std::streamoff>(off + 1000));
    io.write(&c, 1);
  }, {"'big'", "shard-", "checksum"});
}

TEST(CheckpointCorruption, TruncatedShardFile) {
  expect_refused("trunc", [](const std::string& dir, const Manifest& m) {
    const std::string file = (fs::path(dir) / shard_of(m, "big").file).string();
    fs::resize_file(file, fs::file_size(file) / 2);
  }, {"shard-", ".h5"});
}

TEST(CheckpointCorruption, MissingShardFile) {
  expect_refused("missing", [](const std::string& dir, const Manifest& m) {
    fs::remove(fs::path(dir) / shard_of(m, "embed.weight").file);
  }, {"'embed.weight'", "shard-", "missing"});
}

TEST(CheckpointCorruption, DifferentModel) {
  expect_refused("model", [](const std::string&, const Manifest&) {}, {"qkv_renamed", "manifest.json"}, true);
  // a shape change is named as well
  expect_refused("shape", [](const std::string& dir, const Manifest&) {
    const std::string mf = (fs::path(dir) / "manifest.json").string();
    std::ifstream in(mf);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string t = ss.str();
    in.close();
    nlohmann::json j = nlohmann::json::parse(t);
    for (auto& jt : j["tensors"])
      if (jt["name"] == "layers.0.mlp_norm.weight") jt["shape"] = std::vector<int>{14};
    t = with_valid_checksum(j.dump(1));
    std::ofstream(mf, std::ios::trunc) << t;
  }, {"'layers.0.mlp_norm.weight'", "[14]", "[13]"});
}

TEST(CheckpointCorruption, DatasetOfWrongShape) {
  expect_refused("dsshape", [](const std::string& dir, const Manifest& m) {
    const std::string file = (fs::path(dir) / shard_of(m, "layers.0.attn.qkv.weight").file).string();
    hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "/layers.0.attn.qkv.weight", H5P_DEFAULT);
    hsize_t dims[2] = {5, 5};
    hid_t sp = H5Screate_simple(2, dims, nullptr);
    hid_t d = H5Dcreate2(f, "/layers.0.attn.qkv.weight", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Sclose(sp);
    H5Fclose(f);
    // give the manifest the changed file's size and metadata checksum, so that the check
    // of the dataset itself is reached (it would be refused as damaged metadata otherwise)
    Manifest m2 = read_manifest(dir);
    const std::string rel = shard_of(m, "layers.0.attn.qkv.weight").file;
    for (auto& fr : m2.files)
      if (fr.name == rel) {
        fr.size = static_cast<std::int64_t>(fs::file_size(file));
        fr.meta_crc32c = file_crc32c_outside(file, fr.size, m2.data_ranges(rel));
      }
    const std::string mf = (fs::path(dir) / "manifest.json").string();
    std::ofstream(mf, std::ios::trunc) << m2.to_json();
  }, {"'layers.0.attn.qkv.weight'", "shard-", "[5, 5]"});
}

// Damage to a shard file's HDF5 structure (any byte outside the raw data) or a changed size
// is found with plain reads before HDF5 parses the file.
TEST(CheckpointCorruption, DamagedMetadataRefusedBeforeHdf5) {
  for (const std::int64_t at : {std::int64_t(0), std::int64_t(40), std::int64_t(-1)}) {
    expect_refused("meta", [at](const std::string& dir, const Manifest& m) {
      const ShardRecord& s = shard_of(m, "big");
      const std::string file = (fs::path(dir) / s.file).string();
      // a byte outside every data range: `at`, or the last such byte of the file (HDF5
      // metadata written after the datasets' data)
      const auto ranges = m.data_ranges(s.file);
      auto in_data = [&](std::int64_t q) {
        for (const auto& r : ranges)
          if (q >= r.offset && q < r.offset + r.length) return true;
        return false;
      };
      std::int64_t pos = at >= 0 ? at : static_cast<std::int64_t>(fs::file_size(file)) - 1;
      while (at < 0 && pos > 0 && in_data(pos)) --pos;
      ASSERT_FALSE(in_data(pos)) << pos;
      std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
      io.seekg(static_cast<std::streamoff>(pos));
      char c = 0;
      io.read(&c, 1);
      c ^= 0x01;
      io.seekp(static_cast<std::streamoff>(pos));
      io.write(&c, 1);
    }, {"shard-", ".h5", "metadata checksum mismatch", "tensor '"});
  }
  expect_refused("grown", [](const std::string& dir, const Manifest& m) {
    std::ofstream((fs::path(dir) / shard_of(m, "big").file).string(), std::ios::app | std::ios::binary) << 'x';
  }, {"shard-", ".h5", "size", "tensor '"});
}

TEST(CheckpointCorruption, OldFormatRefusedWithReason) {
  expect_refused("v1", [](const std::string& dir, const Manifest&) {
    const std::string mf = (fs::path(dir) / "manifest.json").string();
    nlohmann::json j = nlohmann::json::parse(std::ifstream(mf));
    j["version"] = 1;
    j.erase("files");
    j.erase("manifest_crc32c");  // version 1 had none
    std::ofstream(mf, std::ios::trunc) << j.dump(1);
  }, {"manifest.json", "version 1 is no longer read"});
}

TEST(CheckpointCorruption, PathEscapingTheCheckpoint) {
  for (const std::string bad : {"../shard-0.h5", "/etc/passwd", "sub/../../x.h5"}) {
    expect_refused("escape", [bad](const std::string& dir, const Manifest&) {
      const std::string mf = (fs::path(dir) / "manifest.json").string();
      std::ifstream in(mf);
      std::stringstream ss;
      ss << in.rdbuf();
      std::string t = ss.str();
      in.close();
      auto pos = t.find("\"file\": \"shard-0.h5\"");
      ASSERT_NE(pos, std::string::npos);
      t.replace(pos, 20, "\"file\": \"" + bad + "\"");
      std::ofstream(mf, std::ios::trunc) << with_valid_checksum(t);
    }, {bad, "escapes", "tensor '"});
  }
}

TEST(CheckpointCorruption, VerifyReportsEveryProblem) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "verify");
  MeshShape mesh({"data"}, {n});
  State s = make_state(mesh, spec_family(mesh, 1), rank, false);
  SaveOptions o;
  o.block_bytes = 4096;  // many blocks
  const std::string dir = Checkpointer(MPI_COMM_WORLD, root, o).save(s.tensors(), sample_meta(4));
  VerifyReport good = verify(MPI_COMM_WORLD, root);
  EXPECT_TRUE(good.ok());
  EXPECT_GT(good.blocks, good.shards);
  if (rank == 0) {
    Manifest m = read_manifest(dir);
    const std::string file = (fs::path(dir) / shard_of(m, "big").file).string();
    const std::int64_t off = hdf5_data_offset(file, "/big");
    std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(off + 5));
    io.put('\x7f');
  }
  MPI_Barrier(MPI_COMM_WORLD);
  VerifyReport bad = verify(MPI_COMM_WORLD, root);
  ASSERT_EQ(bad.problems.size(), 1u);
  EXPECT_NE(bad.problems[0].find("'big'"), std::string::npos) << bad.problems[0];
  EXPECT_NE(bad.problems[0].find("block 0"), std::string::npos) << bad.problems[0];
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

TEST(CheckpointTools, ConsolidateReadableByHdf5AndH5dump) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "consolidate");
  MeshShape mesh({"data", "fsdp"}, {n, 1});
  State s = make_state(mesh, spec_family(mesh, 3), rank, false);
  Checkpointer(MPI_COMM_WORLD, root).save(s.tensors(), sample_meta(12));
  const std::string out = (fs::path(root) / "full.h5").string();
  consolidate(MPI_COMM_WORLD, root, out);
  if (rank == 0) {
    hid_t f = H5Fopen(out.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    for (size_t i = 0; i < model().size(); ++i) {
      const Spec& m = model()[i];
      hid_t d = H5Dopen2(f, ("/" + m.name).c_str(), H5P_DEFAULT);
      ASSERT_GE(d, 0) << m.name;
      hid_t sp = H5Dget_space(d);
      int nd = H5Sget_simple_extent_ndims(sp);
      std::vector<hsize_t> dims(static_cast<size_t>(nd));
      if (nd) H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
      EXPECT_EQ(Shape(dims.begin(), dims.end()), m.shape) << m.name;
      const std::int64_t cnt = numel(m.shape);
      if (m.dtype == DType::I64) {
        std::vector<long long> v(static_cast<size_t>(cnt));
        if (cnt) H5Dread(d, H5T_NATIVE_LLONG, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
        for (std::int64_t g = 0; g < cnt; ++g) EXPECT_EQ(v[static_cast<size_t>(g)], static_cast<long long>(value_of(i, g)));
      } else {
        hid_t ty = H5Dget_type(d);
        EXPECT_TRUE(H5Tequal(ty, H5T_IEEE_F32LE) > 0) << m.name;
        H5Tclose(ty);
        std::vector<float> v(static_cast<size_t>(cnt));
        if (cnt) H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
        for (std::int64_t g = 0; g < cnt; ++g)
          ASSERT_EQ(v[static_cast<size_t>(g)], static_cast<float>(value_of(i, g))) << m.name << " at " << g;
      }
      H5Sclose(sp);
      H5Dclose(d);
    }
    hid_t a = H5Aopen_by_name(f, "/", "step", H5P_DEFAULT, H5P_DEFAULT);
    long long step = 0;
    H5Aread(a, H5T_NATIVE_LLONG, &step);
    H5Aclose(a);
    EXPECT_EQ(step, 12);
    H5Fclose(f);
    // h5dump (hdf5-tools) reads it without shardflow
    const std::string cmd = "h5dump -d /embed.weight -A 0 " + out + " 2>&1; h5dump -a /data_position " + out + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::string text;
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, got);
    int rc = pclose(p);
    if (rc != 0 && text.find("not found") != std::string::npos && text.find("h5dump") != std::string::npos) {
      GTEST_SKIP() << "h5dump is not installed";
    }
    EXPECT_EQ(rc, 0) << text;
    EXPECT_NE(text.find("DATASET \"/embed.weight\""), std::string::npos) << text.substr(0, 2000);
    EXPECT_NE(text.find("H5T_IEEE_F32LE"), std::string::npos);
    EXPECT_NE(text.find("DATASPACE  SIMPLE { ( 37, 12 )"), std::string::npos) << text.substr(0, 2000);
    EXPECT_NE(text.find("123456789012345"), std::string::npos) << text.substr(0, 2000);
    // first values of embed.weight: value_of(0, g) = (7 g) % 251 - 125
    EXPECT_NE(text.find("(0,0): -125, -118, -111"), std::string::npos) << text.substr(0, 2000);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

TEST(CheckpointTools, DescribeNamesEverything) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "describe");
  MeshShape mesh({"data"}, {n});
  State s = make_state(mesh, spec_family(mesh, 1), rank, false);
  Checkpointer(MPI_COMM_WORLD, root).save(s.tensors(), sample_meta(21));
  if (rank == 0) {
    std::string d = describe(root);
    EXPECT_NE(d.find("step 21"), std::string::npos) << d;
    for (const auto& m : model()) EXPECT_NE(d.find(m.name), std::string::npos) << d;
    EXPECT_NE(d.find("data_position = 123456789012345"), std::string::npos) << d;
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

TEST(Checkpoint, RefusesBadRequests) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "bad");
  MeshShape mesh({"data"}, {n});
  State s = make_state(mesh, spec_family(mesh, 1), rank, false);
  Checkpointer ck(MPI_COMM_WORLD, root);
  auto ts = s.tensors();
  ts[0].name = "a/b";
  EXPECT_THROW(ck.save(ts, sample_meta(1)), InputError);
  ts = s.tensors();
  ts[1].name = ts[0].name;
  EXPECT_THROW(ck.save(ts, sample_meta(1)), InputError);
  EXPECT_THROW(restore(MPI_COMM_WORLD, root, s.tensors()), InputError);  // nothing saved yet
  EXPECT_TRUE(list_checkpoints(root).empty());
  // a refused save leaves nothing behind (sync saves report request errors at commit)
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    for (const auto& e : fs::directory_iterator(root)) ADD_FAILURE() << "left behind: " << e.path();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}

}  // namespace

// consolidate never overwrites: not its earlier output, not the checkpoint's own files
// (issue 15 item 1: `ckpt consolidate ck ck/latest` used to replace `latest`).
TEST(CheckpointTools, ConsolidateRefusesAnExistingOutput) {
  const int n = world_size(), rank = world_rank();
  const std::string root = shared_tmpdir(MPI_COMM_WORLD, "consolidate_existing");
  MeshShape mesh({"data", "fsdp"}, {n, 1});
  State s = make_state(mesh, spec_family(mesh, 3), rank, false);
  Checkpointer(MPI_COMM_WORLD, root).save(s.tensors(), sample_meta(12));
  const std::string out = (fs::path(root) / "full.h5").string();
  consolidate(MPI_COMM_WORLD, root, out);
  const std::string latest = (fs::path(root) / "latest").string();
  for (const std::string& target : {out, latest}) {
    std::string before;
    if (rank == 0) {
      std::ifstream f(target, std::ios::binary);
      before.assign(std::istreambuf_iterator<char>(f), {});
    }
    try {
      consolidate(MPI_COMM_WORLD, root, target);
      ADD_FAILURE() << "consolidate overwrote " << target;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("exists already"), std::string::npos) << e.what();
    }
    if (rank == 0) {
      std::ifstream f(target, std::ios::binary);
      EXPECT_EQ(std::string(std::istreambuf_iterator<char>(f), {}), before) << target;
      for (const auto& e : fs::directory_iterator(root))
        EXPECT_EQ(e.path().string().find("shardflow-tmp"), std::string::npos) << e.path();
    }
  }
  EXPECT_TRUE(verify(MPI_COMM_WORLD, root).problems.empty());
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(root);
}
