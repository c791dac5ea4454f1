#pragma once
// Sharded checkpoints in HDF5 (see docs/checkpoint.md for the on-disk format).
//
// A checkpoint is a *sharded state*: named tensors, each with a Layout over the job's mesh
// and this rank's box of it (row-major, host memory), plus Metadata (step, scalars, the
// deck text, opaque RNG state).
//
// Save (collective): every distinct shard is written once, by one of the ranks holding it
// (replicas take turns tensor by tensor), into that rank's file shard-<rank>.h5 of a
// temporary directory, with per-tile data checksums and the file's metadata checksum;
// then the ranks fsync their files while rank 0 writes and fsyncs manifest.json, renames
// the directory to step-XXXXXXXX and atomically replaces the `latest` pointer. A crash at
// any point leaves the previous `latest` intact. Retention (`keep`) retires the oldest
// committed checkpoints (never the newest): renamed away at once, deleted in the
// background. Async mode copies the shards to host buffers, returns, and writes in a
// background thread; the next save(), wait() (both collective) finishes and commits it.
//
// Restore (collective, any mesh, any world size): each rank checks the size and metadata
// checksum of every shard file it needs before HDF5 opens it, reads only the checksum tiles
// (row blocks x column ranges) of the saved shards that overlap the box its new layout
// needs (format 3: each tile one contiguous HDF5 chunk, one preadv each), verifies their
// CRC-32C, converts the dtype when asked to (float types among themselves), and only when
// every rank has everything does anyone write the caller's buffers (unless in_place).
// Every failure is reported on every rank, naming the tensor and the file.
//
// One writer per checkpoint root at a time. Files are opened per rank with HDF5's sec2
// driver (independent POSIX I/O; no MPI-IO), so any shared or local file system works.
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ckpt/manifest.hpp"
#include "comm/control.hpp"
#include "core/dtype.hpp"
#include "layout/layout.hpp"

namespace shardflow::ckpt {

/// One tensor of the sharded state, as seen by this rank.
struct TensorState {
  std::string name;  // non-empty, no '/'; also the HDF5 dataset name
  Layout layout;     // over a mesh of the communicator's size; rank r holds layout.box(r)
  DType dtype = DType::F32;
  /// This rank's box, row-major, layout.local_numel(rank) elements of dtype, host memory.
  /// Read by save (const), written by restore. May be null where the box is empty.
  void* data = nullptr;
};

struct SaveOptions {
  int keep = 0;       // keep the newest `keep` committed checkpoints (0: keep all)
  bool async = false; // write in a background thread (see wait())
  std::int64_t block_bytes = 1 << 20;  // checksum block size (rows of the shard's first dimension)
};

class Checkpointer {
 public:
  /// `root` is created when missing (collective).
  Checkpointer(MPI_Comm comm, std::string root, SaveOptions options = {});
  /// Joins a background write without committing it (call wait() first to commit).
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  /// Collective. Saves `tensors` and `meta` as checkpoint step-<meta.step>; returns that
  /// directory. Sync mode: committed on return. Async mode: returns after copying the
  /// local shards; committed by the next save()/wait(). Throws InputError (on every rank)
  /// when a tensor is invalid, the step directory exists already, or a write failed.
  std::string save(const std::vector<TensorState>& tensors, const Metadata& meta);
  /// Collective. Finishes and commits a pending async save (no-op when none), and finishes
  /// deleting the checkpoints that retention retired (renamed to .trash-* at once, deleted
  /// in the background; the next save and the destructor wait for that too).
  void wait();
  bool pending() const;
  const std::string& root() const { return root_; }

 private:
  struct Pending;
  void commit(Pending& p);
  void retire(std::int64_t newest_step);  // rank 0: retention and leftovers
  comm::Control control_;  // a private duplicate of the caller's communicator
  std::string root_;
  SaveOptions opts_;
  std::unique_ptr<Pending> pending_;
  std::thread cleaner_;  // rank 0: deletes retired checkpoints in the background
};

/// The bytes `rank` writes when `tensors` are saved (each replicated box is written by one
/// of its replicas, in turns): what an async save copies before it returns.
std::int64_t save_bytes(const std::vector<TensorState>& tensors, int rank);

/// What a restore read on this rank.
struct RestoreStats {
  /// Bytes of tensor data read from the shard files (whole checksum tiles overlapping the
  /// boxes this rank needs; the files' metadata checks and HDF5's own reads not counted).
  std::int64_t bytes_read = 0;
  /// The step directory restored (what `path` resolved to when the restore began).
  std::string step_dir;
};

struct RestoreOptions {
  /// Accept checkpoints holding tensors the caller does not ask for (otherwise refused as
  /// "a different model").
  bool allow_extra = false;
  /// When set, filled in on success.
  RestoreStats* stats = nullptr;
  /// Read straight into the caller's buffers instead of staging everything first. Every
  /// byte is still checked before the call returns and a failure still throws on every
  /// rank, but the buffers then hold part of the checkpoint: for callers whose buffers
  /// hold nothing to keep (`train --resume`: freshly initialised parameters). Saves the
  /// staging memory (the rank's whole state) and a copy of it.
  bool in_place = false;
};

/// Collective. Restores `tensors` (their layouts may differ from the saved ones, on any
/// mesh of the communicator's size) from `path`: a checkpoint root (follows `latest`) or a
/// step directory. Returns the saved metadata. Throws InputError on every rank, naming the
/// tensor and the file, and leaves every caller buffer untouched (unless options.in_place),
/// when anything is wrong.
Metadata restore(MPI_Comm comm, const std::string& path, const std::vector<TensorState>& tensors,
                 const RestoreOptions& options = {});

/// The step directory `path` designates: itself when it holds manifest.json, else the
/// target of its `latest` pointer, else (no pointer yet: a save was interrupted between
/// the directory rename and the pointer update) the newest committed step directory.
/// Throws InputError naming the path otherwise.
std::string resolve_checkpoint_dir(const std::string& path);
/// Reads and validates <step_dir>/manifest.json (InputError naming the file).
Manifest read_manifest(const std::string& step_dir);
/// Whether `name` is a step directory's name ("step-" and its step in decimal digits, as
/// step-00000042); the step into *step when step is not null.
bool parse_step_dir_name(const std::string& name, std::int64_t* step);
/// Committed checkpoints (step directories holding a manifest) under root, oldest first.
std::vector<std::string> list_checkpoints(const std::string& root);

}  // namespace shardflow::ckpt
