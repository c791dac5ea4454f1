#pragma once
// Re-executing this program, for settings that a library reads when it loads, before
// main() (OpenBLAS's core, UCX's memory hooks): call before MPI_Init.
#include <string>

namespace shardflow {

/// execv of this program (its resolved path, so ps keeps its name) with the same argv and
/// the current environment. Returns only when execv failed, after a warning on stderr that
/// names `why`.
void reexec_self(char** argv, const std::string& why);

}  // namespace shardflow
