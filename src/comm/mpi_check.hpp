#pragma once
// CHECK_MPI: the one place every MPI return code is checked.
#include <mpi.h>

#include "core/error.hpp"

namespace shardflow::detail {
std::string mpi_error_string(int code);
}

#define CHECK_MPI(call)                                                                        \
  do {                                                                                         \
    int shardflow_mpi_rc_ = (call);                                                            \
    if (shardflow_mpi_rc_ != MPI_SUCCESS)                                                      \
      ::shardflow::detail::throw_library_error("MPI", #call,                                   \
                                               ::shardflow::detail::mpi_error_string(shardflow_mpi_rc_), \
                                               __FILE__, __LINE__);                            \
  } while (0)
