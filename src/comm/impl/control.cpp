#include "comm/control.hpp"
#include "core/process.hpp"

#include <unistd.h>

#include <chrono>
#include <ctime>
#include <climits>
#include <cstdlib>
#include <thread>
#include <utility>

#include "core/error.hpp"
#include "comm/mpi_check.hpp"

namespace shardflow::comm {

namespace {
constexpr int kGatherTag = 7301;
// More ranks on this node than it has CPUs (set by mpi_init): a rank that spins in a
// collective then holds a CPU that a rank it waits for needs, and every collective costs
// scheduler time slices (6-8 ms per barrier with 4 ranks on 2 cores, measured). Control's
// collectives then wait politely: MPI_Test for 50 us, then sleeps of 2 us doubling to 128 us
// between tests (about 0.5 ms per barrier there). Otherwise they block as usual.
bool g_oversubscribed = false;

void finish(MPI_Request& req) {
  if (!g_oversubscribed) {
    CHECK_MPI(MPI_Wait(&req, MPI_STATUS_IGNORE));
    return;
  }
  int done = 0;
  const double t0 = MPI_Wtime();
  while (!done && MPI_Wtime() - t0 < 50e-6) CHECK_MPI(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
  long ns = 2000;
  while (!done) {
    timespec ts{0, ns};
    nanosleep(&ts, nullptr);
    if (ns < 128000) ns *= 2;
    CHECK_MPI(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
  }
}

void allreduce(const void* in, void* out, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c) {
  MPI_Request req;
  CHECK_MPI(MPI_Iallreduce(in, out, n, t, op, c, &req));
  finish(req);
}
void bcast(void* p, int n, MPI_Datatype t, int root, MPI_Comm c) {
  MPI_Request req;
  CHECK_MPI(MPI_Ibcast(p, n, t, root, c, &req));
  finish(req);
}

template <class T>
T reduce1(MPI_Comm c, T v, MPI_Datatype t, MPI_Op op) {
  T out{};
  allreduce(&v, &out, 1, t, op, c);
  return out;
}
}  // namespace

Control::Control(MPI_Comm comm) : Control(comm, false) {}

Control::Control(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  CHECK_MPI(MPI_Comm_rank(comm_, &rank_));
  CHECK_MPI(MPI_Comm_size(comm_, &size_));
}

Control Control::world() { return Control(MPI_COMM_WORLD); }

Control Control::duplicate(MPI_Comm comm) {
  MPI_Comm dup = MPI_COMM_NULL;
  CHECK_MPI(MPI_Comm_dup(comm, &dup));
  return Control(dup, true);
}

Control::Control(Control&& o) noexcept : comm_(o.comm_), owned_(o.owned_), rank_(o.rank_), size_(o.size_) {
  o.comm_ = MPI_COMM_NULL;
  o.owned_ = false;
}

Control& Control::operator=(Control&& o) noexcept {
  std::swap(comm_, o.comm_);
  std::swap(owned_, o.owned_);
  std::swap(rank_, o.rank_);
  std::swap(size_, o.size_);
  return *this;
}

Control::~Control() {
  // a destructor cannot throw: a failing free leaks one handle, which MPI_Finalize reclaims
  if (owned_ && comm_ != MPI_COMM_NULL && !mpi_finalized()) (void)MPI_Comm_free(&comm_);
}

int Control::min(int v) const { return reduce1(comm_, v, MPI_INT, MPI_MIN); }
int Control::max(int v) const { return reduce1(comm_, v, MPI_INT, MPI_MAX); }
std::int64_t Control::max(std::int64_t v) const { return reduce1(comm_, v, MPI_INT64_T, MPI_MAX); }
double Control::min(double v) const { return reduce1(comm_, v, MPI_DOUBLE, MPI_MIN); }
double Control::max(double v) const { return reduce1(comm_, v, MPI_DOUBLE, MPI_MAX); }
double Control::sum(double v) const { return reduce1(comm_, v, MPI_DOUBLE, MPI_SUM); }

void Control::sum(std::int64_t* values, int n) const {
  allreduce(MPI_IN_PLACE, values, n, MPI_INT64_T, MPI_SUM, comm_);
}
void Control::max(double* values, int n) const {
  allreduce(MPI_IN_PLACE, values, n, MPI_DOUBLE, MPI_MAX, comm_);
}

std::string Control::broadcast(const std::string& s, int root) const {
  long long n = static_cast<long long>(s.size());
  bcast(&n, 1, MPI_LONG_LONG, root, comm_);
  SHARDFLOW_REQUIRE(n >= 0 && n <= INT_MAX, "Control::broadcast: ", n, " bytes is more than one message holds");
  std::string out = s;
  out.resize(static_cast<size_t>(n));
  if (n > 0) bcast(out.data(), static_cast<int>(n), MPI_CHAR, root, comm_);
  return out;
}

std::vector<std::string> Control::gather(const std::string& s, int root) const {
  SHARDFLOW_REQUIRE(s.size() <= static_cast<size_t>(INT_MAX), "Control::gather: ", s.size(),
                    " bytes is more than one message holds");
  std::vector<std::string> out;
  if (rank_ != root) {
    CHECK_MPI(MPI_Send(s.data(), static_cast<int>(s.size()), MPI_CHAR, root, kGatherTag, comm_));
    return out;
  }
  out.resize(static_cast<size_t>(size_));
  for (int r = 0; r < size_; ++r) {
    if (r == root) {
      out[static_cast<size_t>(r)] = s;
      continue;
    }
    MPI_Status st;
    CHECK_MPI(MPI_Probe(r, kGatherTag, comm_, &st));
    int n = 0;
    CHECK_MPI(MPI_Get_count(&st, MPI_CHAR, &n));
    std::string m(static_cast<size_t>(n), '\0');
    CHECK_MPI(MPI_Recv(m.data(), n, MPI_CHAR, r, kGatherTag, comm_, MPI_STATUS_IGNORE));
    out[static_cast<size_t>(r)] = std::move(m);
  }
  return out;
}

std::vector<std::string> Control::all_gather(const std::string& s) const {
  SHARDFLOW_REQUIRE(s.size() <= static_cast<size_t>(INT_MAX), "Control::all_gather: ", s.size(),
                    " bytes is more than one message holds");
  int len = static_cast<int>(s.size());
  std::vector<int> lens(static_cast<size_t>(size_)), displs(static_cast<size_t>(size_), 0);
  {
    MPI_Request req;
    CHECK_MPI(MPI_Iallgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm_, &req));
    finish(req);
  }
  long long total = 0;
  for (int r = 0; r < size_; ++r) {
    displs[static_cast<size_t>(r)] = static_cast<int>(total);
    total += lens[static_cast<size_t>(r)];
  }
  SHARDFLOW_REQUIRE(total <= INT_MAX, "Control::all_gather: ", total, " bytes in all is more than one message holds");
  std::string all(static_cast<size_t>(total), '\0');
  {
    MPI_Request req;
    CHECK_MPI(MPI_Iallgatherv(s.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, comm_, &req));
    finish(req);
  }
  std::vector<std::string> out;
  for (int r = 0; r < size_; ++r)
    out.push_back(all.substr(static_cast<size_t>(displs[static_cast<size_t>(r)]),
                             static_cast<size_t>(lens[static_cast<size_t>(r)])));
  return out;
}

std::vector<std::int64_t> Control::gather(std::int64_t v, int root) const {
  std::vector<std::int64_t> out(rank_ == root ? static_cast<size_t>(size_) : 0);
  MPI_Request req;
  CHECK_MPI(MPI_Igather(&v, 1, MPI_INT64_T, out.data(), 1, MPI_INT64_T, root, comm_, &req));
  finish(req);
  return out;
}

void Control::agree(const std::string& local_error) const {
  const int first = min(local_error.empty() ? INT_MAX : rank_);
  if (first == INT_MAX) return;
  std::string msg = broadcast(local_error, first);
  if (size_ > 1) msg = ::shardflow::detail::concat(msg, " (rank ", first, ")");
  throw InputError(msg);
}

bool mpi_finalized() {
  int f = 0;
  if (MPI_Finalized(&f) != MPI_SUCCESS) return true;  // cannot ask: act as if finalized
  return f != 0;
}

int Control::node_ranks() const {
  MPI_Comm node = MPI_COMM_NULL;
  CHECK_MPI(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  int n = 1;
  CHECK_MPI(MPI_Comm_size(node, &n));
  CHECK_MPI(MPI_Comm_free(&node));
  return n;
}

void mpi_init(int& argc, char**& argv) {
  // Debian's MPICH runs over UCX, whose memory hooks by default rewrite the first bytes of
  // libc's mmap/munmap/brk in place ("bistro" mode; /proc/PID/maps shows libc's text split
  // into one-page pieces). A thread inside mmap while the hooks are written or removed
  // dies of a general protection fault at mmap+0: seen twice at process exit (ckpt verify
  // on 2 ranks, eval on 3) in full-suite runs, dmesg "general protection fault ... in
  // libc.so.6[1019a0...]", 0x1019a0 being mmap. The hooks serve UCX's registration cache
  // for RDMA transports; with them off UCX registers memory per transfer. A user who wants
  // them (InfiniBand, large messages) sets UCX_MEM_EVENTS=yes: it is never overridden.
  // UCX reads its configuration when its libraries load, before main(): so the variable is
  // set and the program re-executed (before MPI_Init, like the BLAS kernel choice).
  if (std::getenv("UCX_MEM_EVENTS") == nullptr && argv != nullptr && argv[0] != nullptr) {
    setenv("UCX_MEM_EVENTS", "no", 1);
    reexec_self(argv, "with UCX_MEM_EVENTS=no");
  }
  // a test hook: the commands that need no MPI must run with MPI_Init failing
  SHARDFLOW_REQUIRE(std::getenv("SHARDFLOW_TEST_FAIL_MPI_INIT") == nullptr,
                    "MPI_Init: refused (SHARDFLOW_TEST_FAIL_MPI_INIT is set)");
  CHECK_MPI(MPI_Init(&argc, &argv));
  // oversubscribed: more ranks on this node than CPUs online (see finish())
  MPI_Comm node = MPI_COMM_NULL;
  CHECK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  int n = 1;
  CHECK_MPI(MPI_Comm_size(node, &n));
  CHECK_MPI(MPI_Comm_free(&node));
  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  g_oversubscribed = cpus > 0 && n > cpus;
}

bool oversubscribed() { return g_oversubscribed; }

void mpi_finalize() {
  int init = 0;
  CHECK_MPI(MPI_Initialized(&init));
  if (init && !mpi_finalized()) CHECK_MPI(MPI_Finalize());
}

bool mpi_up() {
  int init = 0;
  CHECK_MPI(MPI_Initialized(&init));
  return init && !mpi_finalized();
}

bool launched_as_one_of_many() {
  // MPICH's hydra and PMI launchers, Open MPI, MVAPICH2's mpirun_rsh, IBM's jsrun
  for (const char* v :
       {"PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE", "JSM_NAMESPACE_SIZE"}) {
    const char* s = std::getenv(v);
    if (s != nullptr && std::atol(s) > 1) return true;
  }
  // srun starts each task with SLURM_STEP_ID set; sbatch's batch script has SLURM_NTASKS
  // (the allocation's) but is one process
  const char* step = std::getenv("SLURM_STEP_ID");
  const char* ntasks = std::getenv("SLURM_STEP_NUM_TASKS");
  return step != nullptr && ntasks != nullptr && std::atol(ntasks) > 1;
}

void mpi_abort(int code) {
  if (!mpi_up()) std::_Exit(code);
  (void)MPI_Abort(MPI_COMM_WORLD, code);  // does not return when it works
  std::_Exit(code);
}

int world_rank() {
  int init = 0, r = 0;
  CHECK_MPI(MPI_Initialized(&init));
  if (init && !mpi_finalized()) CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &r));
  return r;
}

bool all_ranks_arrive(double seconds) {
  if (!mpi_up()) return true;
  MPI_Request req;
  CHECK_MPI(MPI_Ibarrier(MPI_COMM_WORLD, &req));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int done = 0;
  while (!done && std::chrono::steady_clock::now() < deadline) {
    CHECK_MPI(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return done != 0;
}

}  // namespace shardflow::comm
