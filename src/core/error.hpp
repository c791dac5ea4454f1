#pragma once
// Errors: every failure at an API boundary is a shardflow::Error whose message names
// the thing and the value. Library calls (MPI, NCCL, CUDA, HDF5) are checked with the
// CHECK_* macros, which throw with file:line, the call, and the library's own string.
#include <sstream>
#include <stdexcept>
#include <string>

namespace shardflow {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An error in user input (deck, flags, files): the apps print it without a trace.
class InputError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_library_error(const char* library, const char* call, const std::string& what,
                                      const char* file, int line);
}  // namespace detail

/// `text` made safe to quote in a message: at most `max` bytes (then "..."), every byte
/// outside printable ASCII shown as '?'. For echoing what a user's file holds.
std::string printable(const std::string& text, std::size_t max = 64);

/// Throws Error(concat(args...)) unless cond holds.
#define SHARDFLOW_REQUIRE(cond, ...)                                         \
  do {                                                                       \
    if (!(cond)) throw ::shardflow::Error(::shardflow::detail::concat(__VA_ARGS__)); \
  } while (0)

/// Same, but an InputError (bad user input).
#define SHARDFLOW_REQUIRE_INPUT(cond, ...)                                        \
  do {                                                                            \
    if (!(cond)) throw ::shardflow::InputError(::shardflow::detail::concat(__VA_ARGS__)); \
  } while (0)

}  // namespace shardflow
