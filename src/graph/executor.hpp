#pragma once
// Executor: runs a TaskGraph on the calling thread (one per MPI rank). Communication is
// non-blocking: a comm task is issued as soon as it is ready and next in its
// communicator's sequence, and is polled between compute tasks, so it progresses while
// compute runs. Among ready compute tasks the one emplaced first runs first, so a run is
// deterministic. When nothing can compute, the executor polls the in-flight operations
// and accounts that time as waiting on communication.
#include <cstdint>
#include <vector>

#include "graph/observer.hpp"
#include "graph/task_graph.hpp"

namespace shardflow::graph {

struct RunStats {
  double total_s = 0;      // wall time of the run
  double compute_s = 0;    // time inside compute tasks
  double comm_wait_s = 0;  // time blocked on communication with no compute ready
  int64_t tasks = 0;
  int64_t comm_tasks = 0;
};

class Executor {
 public:
  Executor() = default;
  void add_observer(Observer* o) { observers_.push_back(o); }
  void clear_observers() { observers_.clear(); }
  /// Runs every task once, respecting dependencies. Rethrows the first exception a task
  /// throws (after letting in-flight communication of this rank complete is NOT attempted:
  /// callers treat an exception as fatal for the job).
  RunStats run(TaskGraph& g);
  /// Accumulated over all runs.
  const RunStats& totals() const { return totals_; }

 private:
  std::vector<Observer*> observers_;
  RunStats totals_;
  // scratch reused across runs (no allocation in the steady state)
  std::vector<int> pending_;
  std::vector<int> ready_compute_;
  std::vector<std::vector<int>> comm_ready_;  // per communicator: ready flags by seq
  std::vector<int> comm_next_;
};

}  // namespace shardflow::graph
