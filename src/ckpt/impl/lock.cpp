#include "ckpt/lock.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "ckpt/impl/ckpt_internal.hpp"
#include "core/error.hpp"

namespace shardflow::ckpt {

namespace {

using ::shardflow::detail::concat;

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

std::string hostname() {
  char b[256] = {0};
  if (::gethostname(b, sizeof b - 1) != 0) return "?";
  return b;
}

std::string pid_namespace() {
  char b[128];
  const ssize_t n = ::readlink("/proc/self/ns/pid", b, sizeof b - 1);
  if (n <= 0) return "";
  b[n] = '\0';
  return b;
}

/// Fields 3 (state) and 22 (start time in clock ticks since boot) of /proc/PID/stat; empty
/// when the process is gone.
struct ProcessStat {
  std::string state, start;
};
ProcessStat process_stat(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!std::getline(in, s)) return {};
  const auto close = s.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return {};
  std::istringstream rest(s.substr(close + 2));
  ProcessStat ps;
  std::string f;
  for (int field = 3; field <= 22 && (rest >> f); ++field) {
    if (field == 3) ps.state = f;
    if (field == 22) ps.start = f;
  }
  return ps;
}

struct Record {
  bool readable = false;
  nlohmann::json j;
  std::string token() const { return readable ? j.value("token", std::string()) : std::string(); }
};

/// Reads a lock file from an open descriptor (at most 64 KiB; JSON or not readable).
Record read_record(int fd) {
  Record r;
  std::string s(65536, '\0');
  ssize_t n = ::pread(fd, s.data(), s.size(), 0);
  if (n <= 0) return r;
  s.resize(static_cast<size_t>(n));
  try {
    r.j = nlohmann::json::parse(s);
    r.readable = r.j.is_object() && r.j.contains("token");
  } catch (const std::exception&) {
    r.readable = false;
  }
  return r;
}

Record read_record(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  Record r = read_record(fd);
  ::close(fd);
  return r;
}

std::string describe(const Record& r) {
  if (!r.readable) return "an unknown holder (the lock file is not a shardflow lock record)";
  const auto& j = r.j;
  std::string s = concat("process ", j.value("pid", -1L), " on ", printable(j.value("host", std::string("?"))));
  const std::string job = j.value("slurm_job_id", std::string());
  if (!job.empty()) s += concat(" (Slurm job ", printable(job, 32), ", restart ", j.value("slurm_restart_count", 0L), ")");
  s += concat(", since ", printable(j.value("started", std::string("?")), 32));
  return s;
}

struct Mtime {
  bool exists = false;
  ino_t ino = 0;
  long long sec = 0, nsec = 0;
  bool operator==(const Mtime& o) const { return exists == o.exists && ino == o.ino && sec == o.sec && nsec == o.nsec; }
};

/// The file's identity and mtime, read after open(2): NFS revalidates its attributes on
/// open (close-to-open consistency), where a plain stat may answer from a cache that can be
/// up to a minute old.
Mtime mtime_of(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  struct stat st{};
  const int rc = ::fstat(fd, &st);
  ::close(fd);
  if (rc != 0) return {};
  return {true, st.st_ino, static_cast<long long>(st.st_mtim.tv_sec), static_cast<long long>(st.st_mtim.tv_nsec)};
}

/// Why the holder `r` of `lock` is gone ("" when it may be alive and the caller must look
/// at the heartbeat).
std::string gone_without_waiting(const Record& r) {
  if (!r.readable) return "";
  const auto& j = r.j;
  const char* job = std::getenv("SLURM_JOB_ID");
  const char* restart = std::getenv("SLURM_RESTART_COUNT");
  if (job && *job && j.value("slurm_job_id", std::string()) == job) {
    const long mine = restart ? std::atol(restart) : 0;
    const long theirs = j.value("slurm_restart_count", 0L);
    if (theirs < mine)
      return concat("Slurm requeued job ", job, " (restart ", theirs, " -> ", mine, "): the earlier run has ended");
  }
  if (j.value("host", std::string()) != hostname()) return "";
  if (j.value("boot_id", std::string()) != first_line("/proc/sys/kernel/random/boot_id"))
    return "its host has rebooted since";
  if (j.value("pid_ns", std::string()) != pid_namespace()) return "";  // another container: cannot see its PID
  const long pid = j.value("pid", -1L);
  if (pid <= 0) return "";
  if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return concat("process ", pid, " is gone");
  const ProcessStat ps = process_stat(pid);
  if (ps.state == "Z" || ps.state == "X") return concat("process ", pid, " has exited");
  if (!ps.start.empty() && ps.start != j.value("pid_start", std::string()))
    return concat("process ", pid, " is another program now (a different start time)");
  return "";
}

}  // namespace

RootLock::RootLock(const std::string& root, LockOptions options) : opts_(std::move(options)) {
  if (!opts_.log)
    opts_.log = [](const std::string& m) {
      std::printf("%s\n", m.c_str());
      std::fflush(stdout);
    };
  path_ = (root.empty() ? std::string(".") : root) + "/.lock";
  token_ = detail::random_nonce();
  const char* job = std::getenv("SLURM_JOB_ID");
  const char* restart = std::getenv("SLURM_RESTART_COUNT");
  nlohmann::json j = {{"token", token_},
                      {"host", hostname()},
                      {"boot_id", first_line("/proc/sys/kernel/random/boot_id")},
                      {"pid_ns", pid_namespace()},
                      {"pid", static_cast<long>(::getpid())},
                      {"pid_start", process_stat(::getpid()).start},
                      {"slurm_job_id", job ? std::string(job) : std::string()},
                      {"slurm_restart_count", restart ? std::atol(restart) : 0L},
                      {"started", detail::utc_now()},
                      {"heartbeat_s", opts_.heartbeat_s},
                      {"program", "shardflow train"}};
  record_ = j.dump(1) + "\n";
  const std::string mine = path_ + "." + token_;
  {
    const int fd = ::open(mine.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    SHARDFLOW_REQUIRE_INPUT(fd >= 0, "checkpoint.dir '", root, "': cannot create the lock file '", mine,
                            "': ", std::strerror(errno));
    const ssize_t w = ::write(fd, record_.data(), record_.size());
    const int err = errno;
    const bool synced = ::fsync(fd) == 0;
    ::close(fd);
    if (w != static_cast<ssize_t>(record_.size()) || !synced) {
      ::unlink(mine.c_str());
      throw InputError(concat("checkpoint.dir '", root, "': cannot write the lock file '", mine, "': ",
                              std::strerror(w < 0 ? err : ENOSPC)));
    }
  }
  struct Cleanup {
    std::string p;
    ~Cleanup() { ::unlink(p.c_str()); }
  } cleanup{mine};
  for (int attempt = 0;; ++attempt) {
    SHARDFLOW_REQUIRE_INPUT(attempt < 20, "checkpoint.dir '", root, "': could not claim '", path_,
                            "' after 20 attempts (other runs keep taking it)");
    const int rc = ::link(mine.c_str(), path_.c_str());
    const int err = errno;
    struct stat st{};
    if (rc == 0 || (::stat(mine.c_str(), &st) == 0 && st.st_nlink == 2)) break;  // NFS: the reply may be lost
    SHARDFLOW_REQUIRE_INPUT(err == EEXIST, "checkpoint.dir '", root, "': cannot create the lock '", path_, "': ",
                            std::strerror(err));
    // held: by whom, and are they alive?
    const Record held = read_record(path_);
    if (!held.readable && !mtime_of(path_).exists) continue;  // released meanwhile
    std::string why = gone_without_waiting(held);
    if (why.empty()) {
      double beat = held.readable ? held.j.value("heartbeat_s", opts_.heartbeat_s) : opts_.heartbeat_s;
      if (!std::isfinite(beat) || beat <= 0) beat = opts_.heartbeat_s;
      const double wait = std::min(3 * beat, 3600.0);
      const Mtime before = mtime_of(path_);
      const std::string holder = describe(held);
      const bool same_host = held.readable && held.j.value("host", std::string()) == hostname();
      if (same_host && held.j.value("pid_ns", std::string()) == pid_namespace())  // a live local process
        throw InputError(concat("checkpoint.dir '", root, "' is in use by ", holder, " (lock file '", path_,
                                "'): two runs must not write one checkpoint directory; wait for it to end, "
                                "or train into another directory (--set checkpoint.dir=...)"));
      opts_.log(concat("checkpoint.dir '", root, "' is locked by ", holder, "; waiting ", wait,
                       " s (3 of its heartbeats) to see whether it is alive"));
      std::this_thread::sleep_for(std::chrono::duration<double>(wait));
      const Mtime after = mtime_of(path_);
      const Record now = read_record(path_);
      if (!after.exists) continue;  // released while we waited
      if (!(after == before) || now.token() != held.token())
        throw InputError(concat("checkpoint.dir '", root, "' is in use by ", describe(now), " (lock file '", path_,
                                "', its heartbeat is alive): two runs must not write one checkpoint directory; "
                                "wait for it to end, or train into another directory (--set checkpoint.dir=...)"));
      why = concat("its lock has had no heartbeat for ", wait, " s");
    }
    // take the stale lock over: rename it aside (one contender wins), then check that what we
    // renamed is the record we judged
    const std::string aside = path_ + ".stale-" + token_;
    if (::rename(path_.c_str(), aside.c_str()) != 0) continue;  // someone else moved it first
    const Record moved = read_record(aside);
    if (moved.token() != held.token() || moved.readable != held.readable) {
      // a fresh lock replaced the stale one meanwhile: put it back (fails only when yet
      // another lock exists: then that one is the claim) and look again
      if (::link(aside.c_str(), path_.c_str()) != 0) {
      }
      ::unlink(aside.c_str());
      continue;
    }
    ::unlink(aside.c_str());
    opts_.log(concat("checkpoint.dir '", root, "': taking over the stale lock of ", describe(held), ": ", why));
  }
  heart_ = std::thread([this] {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
      cv_.wait_for(lk, std::chrono::duration<double>(opts_.heartbeat_s));
      if (stop_) break;
      lk.unlock();
      beat();
      lk.lock();
    }
  });
}

void RootLock::beat() { still_ours(true); }

bool RootLock::still_ours(bool touch) {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  const Record r = fd >= 0 ? read_record(fd) : Record{};
  if (r.token() != token_) {  // taken over (judged dead) or removed
    if (fd >= 0) ::close(fd);
    std::lock_guard<std::mutex> g(mu_);
    if (!lost_) lost_to_ = fd >= 0 ? describe(r) : std::string("nobody (the lock file was removed)");
    lost_ = true;
    return false;
  }
  if (touch) ::futimens(fd, nullptr);  // the same inode whose token we read: never another run's file
  ::close(fd);
  return true;
}

void RootLock::check() {
  // the heartbeat sees a takeover within one interval; a save must not wait for that
  if (!lost_ && still_ours(false)) return;
  std::lock_guard<std::mutex> g(mu_);
  throw InputError(concat("the lock of this run on its checkpoint directory ('", path_, "') was taken over by ",
                          lost_to_, ", which judged this run dead: not saving into a directory that another run "
                          "now writes"));
}

RootLock::~RootLock() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (heart_.joinable()) heart_.join();
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  const bool mine = read_record(fd).token() == token_;
  ::close(fd);
  if (mine) ::unlink(path_.c_str());
}

}  // namespace shardflow::ckpt
