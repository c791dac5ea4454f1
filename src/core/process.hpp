#pragma once
// Re-executing this program, for settings that a library reads when it loads, before
// main() (OpenBLAS's core, UCX's memory hooks): call before MPI_Init.
#include <string>

namespace shardflow {

/// execv of this program (its resolved path, so ps keeps its name) with the same argv and
/// the current environment. Returns only when execv failed, after a warning on stderr that
/// names `why`.
void reexec_self(char** argv, const std::string& why);

/// Makes a non-zero exit status reach the launcher. Call last, just before returning a
/// non-zero status from main() (after MPI_Finalize).
///
/// MPICH 4.0.2's hydra proxy (Debian bookworm's mpiexec) reports an exit status of 0 for
/// a rank that it reaps only after all of its output pipes have closed, once it has
/// forwarded a signal to the ranks: `kill -TERM <mpiexec>` lost the ranks' 99 in about half
/// of the trials (fixed upstream in MPICH 4.1, commit ed7e86a "hydra: remove
/// forced_cleanup in proxy"). Under a PMI launcher (PMI_FD or PMI_RANK set) this forks a
/// helper that keeps copies of stdout and stderr open until this process has exited, then
/// closes stdout, waits 200 ms and closes stderr: the proxy sees this process's death while
/// a pipe is still open and records its real status. Elsewhere it does nothing.
void keep_output_open_past_exit();

}  // namespace shardflow
