#include "ckpt/checkpoint.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "ckpt/checksum.hpp"
#include "ckpt/impl/ckpt_internal.hpp"
#include "ckpt/impl/hdf5_util.hpp"
#include "core/mpi_check.hpp"

namespace shardflow::ckpt {

namespace fs = std::filesystem;
using ::shardflow::detail::concat;
using nlohmann::json;

namespace {

int comm_rank(MPI_Comm c) {
  int r = 0;
  CHECK_MPI(MPI_Comm_rank(c, &r));
  return r;
}
int comm_size(MPI_Comm c) {
  int s = 0;
  CHECK_MPI(MPI_Comm_size(c, &s));
  return s;
}

std::string step_dir_name(std::int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step-%08lld", static_cast<long long>(step));
  return b;
}

bool parse_step_dir_name(const std::string& name, std::int64_t* step) {
  if (name.size() < 6 || name.compare(0, 5, "step-") != 0) return false;
  std::int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || i > 5 + 17) return false;
    v = v * 10 + (name[i] - '0');
  }
  if (step) *step = v;
  return true;
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

std::string random_nonce() {
  std::random_device rd;
  std::uniform_int_distribution<unsigned long long> d;
  char b[32];
  std::snprintf(b, sizeof b, "%llx-%d", d(rd) & 0xffffffffffULL, static_cast<int>(::getpid()));
  return b;
}

/// One shard this rank writes.
struct ShardJob {
  std::size_t tensor = 0;
  std::string name;
  Box box;
  DType dtype = DType::F32;
  const unsigned char* data = nullptr;
  std::size_t bytes = 0;
  detail::HostBuffer owned;  // async: the snapshot `data` points into
  // results
  std::int64_t block_rows = 1;
  std::vector<std::uint32_t> crc;
};

/// Writes the jobs into `path` (one HDF5 file); fsyncs it. Each checksum block is
/// checksummed and written right after, while it is still in cache.
void write_shard_file(const std::string& path, std::vector<ShardJob>& jobs, std::int64_t block_bytes) {
  std::lock_guard<std::recursive_mutex> lock(h5::mutex());
  h5::init();
  h5::Handle file = h5::file_create(path);
  for (auto& j : jobs) {
    const std::size_t esize = dtype_size(j.dtype);
    j.block_rows = block_rows_for(j.box.extent, esize, block_bytes);
    const std::int64_t nb = num_blocks(j.box.extent, j.block_rows);
    const std::int64_t row = row_numel(j.box.extent);
    const std::size_t row_bytes = static_cast<std::size_t>(row) * esize;
    j.crc.resize(static_cast<size_t>(nb));
    h5::Handle space;
    std::vector<hsize_t> dims(j.box.extent.begin(), j.box.extent.end());
    if (dims.empty()) space = h5::Handle(CHECK_HDF5(H5Screate(H5S_SCALAR)), H5Sclose);
    else space = h5::Handle(CHECK_HDF5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)), H5Sclose);
    h5::Handle ftype = h5::file_type(j.dtype);
    h5::Handle ds(CHECK_HDF5(H5Dcreate2(file, ("/" + j.name).c_str(), ftype, space, H5P_DEFAULT, H5P_DEFAULT,
                                        H5P_DEFAULT)),
                  H5Dclose);
    h5::Handle mtype = h5::memory_type(j.dtype);
    if (dims.empty()) {
      j.crc[0] = crc32c(j.data, j.bytes);
      CHECK_HDF5(H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, j.data));
    }
    for (std::int64_t b = 0; b < nb && !dims.empty(); ++b) {
      const std::int64_t r0 = b * j.block_rows;
      const std::int64_t r1 = std::min(j.box.extent[0], r0 + j.block_rows);
      const unsigned char* p = j.data + static_cast<std::size_t>(r0) * row_bytes;
      const std::size_t len = static_cast<std::size_t>(r1 - r0) * row_bytes;
      j.crc[static_cast<size_t>(b)] = crc32c(p, len);
      std::vector<hsize_t> start(dims.size(), 0), cnt(dims);
      start[0] = static_cast<hsize_t>(r0);
      cnt[0] = static_cast<hsize_t>(r1 - r0);
      CHECK_HDF5(H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, cnt.data(), nullptr));
      hsize_t n = static_cast<hsize_t>((r1 - r0) * row);
      h5::Handle mspace(CHECK_HDF5(H5Screate_simple(1, &n, nullptr)), H5Sclose);
      CHECK_HDF5(H5Dwrite(ds, mtype, mspace, space, H5P_DEFAULT, p));
    }
    h5::write_attr_string(ds, "tensor", j.name);
    h5::write_attr_string(ds, "dtype", dtype_name(j.dtype));
    h5::write_attr_i64(ds, "offset", std::vector<long long>(j.box.offset.begin(), j.box.offset.end()));
    ds.close();
  }
  CHECK_HDF5(H5Fflush(file, H5F_SCOPE_GLOBAL));
  file.close();
  detail::fsync_path(path, false);
}

json records_to_json(const std::vector<ShardJob>& jobs, const std::string& file, int rank) {
  json a = json::array();
  for (const auto& j : jobs) {
    json r;
    r["tensor"] = j.tensor;
    r["offset"] = j.box.offset;
    r["extent"] = j.box.extent;
    r["file"] = file;
    r["block_rows"] = j.block_rows;
    r["crc"] = j.crc;
    r["writer"] = rank;
    a.push_back(r);
  }
  return a;
}

/// Gathers one string per rank onto `root`.
std::vector<std::string> gather_strings(MPI_Comm comm, const std::string& s, int root) {
  const int size = comm_size(comm), rank = comm_rank(comm);
  int n = static_cast<int>(s.size());
  std::vector<int> sizes(static_cast<size_t>(size)), displs(static_cast<size_t>(size));
  CHECK_MPI(MPI_Gather(&n, 1, MPI_INT, sizes.data(), 1, MPI_INT, root, comm));
  std::string all;
  if (rank == root) {
    int total = 0;
    for (int r = 0; r < size; ++r) {
      displs[static_cast<size_t>(r)] = total;
      total += sizes[static_cast<size_t>(r)];
    }
    all.resize(static_cast<size_t>(total));
  }
  CHECK_MPI(MPI_Gatherv(s.data(), n, MPI_CHAR, all.data(), sizes.data(), displs.data(), MPI_CHAR, root, comm));
  std::vector<std::string> out;
  if (rank == root)
    for (int r = 0; r < size; ++r)
      out.push_back(all.substr(static_cast<size_t>(displs[static_cast<size_t>(r)]),
                               static_cast<size_t>(sizes[static_cast<size_t>(r)])));
  return out;
}

void remove_quietly(const std::string& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

}  // namespace

// ---- Checkpointer -----------------------------------------------------------------------

struct Checkpointer::Pending {
  std::int64_t step = 0;
  std::string tmp_dir, final_dir, file_name;
  Manifest skeleton;  // tensors without shards; rank 0 fills them in
  std::vector<ShardJob> jobs;
  std::thread thread;
  std::string error;  // of the local write
};

Checkpointer::Checkpointer(MPI_Comm comm, std::string root, SaveOptions options)
    : comm_(comm), root_(std::move(root)), opts_(options) {
  SHARDFLOW_REQUIRE_INPUT(!root_.empty(), "Checkpointer: empty checkpoint directory");
  SHARDFLOW_REQUIRE_INPUT(opts_.keep >= 0, "Checkpointer: keep = ", opts_.keep, " must be >= 0");
  SHARDFLOW_REQUIRE_INPUT(opts_.block_bytes >= 1, "Checkpointer: block_bytes = ", opts_.block_bytes, " must be >= 1");
  std::string err;
  if (comm_rank(comm_) == 0) {
    std::error_code ec;
    fs::create_directories(root_, ec);
    if (ec || !fs::is_directory(root_)) err = concat("Checkpointer: cannot create directory '", root_, "': ", ec.message());
  }
  detail::agree(comm_, err);
}

Checkpointer::~Checkpointer() {
  if (pending_ && pending_->thread.joinable()) pending_->thread.join();
}

bool Checkpointer::pending() const { return pending_ != nullptr; }

std::string Checkpointer::save(const std::vector<TensorState>& tensors, const Metadata& meta) {
  wait();
  const int rank = comm_rank(comm_), size = comm_size(comm_);
  auto p = std::make_unique<Pending>();
  p->step = meta.step;
  p->final_dir = detail::join(root_, step_dir_name(meta.step));
  p->file_name = concat("shard-", rank, ".h5");

  // validate the request (every rank sees the same tensors; data pointers are local)
  std::string err;
  try {
    SHARDFLOW_REQUIRE_INPUT(meta.step >= 0, "checkpoint save: step ", meta.step, " must be >= 0");
    std::set<std::string> names;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorState& t = tensors[i];
      SHARDFLOW_REQUIRE_INPUT(is_valid_tensor_name(t.name), "checkpoint save: invalid tensor name '", t.name,
                              "' (must be non-empty without '/')");
      SHARDFLOW_REQUIRE_INPUT(names.insert(t.name).second, "checkpoint save: tensor '", t.name, "' given twice");
      SHARDFLOW_REQUIRE_INPUT(t.layout.mesh().size() == size, "checkpoint save: tensor '", t.name, "' has a layout on mesh ",
                              t.layout.mesh().to_string(), " of ", t.layout.mesh().size(), " ranks, but the communicator has ",
                              size);
      const std::int64_t local = t.layout.holds(rank) ? t.layout.local_numel(rank) : 0;
      SHARDFLOW_REQUIRE_INPUT(local == 0 || t.data != nullptr, "checkpoint save: tensor '", t.name, "' has no data on rank ",
                              rank, " (box ", t.layout.box(rank).to_string(), ")");
      TensorRecord rec;
      rec.name = t.name;
      rec.shape = t.layout.global_shape();
      rec.dtype = t.dtype;
      rec.spec = t.layout.spec().to_string();
      rec.mesh = t.layout.mesh();
      rec.pinned = t.layout.pinned();
      p->skeleton.tensors.push_back(std::move(rec));
      if (local == 0) continue;
      // replicas take turns: the i-th tensor is written by replica i mod (number of replicas)
      std::vector<int> reps = t.layout.replicas(rank);
      if (reps[i % reps.size()] != rank) continue;
      ShardJob j;
      j.tensor = i;
      j.name = t.name;
      j.box = t.layout.box(rank);
      j.dtype = t.dtype;
      j.bytes = static_cast<std::size_t>(local) * dtype_size(t.dtype);
      j.data = static_cast<const unsigned char*>(t.data);
      p->jobs.push_back(std::move(j));
    }
  } catch (const std::exception& e) {
    err = e.what();
  }
  detail::agree(comm_, err);

  // rank 0 prepares the temporary directory
  std::string tmp;
  if (rank == 0) {
    try {
      std::error_code ec;
      SHARDFLOW_REQUIRE_INPUT(!fs::exists(p->final_dir, ec), "checkpoint save: '", p->final_dir,
                              "' exists already (a checkpoint of step ", meta.step, ")");
      tmp = detail::join(root_, ".tmp-" + step_dir_name(meta.step) + "-" + random_nonce());
      fs::create_directory(tmp, ec);
      SHARDFLOW_REQUIRE(!ec, "checkpoint save: cannot create '", tmp, "': ", ec.message());
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  detail::agree(comm_, err);
  p->tmp_dir = detail::bcast_string(comm_, tmp, 0);
  p->skeleton.step = meta.step;
  p->skeleton.world_size = size;
  p->skeleton.meta = meta;

  const std::string path = detail::join(p->tmp_dir, p->file_name);
  const std::int64_t block_bytes = opts_.block_bytes;
  if (opts_.async) {
    for (auto& j : p->jobs) {  // snapshot: training may modify its buffers from now on
      j.owned = detail::HostBuffer(j.bytes);
      std::memcpy(j.owned.data(), j.data, j.bytes);
      j.data = j.owned.data();
    }
    Pending* raw = p.get();
    raw->thread = std::thread([raw, path, block_bytes] {
      try {
        if (!raw->jobs.empty()) write_shard_file(path, raw->jobs, block_bytes);
      } catch (const std::exception& e) {
        raw->error = e.what();
      }
    });
    pending_ = std::move(p);
    return pending_->final_dir;
  }
  try {
    if (!p->jobs.empty()) write_shard_file(path, p->jobs, block_bytes);
  } catch (const std::exception& e) {
    p->error = e.what();
  }
  commit(*p);
  return p->final_dir;
}

void Checkpointer::wait() {
  if (!pending_) return;
  std::unique_ptr<Pending> p = std::move(pending_);
  if (p->thread.joinable()) p->thread.join();
  commit(*p);
}

void Checkpointer::commit(Pending& p) {
  const int rank = comm_rank(comm_);
  // 1. every rank's file is written and fsynced (or the save fails everywhere)
  std::string err = p.error.empty() ? std::string() : concat("checkpoint save to '", p.tmp_dir, "' failed: ", p.error);
  try {
    detail::agree(comm_, err);
  } catch (...) {
    if (rank == 0) remove_quietly(p.tmp_dir);
    throw;
  }
  // 2. rank 0 gathers the shard records, writes the manifest and commits
  std::vector<std::string> recs =
      gather_strings(comm_, records_to_json(p.jobs, p.file_name, rank).dump(), 0);
  err.clear();
  if (rank == 0) {
    try {
      Manifest m = p.skeleton;
      m.created = utc_now();
      for (const auto& text : recs) {
        for (const json& r : json::parse(text)) {
          ShardRecord s;
          const size_t ti = r.at("tensor").get<size_t>();
          s.box.offset = r.at("offset").get<Shape>();
          s.box.extent = r.at("extent").get<Shape>();
          s.file = r.at("file").get<std::string>();
          s.dataset = "/" + m.tensors.at(ti).name;
          s.block_rows = r.at("block_rows").get<std::int64_t>();
          s.crc32c = r.at("crc").get<std::vector<std::uint32_t>>();
          s.writer = r.at("writer").get<int>();
          m.tensors.at(ti).shards.push_back(std::move(s));
        }
      }
      m.validate(p.tmp_dir);
      for (const auto& t : m.tensors) {
        std::string problem = coverage_problem(t);
        SHARDFLOW_REQUIRE(problem.empty(), "checkpoint save: tensor '", t.name, "': ", problem,
                          " (do the layouts cover their tensors?)");
      }
      detail::write_file_durably(detail::join(p.tmp_dir, "manifest.json"), m.to_json());
      detail::fsync_path(p.tmp_dir, true);
      std::error_code ec;
      fs::rename(p.tmp_dir, p.final_dir, ec);
      SHARDFLOW_REQUIRE(!ec, "checkpoint save: cannot rename '", p.tmp_dir, "' to '", p.final_dir, "': ", ec.message());
      detail::fsync_path(root_, true);
      // the latest pointer: write a temporary file, fsync, rename over
      const std::string latest_tmp = detail::join(root_, ".latest-" + random_nonce());
      detail::write_file_durably(latest_tmp, step_dir_name(p.step) + "\n");
      fs::rename(latest_tmp, detail::join(root_, "latest"), ec);
      SHARDFLOW_REQUIRE(!ec, "checkpoint save: cannot update '", detail::join(root_, "latest"), "': ", ec.message());
      detail::fsync_path(root_, true);
      // retention, and leftovers of interrupted saves
      std::vector<std::string> done = list_checkpoints(root_);
      if (opts_.keep > 0 && static_cast<int>(done.size()) > opts_.keep) {
        const std::string newest = step_dir_name(p.step);
        for (size_t i = 0; i + static_cast<size_t>(opts_.keep) < done.size(); ++i) {
          if (fs::path(done[i]).filename() == newest) continue;
          const std::string trash = detail::join(root_, ".trash-" + fs::path(done[i]).filename().string() + "-" + random_nonce());
          fs::rename(done[i], trash, ec);
          if (!ec) remove_quietly(trash);
        }
      }
      for (const auto& e : fs::directory_iterator(root_, ec)) {
        const std::string n = e.path().filename().string();
        if ((n.rfind(".tmp-", 0) == 0 || n.rfind(".trash-", 0) == 0 || n.rfind(".latest-", 0) == 0) &&
            e.path().string() != p.tmp_dir)
          remove_quietly(e.path().string());
      }
    } catch (const std::exception& e) {
      err = e.what();
      remove_quietly(p.tmp_dir);
    }
  }
  detail::agree(comm_, err);
}

// ---- restore ----------------------------------------------------------------------------

std::string resolve_checkpoint_dir(const std::string& path) {
  std::error_code ec;
  SHARDFLOW_REQUIRE_INPUT(fs::is_directory(path, ec), "checkpoint: '", path, "' is not a directory");
  if (fs::is_regular_file(detail::join(path, "manifest.json"), ec)) return path;
  const std::string latest = detail::join(path, "latest");
  if (!fs::is_regular_file(latest, ec)) {
    // A crash between the directory rename and the pointer update of the first save leaves
    // a complete step directory and no pointer: step directories only ever appear complete
    // (renamed from a finished temporary directory), so the newest one is the checkpoint.
    std::vector<std::string> done = list_checkpoints(path);
    SHARDFLOW_REQUIRE_INPUT(!done.empty(), "checkpoint: '", path,
                            "' holds neither manifest.json, nor a 'latest' pointer, nor a step-* checkpoint");
    return done.back();
  }
  std::string name = detail::read_text_file(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
  SHARDFLOW_REQUIRE_INPUT(parse_step_dir_name(name, nullptr), "checkpoint: '", latest, "' does not name a step directory: '",
                          name, "'");
  const std::string dir = detail::join(path, name);
  SHARDFLOW_REQUIRE_INPUT(fs::is_regular_file(detail::join(dir, "manifest.json"), ec), "checkpoint: '", latest,
                          "' points to '", dir, "', which holds no manifest.json");
  return dir;
}

Manifest read_manifest(const std::string& step_dir) {
  const std::string where = detail::join(step_dir, "manifest.json");
  Manifest m = Manifest::parse(detail::read_text_file(where), where);
  m.validate(where);
  return m;
}

std::vector<std::string> list_checkpoints(const std::string& root) {
  std::vector<std::pair<std::int64_t, std::string>> v;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    std::int64_t step = 0;
    if (e.is_directory(ec) && parse_step_dir_name(e.path().filename().string(), &step) &&
        fs::is_regular_file(e.path() / "manifest.json", ec))
      v.emplace_back(step, e.path().string());
  }
  std::sort(v.begin(), v.end());
  std::vector<std::string> out;
  for (auto& [s, p] : v) out.push_back(p);
  return out;
}

Metadata restore(MPI_Comm comm, const std::string& path, const std::vector<TensorState>& tensors,
                 const RestoreOptions& options) {
  const int rank = comm_rank(comm), size = comm_size(comm);
  // rank 0 finds the checkpoint and reads the manifest; everyone parses the same text
  std::string err, dir, text;
  if (rank == 0) {
    try {
      dir = resolve_checkpoint_dir(path);
      text = detail::read_text_file(detail::join(dir, "manifest.json"));
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  detail::agree(comm, err);
  dir = detail::bcast_string(comm, dir, 0);
  text = detail::bcast_string(comm, text, 0);
  const std::string where = detail::join(dir, "manifest.json");
  Manifest m = Manifest::parse(text, where);
  m.validate(where);

  // the request against the manifest (identical on every rank, except data pointers)
  std::vector<const TensorRecord*> recs;
  try {
    std::set<std::string> asked;
    for (const auto& t : tensors) {
      SHARDFLOW_REQUIRE_INPUT(asked.insert(t.name).second, "checkpoint restore: tensor '", t.name, "' asked twice");
      const TensorRecord* r = m.find(t.name);
      SHARDFLOW_REQUIRE_INPUT(r != nullptr, where, ": tensor '", t.name,
                              "' is not in the checkpoint (a different model?)");
      SHARDFLOW_REQUIRE_INPUT(r->shape == t.layout.global_shape(), where, ": tensor '", t.name,
                              "' has shape ", shape_to_string(r->shape), " in the checkpoint but ",
                              shape_to_string(t.layout.global_shape()), " in the model (a different model?)");
      SHARDFLOW_REQUIRE_INPUT(detail::convertible(r->dtype, t.dtype), where, ": tensor '", t.name,
                              "' is ", dtype_name(r->dtype), " in the checkpoint and cannot be restored as ",
                              dtype_name(t.dtype));
      SHARDFLOW_REQUIRE_INPUT(t.layout.mesh().size() == size, "checkpoint restore: tensor '", t.name,
                              "' has a layout on ", t.layout.mesh().size(), " ranks but the communicator has ", size);
      const std::string problem = coverage_problem(*r);
      SHARDFLOW_REQUIRE_INPUT(problem.empty(), where, ": tensor '", t.name, "': ", problem);
      const std::int64_t local = t.layout.holds(rank) ? t.layout.local_numel(rank) : 0;
      SHARDFLOW_REQUIRE_INPUT(local == 0 || t.data != nullptr, "checkpoint restore: tensor '", t.name,
                              "' has no buffer on rank ", rank);
      recs.push_back(r);
    }
    if (!options.allow_extra)
      for (const auto& r : m.tensors)
        SHARDFLOW_REQUIRE_INPUT(asked.count(r.name), where, ": holds tensor '", r.name,
                                "' that the model does not have (a different model?)");
  } catch (const std::exception& e) {
    err = e.what();
  }
  detail::agree(comm, err);

  // read every needed block into staging buffers, verifying checksums
  std::vector<detail::HostBuffer> staging(tensors.size());
  try {
    std::lock_guard<std::recursive_mutex> lock(h5::mutex());
    h5::init();
    detail::FileCache files(dir);
    std::vector<unsigned char> buf;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorState& t = tensors[i];
      const TensorRecord& r = *recs[i];
      if (!t.layout.holds(rank) || t.layout.local_numel(rank) == 0) continue;
      const Box need = t.layout.box(rank);
      staging[i] = detail::HostBuffer(static_cast<size_t>(need.numel()) * dtype_size(t.dtype));
      std::int64_t got = 0;
      for (const ShardRecord& s : r.shards) {
        const Box x = Box::intersect(need, s.box);
        if (x.empty()) continue;
        h5::Handle ds = detail::open_shard_dataset(files, r, s);
        std::int64_t b_lo = 0, b_hi = 1;
        if (!s.box.extent.empty()) {
          const std::int64_t r_lo = x.offset[0] - s.box.offset[0];
          const std::int64_t r_hi = r_lo + x.extent[0];
          b_lo = r_lo / s.block_rows;
          b_hi = (r_hi + s.block_rows - 1) / s.block_rows;
        }
        // fast path: whole rows, block-aligned, same dtype: read straight into the staging buffer
        bool direct = r.dtype == t.dtype;
        for (size_t d = 1; d < x.ndim() && direct; ++d)
          direct = x.extent[d] == s.box.extent[d] && x.extent[d] == need.extent[d];
        if (direct && !s.box.extent.empty())
          direct = b_lo * s.block_rows == x.offset[0] - s.box.offset[0] &&
                   std::min(s.box.extent[0], b_hi * s.block_rows) == x.offset[0] - s.box.offset[0] + x.extent[0];
        if (direct) {
          const std::size_t row_bytes = static_cast<std::size_t>(row_numel(need.extent)) * dtype_size(t.dtype);
          const std::size_t at = need.extent.empty() ? 0 : static_cast<std::size_t>(x.offset[0] - need.offset[0]) * row_bytes;
          detail::read_blocks_into(ds, r, s, b_lo, b_hi, staging[i].data() + at, dir);
          got += x.numel();
          continue;
        }
        const std::int64_t first_row = detail::read_blocks(ds, r, s, b_lo, b_hi, buf, dir);
        // the rows read form an array of shape [rows, extent[1:]] starting at shard row first_row
        Shape read_shape = s.box.extent;
        Box in_read{x.offset, x.extent};
        for (size_t d = 0; d < x.ndim(); ++d) in_read.offset[d] = x.offset[d] - s.box.offset[d];
        if (!read_shape.empty()) {
          read_shape[0] = std::min(s.box.extent[0], b_hi * s.block_rows) - first_row;
          in_read.offset[0] -= first_row;
        }
        Box in_need{x.offset, x.extent};
        for (size_t d = 0; d < x.ndim(); ++d) in_need.offset[d] = x.offset[d] - need.offset[d];
        detail::copy_convert(buf.data(), r.dtype, read_shape, in_read, staging[i].data(), t.dtype, need.extent, in_need);
        got += x.numel();
      }
      SHARDFLOW_REQUIRE_INPUT(got == need.numel(), "checkpoint ", dir, ": tensor '", t.name, "': saved shards provide ",
                              got, " of the ", need.numel(), " elements of box ", need.to_string());
    }
  } catch (const std::exception& e) {
    err = e.what();
  }
  detail::agree(comm, err);

  // everything is here on every rank: now the caller's buffers
  for (size_t i = 0; i < tensors.size(); ++i)
    if (!staging[i].empty()) std::memcpy(tensors[i].data, staging[i].data(), staging[i].size());
  return m.meta;
}

}  // namespace shardflow::ckpt
