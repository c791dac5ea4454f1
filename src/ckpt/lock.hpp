#pragma once
// One training run per checkpoint root: RootLock is the claim that `shardflow train` takes
// (on rank 0) before it restores or trains, and holds until it exits.
//
// The claim is the file <root>/.lock, a small JSON record of its holder (host, boot, PID
// namespace, PID and the process's start time, Slurm job and restart count, a random token,
// the heartbeat interval). It is created whole or not at all: written to a private name,
// then link(2)ed to .lock, which fails when .lock exists (the NFS-safe exclusive create;
// the link count is checked when link's reply is lost). While held, a thread touches the
// file's mtime every heartbeat interval.
//
// A lock whose holder is gone is taken over, with a message naming it:
//  - same host, boot and PID namespace: the holder's PID is gone, or is another process
//    (a different start time);
//  - the same Slurm job at an earlier restart count (Slurm ended that run before requeueing);
//  - otherwise (another host, or the file cannot be read): its mtime did not change during
//    3 of the holder's heartbeat intervals. Only mtime *changes* are compared, never clocks,
//    so clock skew between hosts does not matter.
// Takeover renames the stale file aside (atomic; of several contenders one wins) and checks
// that what it renamed is still the record it judged stale, else puts it back.
//
// A holder whose lock was taken over (it was judged dead while alive, e.g. a host frozen for
// longer than 3 heartbeats) notices at its next heartbeat; check() then throws, and the
// trainer checks before every save, so it never writes into a directory it no longer owns.
//
// What this relies on (docs/checkpoint.md): atomic link(2) and rename(2) within one
// directory, and mtime updates that other clients see (NFSv3/v4 close-to-open, Lustre,
// GPFS, BeeGFS and local file systems all provide them).
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace shardflow::ckpt {

struct LockOptions {
  double heartbeat_s = 10;  // how often the holder touches the file
  /// Where the messages go (takeovers, waiting for a remote holder); default: stdout.
  std::function<void(const std::string&)> log;
};

class RootLock {
 public:
  /// Claims `root` (an existing directory) for this process. Throws InputError naming the
  /// lock file and its live holder when another run holds it.
  explicit RootLock(const std::string& root, LockOptions options = {});
  /// Stops the heartbeat and removes the lock file when it is still this process's.
  ~RootLock();
  RootLock(const RootLock&) = delete;
  RootLock& operator=(const RootLock&) = delete;

  /// Throws InputError when another run took the lock over (it judged this one dead).
  /// Re-reads the lock file, so a takeover since the last heartbeat is seen too.
  void check();
  const std::string& path() const { return path_; }
  /// The record this process wrote (JSON).
  const std::string& record() const { return record_; }

 private:
  void beat();
  /// Reads the lock file: whether it still holds this process's token (else marks the
  /// lock lost, naming the new holder); touches its mtime when `touch` and still ours.
  bool still_ours(bool touch);
  std::string path_, record_, token_;
  LockOptions opts_;
  std::atomic<bool> lost_{false};
  mutable std::mutex mu_;
  std::string lost_to_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread heart_;
};

}  // namespace shardflow::ckpt
