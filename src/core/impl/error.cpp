#include "core/error.hpp"

namespace shardflow::detail {

void throw_library_error(const char* library, const char* call, const std::string& what, const char* file,
                         int line) {
  throw Error(concat(library, " error at ", file, ":", line, ": ", call, " failed: ", what));
}

}  // namespace shardflow::detail
