#include "ckpt/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include "ckpt/checksum.hpp"
#include "ckpt/impl/ckpt_internal.hpp"
#include "ckpt/impl/hdf5_util.hpp"
#include "comm/mpi_check.hpp"

namespace shardflow::ckpt {

namespace fs = std::filesystem;
using ::shardflow::detail::concat;
using nlohmann::json;

namespace {

/// Whether `rank` writes the box it holds of tensors[i]: replicas take turns, the i-th
/// tensor is written by replica i mod (number of replicas).
bool writes_box(const TensorState& t, size_t i, int rank) {
  if (!t.layout.holds(rank) || t.layout.local_numel(rank) == 0) return false;
  const std::vector<int> reps = t.layout.replicas(rank);
  return reps[i % reps.size()] == rank;
}


std::string step_dir_name(std::int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step-%08lld", static_cast<long long>(step));
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
  std::int64_t block_rows = 1, block_cols = 1, file_offset = -1;
  bool tiled = false;  // stored tile by tile (format 3): ShardRecord::tiles(box)
  std::vector<std::uint32_t> crc;
  /// The storage part of its manifest record (tile sizes, stored bytes).
  ShardRecord storage() const {
    ShardRecord r;
    r.box = box;
    r.block_rows = block_rows;
    r.block_cols = block_cols;
    r.tiled = tiled;
    return r;
  }
};

/// Row segment of a checksum tile: tiles this wide (4 KiB, narrower when block_bytes is
/// smaller) let a restore that splits the second dimension read (and verify) only the
/// columns it needs, in runs long enough for efficient reads. At most kMaxColTiles tiles
/// per row (wider tiles for very wide rows), so the manifest holds at most that many
/// checksums per row block.
constexpr std::int64_t kTileRunBytes = 4096;
constexpr std::int64_t kMaxColTiles = 16;

/// Disk space held back while HDF5 writes a shard file: a file of `bytes` allocated in the
/// same directory before the shard file is created, released (deleted) the moment a write
/// fails, before any HDF5 handle is closed. HDF5 1.10's H5Fclose flushes the file's
/// metadata; when that flush fails (a full disk), the file's ID stays registered with its
/// shared state freed, and HDF5's termination in MPI_Finalize crashes on it (SIGSEGV in
/// H5F__close_cb, 3 of 20 runs that filled a 14.8 MB tmpfs). With the reserve released the
/// closes have room to succeed. Also the early, clear refusal when the space is not there.
class SpaceReserve {
 public:
  SpaceReserve(std::string path, std::int64_t bytes, const std::string& for_file) : path_(std::move(path)) {
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    SHARDFLOW_REQUIRE(fd >= 0, "checkpoint save: cannot create '", path_, "': ", std::strerror(errno));
    const int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
    ::close(fd);
    if (rc != 0) {
      ::unlink(path_.c_str());
      throw Error(concat("checkpoint save: cannot write '", for_file, "': ", std::strerror(rc), " (reserving ", bytes,
                         " bytes for its metadata failed)"));
    }
  }
  ~SpaceReserve() { release(); }
  SpaceReserve(const SpaceReserve&) = delete;
  SpaceReserve& operator=(const SpaceReserve&) = delete;
  void release() noexcept {
    if (!path_.empty()) ::unlink(path_.c_str());
    path_.clear();
  }

 private:
  std::string path_;
};

/// Writes the jobs into `path`: one HDF5 file (no timestamps: the same state gives the same
/// bytes) whose datasets of rank >= 1 are stored in tiles, HDF5 chunks of one checksum tile
/// each, allocated in tile order when the dataset is created; 0-d and empty ones contiguous.
/// HDF5 writes the metadata and closes the file; then every tile is written with one
/// pwritev straight from the rows of the box, each row block's tiles checksummed right
/// before, while in cache. Then computes the file's size and metadata checksum (every byte
/// outside the datasets' raw data), reading it back from the page cache.
FileRecord write_shard_file(const std::string& path, const std::string& rel, std::vector<ShardJob>& jobs,
                            std::int64_t block_bytes) {
  std::lock_guard<std::recursive_mutex> lock(h5::mutex());
  h5::init();
  // A clear refusal when the shard cannot fit (the reserve below catches what others fill
  // meanwhile): data bytes plus HDF5's metadata (well under 4 KiB a dataset).
  const std::string dir = fs::path(path).parent_path().string();
  const std::int64_t reserve_bytes = std::max<std::int64_t>(1 << 20, 16384 * static_cast<std::int64_t>(jobs.size()));
  {
    std::int64_t data_bytes = 0;
    for (const auto& j : jobs) data_bytes += static_cast<std::int64_t>(j.bytes);
    std::error_code ec;
    const auto sp = fs::space(dir.empty() ? std::string(".") : dir, ec);
    const std::int64_t need = data_bytes + reserve_bytes + 4096 * static_cast<std::int64_t>(jobs.size());
    if (!ec && static_cast<std::int64_t>(sp.available) < need)
      throw Error(concat("checkpoint save: cannot write '", path, "': ", std::strerror(ENOSPC), " (", need,
                         " bytes needed, ", sp.available, " available)"));
  }
  SpaceReserve reserve(path + ".reserve", reserve_bytes, path);
  // The handles that write (the file, a dataset) live outside the try: on a failure the
  // reserve is released before their destructors close them.
  h5::Handle file, ds;
  try {
    file = h5::file_create(path);
    h5::Handle dcpl(CHECK_HDF5(H5Pcreate(H5P_DATASET_CREATE)), H5Pclose);
    CHECK_HDF5(H5Pset_layout(dcpl, H5D_CONTIGUOUS));
    CHECK_HDF5(H5Pset_obj_track_times(dcpl, 0));
    for (auto& j : jobs) {
      const std::size_t esize = dtype_size(j.dtype);
      // a row block is about block_bytes (checksummed right before it is written, in cache),
      // cut into column tiles
      const std::int64_t row_bytes = row_numel(j.box.extent) * static_cast<std::int64_t>(esize);
      j.block_cols = block_cols_for(j.box.extent, esize, std::max(std::min(kTileRunBytes, block_bytes), row_bytes / kMaxColTiles));
      j.block_rows = j.box.extent.empty() ? 1 : block_rows_for(j.box.extent, esize, block_bytes);
      j.tiled = ShardRecord::tiles(j.box);
      if (j.tiled) j.block_rows = std::min(j.block_rows, j.box.extent[0]);  // an HDF5 chunk fits in its dataset
      const detail::TileGeometry g = detail::tile_geometry(j.box.extent, esize, j.block_rows, j.block_cols);
      j.crc.assign(static_cast<size_t>(num_blocks(j.box.extent, j.block_rows, j.block_cols)), 0u);
      h5::Handle space;
      std::vector<hsize_t> dims(j.box.extent.begin(), j.box.extent.end());
      if (dims.empty()) space = h5::Handle(CHECK_HDF5(H5Screate(H5S_SCALAR)), H5Sclose);
      else space = h5::Handle(CHECK_HDF5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)), H5Sclose);
      h5::Handle ftype = h5::file_type(j.dtype);
      h5::Handle tiles;
      if (j.tiled) {  // one chunk per tile, all allocated now (in tile order), never filled by HDF5
        tiles = h5::Handle(CHECK_HDF5(H5Pcreate(H5P_DATASET_CREATE)), H5Pclose);
        std::vector<hsize_t> chunk(dims);
        chunk[0] = static_cast<hsize_t>(j.block_rows);
        if (chunk.size() >= 2) chunk[1] = static_cast<hsize_t>(j.block_cols);
        CHECK_HDF5(H5Pset_chunk(tiles, static_cast<int>(chunk.size()), chunk.data()));
        CHECK_HDF5(H5Pset_alloc_time(tiles, H5D_ALLOC_TIME_EARLY));
        CHECK_HDF5(H5Pset_fill_time(tiles, H5D_FILL_TIME_NEVER));
        CHECK_HDF5(H5Pset_obj_track_times(tiles, 0));
      }
      ds = h5::Handle(CHECK_HDF5(H5Dcreate2(file, ("/" + j.name).c_str(), ftype, space, H5P_DEFAULT,
                                            j.tiled ? tiles.id() : dcpl.id(), H5P_DEFAULT)),
                      H5Dclose);
      h5::Handle mtype = h5::memory_type(j.dtype);
      if (j.tiled) {
        // where HDF5 put the tiles: one run in tile order (the manifest records its start)
        const std::int64_t tb = j.storage().tile_bytes(esize);
        for (std::int64_t k = 0; k < g.row_blocks * g.col_blocks; ++k) {
          const detail::TileStorage at = detail::tile_storage(ds, g, dims.size(), k);
          SHARDFLOW_REQUIRE(at.found && at.bytes == tb, "checkpoint save: dataset '/", j.name, "' in '", path, "': tile ",
                            k, " has no storage of ", tb, " bytes");
          if (k == 0) j.file_offset = at.offset;
          SHARDFLOW_REQUIRE(at.offset == j.file_offset + k * tb, "checkpoint save: dataset '/", j.name, "' in '", path,
                            "': HDF5 placed tile ", k, " at byte ", at.offset, ", not at ", j.file_offset + k * tb,
                            " (the tiles are not one run)");
        }
      } else if (dims.empty()) {
        j.crc[0] = crc32c(j.data, j.bytes);
        CHECK_HDF5(H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, j.data));
      }
      h5::write_attr_string(ds, "tensor", j.name);
      h5::write_attr_string(ds, "dtype", dtype_name(j.dtype));
      h5::write_attr_i64(ds, "offset", std::vector<long long>(j.box.offset.begin(), j.box.offset.end()));
      if (j.bytes > 0 && !j.tiled) {  // a 0-d dataset: contiguous
        const haddr_t at = H5Dget_offset(ds);
        SHARDFLOW_REQUIRE(at != HADDR_UNDEF, "checkpoint save: dataset '/", j.name, "' in '", path,
                          "' has no contiguous storage");
        SHARDFLOW_REQUIRE(H5Dget_storage_size(ds) == j.bytes, "checkpoint save: dataset '/", j.name, "' in '", path,
                          "' stores ", H5Dget_storage_size(ds), " bytes, not ", j.bytes);
        j.file_offset = static_cast<std::int64_t>(at);
      }
      ds.close();
    }
    CHECK_HDF5(H5Fflush(file, H5F_SCOPE_GLOBAL));
    reserve.release();
    file.close();
  } catch (...) {
    reserve.release();
    throw;
  }
  // the tiles, with plain POSIX writes into the space HDF5 allocated for them
  {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    SHARDFLOW_REQUIRE(fd >= 0, "checkpoint save: cannot open '", path, "' to write its tiles: ", std::strerror(errno));
    try {
      // every tile of a dataset is one run of the file in tile order: the whole run goes
      // out as one stream of pieces straight from the rows of the box (few, large writes),
      // each row block's tiles checksummed right before they are queued, while in cache
      for (auto& j : jobs) {
        if (!j.tiled) continue;
        const detail::TileGeometry g = detail::tile_geometry(j.box.extent, dtype_size(j.dtype), j.block_rows, j.block_cols);
        const std::size_t chunk_row = static_cast<std::size_t>(g.block_cols) * g.col_bytes;
        detail::IoStream out(fd, true, j.file_offset, concat("checkpoint save: '", path, "' dataset '/", j.name, "'"));
        out.write_behind();
        for (std::int64_t b = 0; b < g.row_blocks; ++b) {
          const std::int64_t r0 = b * j.block_rows, r1 = std::min(g.n0, r0 + j.block_rows);
          // pwritev only reads the rows: the const_cast is for the iovec type
          unsigned char* p = const_cast<unsigned char*>(j.data) + static_cast<std::size_t>(r0) * g.row_bytes;
          detail::tile_crcs(g, p, g.row_bytes, r1 - r0, 0, 0, g.col_blocks, j.crc.data() + b * g.col_blocks);
          for (std::int64_t c = 0; c < g.col_blocks; ++c) {
            const std::int64_t ca = c * g.block_cols, ce = std::min(g.n1, ca + g.block_cols);
            const std::size_t seg = static_cast<std::size_t>(ce - ca) * g.col_bytes;
            for (std::int64_t r = 0; r < r1 - r0; ++r) {
              out.add(p + static_cast<std::size_t>(r) * g.row_bytes + static_cast<std::size_t>(ca) * g.col_bytes, seg);
              out.pad(chunk_row - seg);
            }
            out.pad(static_cast<std::size_t>(j.block_rows - (r1 - r0)) * chunk_row);  // rows past the box
          }
        }
        out.flush();
      }
    } catch (...) {
      ::close(fd);
      throw;
    }
    SHARDFLOW_REQUIRE(::close(fd) == 0, "checkpoint save: closing '", path, "' failed: ", std::strerror(errno));
  }
  FileRecord rec;
  rec.name = rel;
  std::error_code ec;
  rec.size = static_cast<std::int64_t>(fs::file_size(path, ec));
  SHARDFLOW_REQUIRE(!ec, "checkpoint save: cannot stat '", path, "': ", ec.message());
  std::vector<ByteRange> data;
  for (const auto& j : jobs)
    if (j.file_offset >= 0)  // the stored size (tiles padded at the box's far edges)
      data.push_back(ByteRange{j.file_offset, j.storage().stored_bytes(dtype_size(j.dtype))});
  std::sort(data.begin(), data.end(), [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
  rec.meta_crc32c = file_crc32c_outside(path, rec.size, data);
  return rec;  // the caller fsyncs it
}

json records_to_json(const std::vector<ShardJob>& jobs, const FileRecord& file, int rank) {
  json a = json::array();
  for (const auto& j : jobs) {
    json r;
    r["tensor"] = j.tensor;
    r["offset"] = j.box.offset;
    r["extent"] = j.box.extent;
    r["block_rows"] = j.block_rows;
    r["block_cols"] = j.block_cols;
    r["file_offset"] = j.file_offset;
    r["crc"] = j.crc;
    a.push_back(r);
  }
  json out;
  out["shards"] = a;
  out["writer"] = rank;
  out["file"] = file.name;
  out["size"] = file.size;
  out["meta_crc"] = file.meta_crc32c;
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
  FileRecord file;      // of this rank's shard file (when it wrote one)
  bool synced = false;  // the shard file is fsynced already (async: by the background thread)
  std::thread thread;
  std::string error;  // of the local write
  // rank 0: the `latest` pointer's temporary file, written and fsynced off the critical
  // path while the shards are written
  std::string latest_tmp;
  std::thread latest_thread;
  std::string latest_error;
  void join() {
    if (thread.joinable()) thread.join();
    if (latest_thread.joinable()) latest_thread.join();
  }
};

Checkpointer::Checkpointer(MPI_Comm comm, std::string root, SaveOptions options)
    : control_(comm::Control::duplicate(comm)), root_(std::move(root)), opts_(options) {
  SHARDFLOW_REQUIRE_INPUT(!root_.empty(), "Checkpointer: empty checkpoint directory");
  SHARDFLOW_REQUIRE_INPUT(opts_.keep >= 0, "Checkpointer: keep = ", opts_.keep, " must be >= 0");
  SHARDFLOW_REQUIRE_INPUT(opts_.block_bytes >= 1, "Checkpointer: block_bytes = ", opts_.block_bytes, " must be >= 1");
  // control_ is a communicator of its own: the shard records travel point to point on it,
  // apart from any message of the caller's
  std::string err;
  if (control_.rank() == 0) {
    std::error_code ec;
    fs::create_directories(root_, ec);
    if (ec || !fs::is_directory(root_)) err = concat("Checkpointer: cannot create directory '", root_, "': ", ec.message());
  }
  detail::agree(control_.handle(), err);
}

Checkpointer::~Checkpointer() {
  if (pending_) pending_->join();
  if (cleaner_.joinable()) cleaner_.join();
}

bool Checkpointer::pending() const { return pending_ != nullptr; }

std::string Checkpointer::save(const std::vector<TensorState>& tensors, const Metadata& meta) {
  wait();
  const int rank = control_.rank(), size = control_.size();
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
      if (!writes_box(t, i, rank)) continue;
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
  // The temporary directory has a fixed name per step (one writer per root), so no broadcast
  // is needed. Sync mode: no collective before the writes either; every rank creates the
  // directory (racing mkdirs are fine) and writes its file, request errors and an existing
  // step directory are reported by every rank at commit, before anything becomes visible,
  // and rank 0 removes leftovers of an interrupted save of this step from the directory.
  // Async mode: save() must throw such errors itself, so all agree first.
  p->tmp_dir = detail::join(root_, ".tmp-" + step_dir_name(meta.step));
  if (err.empty()) {
    try {
      std::error_code ec;
      if (rank == 0)
        SHARDFLOW_REQUIRE_INPUT(!fs::exists(p->final_dir, ec), "checkpoint save: '", p->final_dir,
                                "' exists already (a checkpoint of step ", meta.step, ")");
      if (!opts_.async) {
        fs::create_directories(p->tmp_dir, ec);
        SHARDFLOW_REQUIRE(fs::is_directory(p->tmp_dir), "checkpoint save: cannot create '", p->tmp_dir, "': ",
                          ec.message());
        fs::remove(detail::join(p->tmp_dir, p->file_name), ec);  // a leftover of an interrupted save
      } else if (rank == 0) {
        fs::remove_all(p->tmp_dir, ec);  // a leftover of an interrupted save
        fs::create_directory(p->tmp_dir, ec);
        SHARDFLOW_REQUIRE(!ec, "checkpoint save: cannot create '", p->tmp_dir, "': ", ec.message());
      }
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  if (opts_.async) {
    try {
      detail::agree(control_.handle(), err);
    } catch (...) {
      if (rank == 0) remove_quietly(p->tmp_dir);
      throw;
    }
  }
  p->error = err;  // sync mode: reported at commit
  p->skeleton.step = meta.step;
  p->skeleton.world_size = size;
  p->skeleton.meta = meta;
  if (rank == 0) {  // the new `latest`, ready to be renamed over the old one at commit
    p->latest_tmp = detail::join(root_, ".latest-" + step_dir_name(meta.step));
    Pending* raw = p.get();
    const std::string content = step_dir_name(meta.step) + "\n";
    raw->latest_thread = std::thread([raw, content] {
      try {
        std::error_code ec;
        fs::remove(raw->latest_tmp, ec);
        detail::write_file_durably(raw->latest_tmp, content);
      } catch (const std::exception& e) {
        raw->latest_error = e.what();
      }
    });
  }

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
        if (!raw->jobs.empty()) {
          raw->file = write_shard_file(path, raw->file_name, raw->jobs, block_bytes);
          detail::fsync_path(path, false);  // in the background too
        }
        raw->synced = true;
      } catch (const std::exception& e) {
        raw->error = e.what();
      }
    });
    pending_ = std::move(p);
    return pending_->final_dir;
  }
  try {
    if (p->error.empty() && !p->jobs.empty()) p->file = write_shard_file(path, p->file_name, p->jobs, block_bytes);
  } catch (const std::exception& e) {
    p->error = e.what();
  }
  commit(*p);
  return p->final_dir;
}

void Checkpointer::wait() {
  if (cleaner_.joinable()) cleaner_.join();
  if (!pending_) return;
  std::unique_ptr<Pending> p = std::move(pending_);
  if (p->thread.joinable()) p->thread.join();
  commit(*p);
}

void Checkpointer::commit(Pending& p) {
  const int rank = control_.rank();
  // The critical path: (1) rank 0 receives every rank's shard records (or error);
  // (2) every rank fsyncs its shard file while rank 0 writes and fsyncs the manifest and the
  // temporary directory; (3) all agree that everything is durable; (4) rank 0 renames the
  // directory into place, fsyncs the root, renames the `latest` file prepared during the
  // save over the old one and fsyncs the root again; (5) all agree on the outcome.
  // Retention deletes in the background (renamed to .trash-* first, synchronously).
  json mine = records_to_json(p.jobs, p.file, rank);
  if (!p.error.empty()) mine["error"] = p.error;
  // point to point rather than a gather: no rank waits for rank 0 here
  std::vector<std::string> recs = control_.gather(mine.dump(), 0);

  std::string err;
  std::thread shard_sync;
  std::string shard_sync_error;
  if (p.error.empty() && !p.synced && !p.jobs.empty()) {
    const std::string path = detail::join(p.tmp_dir, p.file_name);
    auto sync = [path, &shard_sync_error] {
      try {
        detail::fsync_path(path, false);
      } catch (const std::exception& e) {
        shard_sync_error = e.what();
      }
    };
    if (rank == 0) shard_sync = std::thread(sync);  // rank 0 has the manifest to write meanwhile
    else sync();
  }
  if (rank == 0) {
    try {
      Manifest m = p.skeleton;
      m.created = detail::utc_now();
      for (size_t r = 0; r < recs.size(); ++r) {
        const json rec = json::parse(recs[r]);
        if (rec.contains("error")) {
          const std::string e = rec.at("error").get<std::string>();
          if (e.rfind("checkpoint save: ", 0) == 0) throw InputError(e);  // the request
          throw Error(concat("checkpoint save to '", p.tmp_dir, "' failed on rank ", r, ": ", e));
        }
        if (rec.at("shards").empty()) continue;
        const int writer = rec.at("writer").get<int>();
        FileRecord f;
        f.name = rec.at("file").get<std::string>();
        f.size = rec.at("size").get<std::int64_t>();
        f.meta_crc32c = rec.at("meta_crc").get<std::uint32_t>();
        m.files.push_back(f);
        for (const json& sr : rec.at("shards")) {
          ShardRecord s;
          const size_t ti = sr.at("tensor").get<size_t>();
          s.box.offset = sr.at("offset").get<Shape>();
          s.box.extent = sr.at("extent").get<Shape>();
          s.file = f.name;
          s.dataset = "/" + m.tensors.at(ti).name;
          s.block_rows = sr.at("block_rows").get<std::int64_t>();
          s.block_cols = sr.at("block_cols").get<std::int64_t>();
          s.file_offset = sr.at("file_offset").get<std::int64_t>();
          s.tiled = ShardRecord::tiles(s.box);  // what this version writes (format 3)
          s.crc32c = sr.at("crc").get<std::vector<std::uint32_t>>();
          s.writer = writer;
          m.tensors.at(ti).shards.push_back(std::move(s));
        }
      }
      m.validate(p.tmp_dir);
      std::error_code ec;
      SHARDFLOW_REQUIRE_INPUT(!fs::exists(p.final_dir, ec), "checkpoint save: '", p.final_dir,
                              "' exists already (a checkpoint of step ", p.step, ")");
      // leftovers of an interrupted save of this step (files of ranks that write none now)
      std::set<std::string> ours;
      for (const auto& f : m.files) ours.insert(f.name);
      std::vector<std::string> stale;
      for (const auto& e : fs::directory_iterator(p.tmp_dir, ec))
        if (!ours.count(e.path().filename().string())) stale.push_back(e.path().string());
      for (const auto& x : stale) remove_quietly(x);
      for (const auto& t : m.tensors) {
        std::string problem = coverage_problem(t);
        SHARDFLOW_REQUIRE(problem.empty(), "checkpoint save: tensor '", t.name, "': ", problem,
                          " (do the layouts cover their tensors?)");
      }
      detail::write_file_durably(detail::join(p.tmp_dir, "manifest.json"), m.to_json());
      detail::fsync_path(p.tmp_dir, true);
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  if (shard_sync.joinable()) shard_sync.join();
  if (err.empty() && !shard_sync_error.empty())
    err = concat("checkpoint save to '", p.tmp_dir, "' failed: ", shard_sync_error);
  if (p.latest_thread.joinable()) p.latest_thread.join();
  if (err.empty() && !p.latest_error.empty()) err = concat("checkpoint save: ", p.latest_error);
  try {
    detail::agree(control_.handle(), err);
  } catch (...) {
    if (rank == 0) {
      remove_quietly(p.tmp_dir);
      remove_quietly(p.latest_tmp);
    }
    throw;
  }

  if (rank == 0) {
    try {
      std::error_code ec;
      fs::rename(p.tmp_dir, p.final_dir, ec);
      SHARDFLOW_REQUIRE(!ec, "checkpoint save: cannot rename '", p.tmp_dir, "' to '", p.final_dir, "': ", ec.message());
      detail::fsync_path(root_, true);  // the step directory is in place before `latest` names it
      fs::rename(p.latest_tmp, detail::join(root_, "latest"), ec);
      SHARDFLOW_REQUIRE(!ec, "checkpoint save: cannot update '", detail::join(root_, "latest"), "': ", ec.message());
      detail::fsync_path(root_, true);
    } catch (const std::exception& e) {
      err = e.what();
      remove_quietly(p.tmp_dir);
      remove_quietly(p.latest_tmp);
    }
    if (err.empty()) retire(p.step);
  }
  detail::agree(control_.handle(), err);
}

void Checkpointer::retire(std::int64_t newest_step) {
  // retention, and leftovers of interrupted saves: renamed out of sight now (fast), deleted
  // by a background thread that the next save or the destructor joins
  if (cleaner_.joinable()) cleaner_.join();
  std::vector<std::string> trash;
  std::error_code ec;
  std::vector<std::string> done = list_checkpoints(root_);
  if (opts_.keep > 0 && static_cast<int>(done.size()) > opts_.keep) {
    const std::string newest = step_dir_name(newest_step);
    for (size_t i = 0; i + static_cast<size_t>(opts_.keep) < done.size(); ++i) {
      if (fs::path(done[i]).filename() == newest) continue;
      const std::string t = detail::join(root_, ".trash-" + fs::path(done[i]).filename().string() + "-" + detail::random_nonce());
      fs::rename(done[i], t, ec);
      if (!ec) trash.push_back(t);
    }
  }
  for (const auto& e : fs::directory_iterator(root_, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(".tmp-", 0) == 0 || n.rfind(".trash-", 0) == 0 || n.rfind(".latest-", 0) == 0)
      if (std::find(trash.begin(), trash.end(), e.path().string()) == trash.end()) trash.push_back(e.path().string());
  }
  if (!trash.empty())
    cleaner_ = std::thread([trash] {
      for (const auto& t : trash) remove_quietly(t);
    });
}

// ---- restore ----------------------------------------------------------------------------

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

std::string resolve_checkpoint_dir(const std::string& path) {
  std::error_code ec;
  SHARDFLOW_REQUIRE_INPUT(fs::is_directory(path, ec), "checkpoint: '", path, "' is not a directory");
  if (fs::is_regular_file(detail::join(path, "manifest.json"), ec)) return path;
  const std::string latest = detail::join(path, "latest");
  const auto latest_status = fs::symlink_status(latest, ec);
  SHARDFLOW_REQUIRE_INPUT(!fs::is_symlink(latest_status), "checkpoint: '", latest,
                          "' is a symbolic link; shardflow writes it as a regular file naming a step directory "
                          "(not followed)");
  if (!fs::exists(latest_status)) {
    // A crash between the directory rename and the pointer update of the first save leaves
    // a complete step directory and no pointer: step directories only ever appear complete
    // (renamed from a finished temporary directory), so the newest one is the checkpoint.
    std::vector<std::string> done = list_checkpoints(path);
    SHARDFLOW_REQUIRE_INPUT(!done.empty(), "checkpoint: '", path,
                            "' holds neither manifest.json, nor a 'latest' pointer, nor a step-* checkpoint");
    return done.back();
  }
  SHARDFLOW_REQUIRE_INPUT(fs::is_regular_file(latest_status), "checkpoint: '", latest,
                          "' is not a regular file (shardflow writes it as one, naming a step directory)");
  SHARDFLOW_REQUIRE_INPUT(fs::hard_link_count(latest, ec) == 1, "checkpoint: '", latest,
                          "' has other names (a hard link); shardflow writes it as a file of its own (not read)");
  std::string name;
  {
    std::ifstream in(latest, std::ios::binary);
    SHARDFLOW_REQUIRE_INPUT(in.good(), "checkpoint: cannot read '", latest, "'");
    name.resize(64);  // a pointer is "step-XXXXXXXX\n": never read (or echo) more
    in.read(name.data(), static_cast<std::streamsize>(name.size()));
    name.resize(static_cast<size_t>(in.gcount()));
  }
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
  SHARDFLOW_REQUIRE_INPUT(parse_step_dir_name(name, nullptr), "checkpoint: '", latest,
                          "' does not name a step directory (step-XXXXXXXX); it starts with '", printable(name, 40),
                          "'");
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

std::int64_t save_bytes(const std::vector<TensorState>& tensors, int rank) {
  std::int64_t b = 0;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (writes_box(tensors[i], i, rank))
      b += tensors[i].layout.local_numel(rank) * static_cast<std::int64_t>(dtype_size(tensors[i].dtype));
  return b;
}

Metadata restore(MPI_Comm comm, const std::string& path, const std::vector<TensorState>& tensors,
                 const RestoreOptions& options) {
  const comm::Control control(comm);
  const int rank = control.rank(), size = control.size();
  // rank 0 finds the checkpoint and reads the manifest; everyone parses the same text. One
  // broadcast carries the outcome, the directory and the text (or rank 0's error).
  std::string err, dir, text;
  {
    std::string blob;
    if (rank == 0) {
      try {
        dir = resolve_checkpoint_dir(path);
        text = detail::read_text_file(detail::join(dir, "manifest.json"));
        blob = "+" + std::to_string(dir.size()) + ":" + dir + text;
      } catch (const std::exception& e) {
        blob = "!" + std::string(e.what());
      }
    }
    blob = detail::bcast_string(comm, blob, 0);
    SHARDFLOW_REQUIRE(!blob.empty(), "checkpoint restore: empty broadcast");
    if (blob[0] == '!') throw InputError(size > 1 ? concat(blob.substr(1), " (rank 0)") : blob.substr(1));
    const size_t colon = blob.find(':');
    SHARDFLOW_REQUIRE(colon != std::string::npos, "checkpoint restore: malformed broadcast");
    const size_t n = static_cast<size_t>(std::stoull(blob.substr(1, colon - 1)));
    dir = blob.substr(colon + 1, n);
    text = blob.substr(colon + 1 + n);
  }
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
  // No agreement here (a collective costs much where ranks share CPUs): a rank whose
  // request failed reads nothing, and the agreement after the reads reports it. The
  // request is the same on every rank but for its buffers, so a bad request fails on all.

  // read the checksum tiles overlapping every needed box into staging buffers, verifying them
  std::vector<detail::HostBuffer> staging(tensors.size());
  std::int64_t bytes_read = 0;
  if (err.empty()) try {
    std::lock_guard<std::recursive_mutex> lock(h5::mutex());
    h5::init();
    detail::FileCache files(dir, m);
    // HDF5's view of every shard dataset asked for (shape, dtype, tiles where the manifest
    // says), checked once in all: the datasets of the manifest's file k by rank k % size. The
    // reads below do not need HDF5 for a tiled shard (FileCache::checked_fd); a dataset that
    // disagrees with the manifest fails the restore on every rank through the agreement after
    // the reads.
    {
      std::unordered_map<std::string, std::size_t> file_index;
      for (std::size_t k = 0; k < m.files.size(); ++k) file_index.emplace(m.files[k].name, k);
      for (const TensorRecord* r : recs)
        for (const ShardRecord& s : r->shards) {
          const auto k = file_index.find(s.file);
          if (k == file_index.end() || static_cast<int>(k->second % static_cast<std::size_t>(size)) == rank)
            detail::open_shard_dataset(files, *r, s);
        }
    }
    std::vector<unsigned char> buf;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorState& t = tensors[i];
      const TensorRecord& r = *recs[i];
      if (!t.layout.holds(rank) || t.layout.local_numel(rank) == 0) continue;
      const Box need = t.layout.box(rank);
      unsigned char* dst = static_cast<unsigned char*>(t.data);
      if (!options.in_place) {
        staging[i] = detail::HostBuffer(static_cast<size_t>(need.numel()) * dtype_size(t.dtype));
        dst = staging[i].data();
      }
      std::int64_t got = 0;
      for (const ShardRecord& s : r.shards) {
        const Box x = Box::intersect(need, s.box);
        if (x.empty()) continue;
        // a tiled shard: its tiles straight from the checked file; any other through HDF5
        const int fd = files.checked_fd(s.file, r.name);
        h5::Handle ds;
        if (!s.tiled) ds = detail::open_shard_dataset(files, r, s);
        const size_t nd = x.ndim();
        Box want{x.offset, x.extent};  // x in the shard's coordinates
        Shape at_need(nd), zero(nd, 0);  // x in the need box's coordinates
        for (size_t d = 0; d < nd; ++d) {
          want.offset[d] = x.offset[d] - s.box.offset[d];
          at_need[d] = x.offset[d] - need.offset[d];
        }
        const Box rb = detail::tile_cover(r, s, want);
        // fast path: the tiles are exactly the overlap, same dtype, and dimensions from the
        // third on whole in the need box: the tiles are read straight into the buffer
        bool direct = r.dtype == t.dtype && rb.offset == want.offset && rb.extent == want.extent;
        for (size_t d = 2; d < nd && direct; ++d) direct = need.extent[d] == x.extent[d];
        if (direct) {
          // in place, a box larger than half a core's L2 (1 MiB) streams past the caches (a
          // third of the memory traffic saved: crc32c_copy_strided); staged, the copy into the
          // caller's buffers reads it next
          const bool stream = options.in_place &&
                              need.numel() * static_cast<std::int64_t>(dtype_size(t.dtype)) >= (std::int64_t(1) << 20);
          bytes_read += detail::read_tiles(fd, ds, r, s, rb, dst, need.extent, at_need, dir,
                                           stream ? CopyStores::Streaming : CopyStores::Cached);
        } else {
          buf.resize(static_cast<size_t>(rb.numel()) * dtype_size(r.dtype));
          bytes_read += detail::read_tiles(fd, ds, r, s, rb, buf.data(), rb.extent, zero, dir);
          Box in_read{want.offset, want.extent};
          for (size_t d = 0; d < nd; ++d) in_read.offset[d] -= rb.offset[d];
          detail::copy_convert(buf.data(), r.dtype, rb.extent, in_read, dst, t.dtype, need.extent,
                               Box{at_need, x.extent});
        }
        got += x.numel();
      }
      SHARDFLOW_REQUIRE_INPUT(got == need.numel(), "checkpoint ", dir, ": tensor '", t.name, "': saved shards provide ",
                              got, " of the ", need.numel(), " elements of box ", need.to_string());
    }
  } catch (const std::exception& e) {
    err = e.what();
  }
  detail::agree(comm, err);
  if (options.stats) {
    options.stats->bytes_read = bytes_read;
    options.stats->step_dir = dir;
  }

  // everything is here on every rank: now the caller's buffers (in place: already there)
  for (size_t i = 0; i < tensors.size(); ++i)
    if (!staging[i].empty()) std::memcpy(tensors[i].data, staging[i].data(), staging[i].size());
  return m.meta;
}

}  // namespace shardflow::ckpt
