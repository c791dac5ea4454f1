#pragma once
// One MPI rank per core: shardflow's kernels run single-threaded per rank, so the BLAS
// library must not start its own thread pool (OpenBLAS's pthread build defaults to one
// thread per core, which oversubscribes the machine as soon as there are several ranks).
namespace shardflow {
/// Limits the BLAS library (OpenBLAS) and oneDNN's OpenMP pool to one thread each, unless
/// SHARDFLOW_BLAS_THREADS, or for each library its own variable (OPENBLAS_NUM_THREADS,
/// OMP_NUM_THREADS), says otherwise. Call once at start-up.
void limit_blas_threads();
}  // namespace shardflow
