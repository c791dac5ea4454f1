#include "core/process.hpp"

#include <unistd.h>

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

}  // namespace shardflow
