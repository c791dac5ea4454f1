#include "core/process.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace shardflow {

void reexec_self(char** argv, const std::string& why) {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) self[n] = '\0';
  execv(n > 0 ? self : "/proc/self/exe", argv);
  std::fprintf(stderr, "shardflow: warning: could not re-execute /proc/self/exe (%s): %s\n", why.c_str(),
               std::strerror(errno));
  std::fflush(stderr);
}

void keep_output_open_past_exit() {
  if (!std::getenv("PMI_FD") && !std::getenv("PMI_RANK")) return;
  std::fflush(stdout);
  std::fflush(stderr);
  int fds[2];
  if (pipe(fds) != 0) return;
  const pid_t parent = getpid();
  const pid_t child = fork();
  if (child != 0) {  // this process (or fork failed): keep only the write end, which exit closes
    close(fds[0]);
    if (child < 0) close(fds[1]);
    return;
  }
  // the helper: async-signal-safe calls only (the parent may have had threads)
  close(fds[1]);
  if (fds[0] != 3) {
    dup2(fds[0], 3);
    close(fds[0]);
  }
  syscall(SYS_close_range, 4U, ~0U, 0U);  // no copy of the PMI socket or any other descriptor
  char b;
  for (;;) {  // end of file: the parent's descriptors are closed, it is exiting
    const ssize_t r = read(3, &b, 1);
    if (r == 0 || (r < 0 && errno != EINTR)) break;
  }
  for (int i = 0; i < 5000 && getppid() == parent; ++i) usleep(1000);  // reparented: it is a zombie
  close(1);
  usleep(200 * 1000);  // the proxy handles that event (and reaps the parent) before the last one
  close(2);
  _exit(0);
}

}  // namespace shardflow
