#include "core/error.hpp"

namespace shardflow {

std::string printable(const std::string& text, std::size_t max) {
  std::string s = text.size() > max ? text.substr(0, max) + "..." : text;
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  return s;
}

}  // namespace shardflow

namespace shardflow::detail {

void throw_library_error(const char* library, const char* call, const std::string& what, const char* file,
                         int line) {
  throw Error(concat(library, " error at ", file, ":", line, ": ", call, " failed: ", what));
}

}  // namespace shardflow::detail
