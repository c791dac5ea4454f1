#pragma once
// Executor: runs a TaskGraph on the calling thread (one per MPI rank). Communication is
// non-blocking: a comm task is issued as soon as it is ready and next in its
// communicator's sequence, and is polled between compute tasks, so it progresses while
// compute runs. Among ready compute tasks the one emplaced first runs first, so a run is
// deterministic. When nothing can compute, the executor polls the in-flight operations
// and accounts that time as waiting on communication. Time spent issuing and polling
// communication is neither compute nor waiting (RunStats' remainder).
#include <cstdint>
#include <functional>
#include <vector>

#include "graph/observer.hpp"
#include "graph/task_graph.hpp"

namespace shardflow::graph {

struct RunStats {
  double total_s = 0;      // wall time of the run
  double compute_s = 0;    // time inside compute tasks (without observers this includes the
                           // executor's bookkeeping between consecutive compute tasks, tens of ns
                           // each: the clock is read only when the activity changes)
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
  // Scratch reused across runs (no allocation in the steady state once sized).
  struct InFlight {
    int task;
    std::function<bool()> done;
  };
  std::vector<int> pending_;             // unfinished predecessors per task
  std::vector<uint64_t> ready_bits_;     // ready compute tasks, one bit per task id
  std::vector<uint64_t> ready_summary_;  // one bit per non-zero word of ready_bits_
  size_t ready_count_ = 0;
  std::vector<int> comm_base_;           // per communicator: offset into comm_slots_
  std::vector<int> comm_end_;            // per communicator: end offset into comm_slots_
  std::vector<int> comm_next_;           // per communicator: next slot to issue
  std::vector<int> comm_slots_;          // task id ready at each sequence position, or -1
  std::vector<InFlight> inflight_;
};

}  // namespace shardflow::graph
