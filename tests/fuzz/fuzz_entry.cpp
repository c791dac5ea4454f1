// Bodies of the checkpoint-reader fuzz harnesses (see fuzz_entry.hpp).
#include "fuzz_entry.hpp"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "ckpt/manifest.hpp"
#include "ckpt/tools.hpp"
#include "core/error.hpp"
#include "core/half.hpp"

namespace shardflow::fuzz {
namespace {
namespace fs = std::filesystem;
using namespace shardflow::ckpt;

constexpr std::int64_t kStep = 1;

struct Saved {
  std::string name;
  Shape shape;
  DType dtype;
  std::vector<unsigned char> bytes;  // the full tensor, row-major
};

struct State {
  fs::path tmp;       // the temporary directory
  fs::path pristine;  // tmp/pristine/step-00000001
  fs::path work;      // tmp/work/step-00000001 (damaged copy)
  std::vector<Saved> tensors;
};
State* g_state = nullptr;

MeshShape one_rank_mesh() { return MeshShape({"data"}, {1}); }

template <typename T>
void put(std::vector<unsigned char>& out, T v) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.insert(out.end(), b, b + sizeof(T));
}

std::vector<Saved> make_tensors() {
  std::vector<Saved> ts;
  Saved w{"w", {6, 5}, DType::F32, {}};
  for (int i = 0; i < 30; ++i) put(w.bytes, static_cast<float>(i) * 0.5f - 3.0f);
  Saved b{"b", {7}, DType::BF16, {}};
  for (int i = 0; i < 7; ++i) put(b.bytes, to_bf16(static_cast<float>(i) - 2.0f));
  Saved n{"n", {}, DType::I64, {}};
  put(n.bytes, static_cast<std::int64_t>(1234567890123));
  Saved e{"e", {0, 3}, DType::F32, {}};
  ts.push_back(std::move(w));
  ts.push_back(std::move(b));
  ts.push_back(std::move(n));
  ts.push_back(std::move(e));
  return ts;
}

std::vector<TensorState> states(std::vector<Saved>& ts) {
  std::vector<TensorState> out;
  for (auto& t : ts)
    out.push_back({t.name, Layout::replicated(t.shape, one_rank_mesh()), t.dtype, t.bytes.empty() ? nullptr : t.bytes.data()});
  return out;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_all(const fs::path& p, const void* data, std::size_t size) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", p.c_str());
    std::abort();
  }
}

// SHARDFLOW_FUZZ_VERBOSE=1 prints why each input was rejected.
void note(const char* what, const Error& e) {
  static const bool verbose = std::getenv("SHARDFLOW_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "  %s: %s\n", what, e.what());
}

void remove_tmp() {
  if (g_state) {
    std::error_code ec;
    fs::remove_all(g_state->tmp, ec);
  }
}

}  // namespace

void init_checkpoint_harness() {
  if (g_state) return;
  const char* base = std::getenv("TMPDIR");
  std::string templ = std::string(base && *base ? base : "/tmp") + "/shardflow-fuzz-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) {
    std::perror("fuzz: mkdtemp");
    std::abort();
  }
  g_state = new State;
  g_state->tmp = buf.data();
  std::atexit(remove_tmp);
  g_state->tensors = make_tensors();
  auto ts = g_state->tensors;  // save from a copy: the originals stay the reference values
  {
    Checkpointer ck(MPI_COMM_SELF, (g_state->tmp / "pristine").string(), SaveOptions{0, false, 64});
    Metadata meta;
    meta.step = kStep;
    meta.ints["data_position"] = 77;
    meta.reals["loss"] = 2.5;
    meta.strings["deck"] = "[model]\nlayers = 1\n";
    meta.blobs["rng"] = {1, 2, 3, 255};
    auto st = states(ts);
    g_state->pristine = ck.save(st, meta);
  }
  g_state->work = g_state->tmp / "work" / g_state->pristine.filename();
  fs::create_directories(g_state->work);
}

void cleanup() {
  remove_tmp();
  delete g_state;
  g_state = nullptr;
}

Outcome fuzz_manifest(const std::uint8_t* data, std::size_t size, std::string* why) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  Manifest m;
  try {
    m = Manifest::parse(text, "fuzz/manifest.json");
    m.validate("fuzz/manifest.json");
  } catch (const Error& e) {
    note("manifest", e);
    if (why) *why = e.what();
    return Outcome::Rejected;
  }
  for (const auto& t : m.tensors) (void)coverage_problem(t);
  // An accepted manifest must round trip exactly.
  const std::string once = m.to_json();
  Manifest again;
  try {
    again = Manifest::parse(once, "fuzz/roundtrip");
    again.validate("fuzz/roundtrip");
  } catch (const Error& e) {
    std::fprintf(stderr, "fuzz: an accepted manifest does not re-parse: %s\n", e.what());
    std::abort();
  }
  if (again.to_json() != once) {
    std::fprintf(stderr, "fuzz: manifest round trip changed it:\n%s\n---\n%s\n", once.c_str(), again.to_json().c_str());
    std::abort();
  }
  return Outcome::Accepted;
}

Outcome fuzz_checkpoint(const std::uint8_t* data, std::size_t size, bool* restored_ok, std::string* why) {
  if (restored_ok) *restored_ok = false;
  if (size < 1) return Outcome::Rejected;
  State& s = *g_state;
  // a fresh copy of the pristine checkpoint, one file replaced by the input
  for (const auto& entry : fs::directory_iterator(s.work)) fs::remove(entry.path());
  for (const auto& entry : fs::directory_iterator(s.pristine))
    fs::copy_file(entry.path(), s.work / entry.path().filename());
  const fs::path target = s.work / ((data[0] & 1) == 0 ? "manifest.json" : "shard-0.h5");
  write_all(target, data + 1, size - 1);

  Outcome outcome = Outcome::Rejected;
  std::vector<Saved> out = s.tensors;
  for (auto& t : out) std::fill(t.bytes.begin(), t.bytes.end(), static_cast<unsigned char>(0xA5));
  try {
    auto st = states(out);
    Metadata meta = restore(MPI_COMM_SELF, s.work.string(), st);
    outcome = Outcome::Accepted;
    if (restored_ok) {
      bool same = meta.step == kStep;
      for (size_t i = 0; i < out.size(); ++i) same = same && out[i].bytes == s.tensors[i].bytes;
      *restored_ok = same;
    }
  } catch (const Error& e) {
    note("restore", e);
    if (why) *why = e.what();
  }
  try {
    (void)verify(MPI_COMM_SELF, s.work.string());
  } catch (const Error& e) {
    note("verify", e);
  }
  try {
    (void)describe(s.work.string());
  } catch (const Error& e) {
    note("describe", e);
  }
  return outcome;
}

void write_seeds(const std::string& dir) {
  State& s = *g_state;
  const fs::path mdir = fs::path(dir) / "manifest", cdir = fs::path(dir) / "checkpoint";
  fs::create_directories(mdir);
  fs::create_directories(cdir);
  const std::string manifest = read_all(s.pristine / "manifest.json");
  const std::string shard = read_all(s.pristine / "shard-0.h5");
  write_all(mdir / "saved_manifest.json", manifest.data(), manifest.size());
  // a manifest of a 2-rank save: tensor 'w' split in rows over 'data', the rest replicated
  Manifest two = Manifest::parse(manifest, "seed");
  two.world_size = 2;
  for (auto& t : two.tensors) {
    t.mesh = MeshShape({"data"}, {2});
    if (t.name != "w") continue;
    t.spec = "('data', None)";
    ShardRecord a = t.shards.at(0), b = a;
    a.box = Box{{0, 0}, {3, 5}};
    b.box = Box{{3, 0}, {3, 5}};
    b.file = "shard-1.h5";
    b.writer = 1;
    a.crc32c.resize(static_cast<size_t>(num_blocks(a.box.extent, a.block_rows, a.cols_per_block())), 0x12345678u);
    b.crc32c.resize(static_cast<size_t>(num_blocks(b.box.extent, b.block_rows, b.cols_per_block())), 0x9abcdef0u);
    t.shards = {a, b};
  }
  FileRecord second = two.files.at(0);
  second.name = "shard-1.h5";
  second.meta_crc32c = 0x0badf00du;
  two.files.push_back(second);
  const std::string two_text = two.to_json();
  write_all(mdir / "two_rank_manifest.json", two_text.data(), two_text.size());
  const std::string cm = "0" + manifest;  // '0' (0x30) is even: replaces manifest.json
  write_all(cdir / "saved_manifest", cm.data(), cm.size());
  const std::string cs = "1" + shard;  // '1' (0x31) is odd: replaces shard-0.h5
  write_all(cdir / "saved_shard", cs.data(), cs.size());
}

}  // namespace shardflow::fuzz
