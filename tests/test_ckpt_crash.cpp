// Invariant 6: no committed checkpoint is ever lost or half-visible, whatever is killed
// when. A child process saves checkpoints in a loop (sync, then async); we SIGKILL it at
// random moments, many times, and after every kill `latest` must restore to exactly the
// state of its step and every committed checkpoint must verify.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "ckpt/tools.hpp"
#include "ckpt_crash_model.hpp"

extern char** environ;

namespace {
using namespace shardflow;
namespace fs = std::filesystem;

pid_t spawn_child(const std::string& dir, bool async) {
  std::vector<std::string> args = {SHARDFLOW_CKPT_CHILD, dir, "loop"};
  if (async) args.push_back("async");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // a fresh singleton MPI process: drop any process-manager variables we inherited
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string s = *e;
    if (s.rfind("PMI_", 0) == 0 || s.rfind("HYDRA_", 0) == 0 || s.rfind("MPIR_", 0) == 0 || s.rfind("PMIX_", 0) == 0)
      continue;
    env.push_back(s);
  }
  std::vector<char*> envp;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), envp.data());
  EXPECT_EQ(rc, 0) << std::strerror(rc);
  return pid;
}

TEST(CheckpointCrash, LatestAlwaysLoadsAfterKill9) {
  const std::string dir = (fs::temp_directory_path() / ("sf_ckpt_crash_" + std::to_string(::getpid()))).string();
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::mt19937 rng(2026);
  const int kills = 40;
  int restored = 0;
  long long last_step = -1;
  for (int k = 0; k < kills; ++k) {
    pid_t pid = spawn_child(dir, k >= kills / 2);
    ASSERT_GT(pid, 0);
    // the first kills come early (while the first checkpoint is being written), later ones anywhere
    int ms = k < 4 ? static_cast<int>(rng() % 60) : 20 + static_cast<int>(rng() % 400);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited by itself (status " << status << ") after " << ms << " ms";

    if (ckpt::list_checkpoints(dir).empty()) {
      EXPECT_FALSE(fs::exists(fs::path(dir) / "latest")) << "a latest pointer without a committed checkpoint";
      continue;
    }
    // a committed checkpoint exists: the root must restore (through `latest`, or through the
    // newest step directory when the first save died before writing the pointer)
    auto model = test_model::tensors();
    std::vector<std::vector<float>> bufs;
    std::vector<ckpt::TensorState> ts;
    for (auto& [name, shape] : model) bufs.emplace_back(static_cast<size_t>(numel(shape)), -1.0f);
    for (size_t t = 0; t < model.size(); ++t)
      ts.push_back(ckpt::TensorState{model[t].first, Layout::replicated(model[t].second, MeshShape()), DType::F32,
                                     bufs[t].data()});
    ckpt::Metadata md;
    ASSERT_NO_THROW(md = ckpt::restore(MPI_COMM_SELF, dir, ts)) << "after kill " << k << " at " << ms << " ms";
    EXPECT_GE(md.step, last_step) << "latest went backwards";
    last_step = md.step;
    EXPECT_EQ(md.ints["data_position"], md.step * 1000);
    for (size_t t = 0; t < model.size(); ++t)
      ASSERT_EQ(bufs[t], test_model::values(t, md.step)) << "tensor " << model[t].first << " of step " << md.step;
    for (const auto& d : ckpt::list_checkpoints(dir)) {
      ckpt::VerifyReport r = ckpt::verify(MPI_COMM_SELF, d);
      EXPECT_TRUE(r.ok()) << d << ": " << (r.problems.empty() ? "" : r.problems[0]);
    }
    ++restored;
  }
  EXPECT_GT(restored, kills / 2) << "too few kills found a committed checkpoint to test";
  EXPECT_GT(last_step, 3) << "the child made too little progress to exercise the commit";
  std::printf("kills %d, restored after %d, newest step %lld\n", kills, restored, last_step);
  fs::remove_all(dir);
}

}  // namespace
