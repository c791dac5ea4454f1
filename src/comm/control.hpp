#pragma once
// Control: small, blocking host messages over a process group: agreement and metadata
// (errors, strings, counters, timings), not tensors. The checkpoints' record exchange, the
// verify pass and the CLI's reductions use it; tensors go through Communicator. Every MPI
// call lives in comm/impl/control.cpp and is checked (CHECK_MPI).
//
// Nomenclature
//   handle     the MPI communicator the group talks on (borrowed, or owned when duplicated).
//   agree      every rank learns the first rank's error and throws it (no rank left waiting).
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace shardflow::comm {

class Control {
 public:
  /// Talks on `comm` (borrowed: it must outlive this object).
  explicit Control(MPI_Comm comm);
  /// MPI_COMM_WORLD.
  static Control world();
  /// A private duplicate of `comm`, freed with this object (unless MPI is already finalized),
  /// so its messages never mix with the caller's. Collective over `comm`.
  static Control duplicate(MPI_Comm comm);
  Control(Control&& o) noexcept;
  Control& operator=(Control&& o) noexcept;
  Control(const Control&) = delete;
  Control& operator=(const Control&) = delete;
  ~Control();

  MPI_Comm handle() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

  // Reductions over all ranks (every rank gets the result).
  int min(int v) const;
  int max(int v) const;
  std::int64_t max(std::int64_t v) const;
  double min(double v) const;
  double max(double v) const;
  double sum(double v) const;
  /// Element-wise, in place.
  void sum(std::int64_t* values, int n) const;
  void max(double* values, int n) const;

  /// root's string on every rank.
  std::string broadcast(const std::string& s, int root) const;
  /// Every rank's string on `root`, in rank order (point to point, so it may run on a
  /// thread of its own on a private duplicate); other ranks get an empty vector.
  std::vector<std::string> gather(const std::string& s, int root = 0) const;
  /// Every rank's string on every rank, in rank order.
  std::vector<std::string> all_gather(const std::string& s) const;
  /// Every rank's value on `root`, in rank order; other ranks get an empty vector.
  std::vector<std::int64_t> gather(std::int64_t v, int root = 0) const;

  /// How many ranks of this communicator share this rank's node (its shared-memory group).
  /// Collective.
  int node_ranks() const;

  /// Collective: when any rank passes a non-empty error, every rank throws InputError with
  /// the lowest such rank's message (followed by " (rank r)" on a group of several ranks).
  void agree(const std::string& local_error) const;

 private:
  Control(MPI_Comm comm, bool owned);
  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
  int rank_ = 0, size_ = 1;
};

/// True once MPI_Finalize has run (destructors of long-lived objects check it).
bool mpi_finalized();

// The process's MPI environment (the CLI's main).
/// MPI_Init (throws Error when it fails).
void mpi_init(int& argc, char**& argv);
/// Whether MPI is initialized and not finalized (a subcommand that needs no MPI runs without it).
bool mpi_up();
/// Whether this process was started as one of several ranks of a job: a launcher says so in
/// the environment with a size above 1 (PMI_SIZE or MPI_LOCALNRANKS: MPICH's mpiexec and PMI
/// launchers; OMPI_COMM_WORLD_SIZE: Open MPI; MV2_COMM_WORLD_SIZE: MVAPICH2; JSM_NAMESPACE_SIZE:
/// jsrun; SLURM_STEP_NUM_TASKS inside an srun step).
bool launched_as_one_of_many();
/// Whether mpi_init found more ranks on this node than CPUs online: Control's collectives
/// then wait with MPI_Test and short sleeps instead of spinning (see control.cpp).
bool oversubscribed();
/// MPI_Finalize, when MPI is initialized and not yet finalized.
void mpi_finalize();
/// Aborts every rank of the job with `code` (does not return; without MPI: exits).
[[noreturn]] void mpi_abort(int code);
/// This process's rank in MPI_COMM_WORLD (0 before MPI_Init).
int world_rank();
/// Waits up to `seconds` for every rank of MPI_COMM_WORLD to arrive here (a non-blocking
/// barrier). True when all did: a failure every rank shares, so all can exit cleanly.
/// True at once without MPI (one process).
bool all_ranks_arrive(double seconds);

}  // namespace shardflow::comm
