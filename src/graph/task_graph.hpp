#pragma once
// TaskGraph: compute and communication tasks with explicit dependencies, in Taskflow's
// shape: `auto t = g.emplace(fn).name("fwd.l0")`, `a.precede(b)`, built once per step
// shape and run every step by an Executor; `dump()` writes Graphviz DOT.
//
// A communication task has a *start* function that issues a non-blocking operation and
// returns a poller (true once complete), plus a CollectiveDesc naming the communicator,
// the kind, the tensor and the size. Comm tasks of one communicator carry a sequence
// number in emplace order: the executor issues them strictly in that order, so every
// rank issues the collectives of a communicator in the same (canonical) order whatever
// the timing, and the verify pass can prove it before anything runs.
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

namespace shardflow::graph {

enum class TaskKind : uint8_t { Compute, Comm };

/// What a communication task does, for verification, tracing and DOT.
struct CollectiveDesc {
  std::string comm;    // communicator key, e.g. "data" or "data+fsdp" (mesh axes joined by '+')
  std::string kind;    // all_reduce, all_gather, reduce_scatter, broadcast, send, recv, all_to_allv, ...
  std::string tensor;  // what it moves
  int64_t count = 0;   // elements
  std::string dtype;   // f32, bf16, ...
  int peer = -1;       // for send/recv: the peer's rank in the communicator
  std::string to_string() const;
};

using ComputeFn = std::function<void()>;
/// Issues the operation; returns a function that tests for completion (true when done).
using CommStartFn = std::function<std::function<bool()>()>;

class TaskGraph;

/// A handle to a task of a graph (cheap to copy; valid while the graph lives).
class Task {
 public:
  Task() = default;
  Task& name(const std::string& n);
  const std::string& name() const;
  /// This task runs before every task given.
  template <typename... Ts>
  Task& precede(Ts&&... ts) {
    (precede_one(ts), ...);
    return *this;
  }
  /// This task runs after every task given.
  template <typename... Ts>
  Task& succeed(Ts&&... ts) {
    (ts.precede_one(*this), ...);
    return *this;
  }
  int id() const { return id_; }
  TaskKind kind() const;
  bool valid() const { return g_ != nullptr; }

 private:
  friend class TaskGraph;
  Task(TaskGraph* g, int id) : g_(g), id_(id) {}
  void precede_one(const Task& t);
  TaskGraph* g_ = nullptr;
  int id_ = -1;
};

struct TaskNode {
  std::string name;
  TaskKind kind = TaskKind::Compute;
  ComputeFn compute;
  CommStartFn start;
  CollectiveDesc desc;
  int comm_seq = -1;  // position among the comm tasks of its communicator
  int comm_key = -1;  // index into TaskGraph::comm_keys()
  std::vector<int> succ;
  std::vector<int> pred;
};

class TaskGraph {
 public:
  explicit TaskGraph(std::string name = "step") : name_(std::move(name)) {}
  TaskGraph(const TaskGraph&) = delete;
  TaskGraph& operator=(const TaskGraph&) = delete;
  TaskGraph(TaskGraph&&) = default;
  TaskGraph& operator=(TaskGraph&&) = default;

  Task emplace(ComputeFn fn);
  Task emplace_comm(CollectiveDesc desc, CommStartFn start);

  size_t size() const { return nodes_.size(); }
  const std::string& name() const { return name_; }
  const TaskNode& node(int id) const { return nodes_.at(static_cast<size_t>(id)); }
  TaskNode& node(int id) { return nodes_.at(static_cast<size_t>(id)); }
  Task task(int id) { return Task(this, id); }
  /// Communicator keys in first-use order, and each one's comm tasks in sequence order.
  const std::vector<std::string>& comm_keys() const { return comm_keys_; }
  std::vector<int> comm_sequence(const std::string& key) const;

  /// Throws shardflow::Error naming a task on the cycle when the graph is not a DAG.
  void validate() const;
  /// Graphviz DOT: compute tasks as boxes, comm tasks as ellipses labelled with their collective.
  void dump(std::ostream& os) const;
  std::string dump() const;

 private:
  friend class Task;
  std::string name_;
  std::vector<TaskNode> nodes_;
  std::vector<std::string> comm_keys_;
  std::vector<int> comm_count_;
};

}  // namespace shardflow::graph
