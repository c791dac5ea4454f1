#pragma once
// Observers see every task start and end (Taskflow's observer idea). ChromeTraceObserver
// writes a Chrome trace (Perfetto-readable JSON) per rank: compute tasks on thread 0,
// the lifetime of communication tasks (issue to completion) on thread 1, and the time the
// executor spent waiting on communication with nothing to compute on thread 2.
#include <chrono>
#include <string>
#include <vector>

#include "graph/task_graph.hpp"

namespace shardflow::graph {

using Clock = std::chrono::steady_clock;

class Observer {
 public:
  virtual ~Observer() = default;
  virtual void on_run_begin(const TaskGraph&) {}
  virtual void on_task_begin(const TaskGraph&, int task, Clock::time_point) {}
  virtual void on_task_end(const TaskGraph&, int task, Clock::time_point) {}
  virtual void on_wait(Clock::time_point begin, Clock::time_point end) {}
  virtual void on_run_end(const TaskGraph&) {}
};

class ChromeTraceObserver : public Observer {
 public:
  explicit ChromeTraceObserver(int rank) : rank_(rank), origin_(Clock::now()) {}
  void on_task_begin(const TaskGraph&, int task, Clock::time_point t) override;
  void on_task_end(const TaskGraph&, int task, Clock::time_point t) override;
  void on_wait(Clock::time_point begin, Clock::time_point end) override;
  /// Writes {"traceEvents": [...]} to path; throws naming the path on failure.
  void write(const std::string& path) const;
  size_t num_events() const { return events_.size(); }

 private:
  struct Event {
    std::string name, cat;
    double ts_us, dur_us;
    int tid;
  };
  double us(Clock::time_point t) const;
  int rank_;
  Clock::time_point origin_;
  std::vector<std::pair<int, Clock::time_point>> open_;  // task id -> begin
  std::vector<Event> events_;
};

}  // namespace shardflow::graph
