#include "graph/task_graph.hpp"

#include <algorithm>
#include <ostream>
#include <sstream>

#include "core/error.hpp"

namespace shardflow::graph {

std::string CollectiveDesc::to_string() const {
  std::ostringstream os;
  os << kind << "(" << tensor << ", " << count << " " << dtype;
  if (peer >= 0) os << ", peer " << peer;
  os << ") on '" << comm << "'";
  return os.str();
}

Task& Task::name(const std::string& n) {
  g_->node(id_).name = n;
  return *this;
}

const std::string& Task::name() const { return g_->node(id_).name; }

TaskKind Task::kind() const { return g_->node(id_).kind; }

void Task::precede_one(const Task& t) {
  SHARDFLOW_REQUIRE(g_ && t.g_ == g_, "Task::precede: tasks belong to different graphs");
  SHARDFLOW_REQUIRE(t.id_ != id_, "Task::precede: task '", name(), "' cannot precede itself");
  auto& s = g_->node(id_).succ;
  if (std::find(s.begin(), s.end(), t.id_) != s.end()) return;
  s.push_back(t.id_);
  g_->node(t.id_).pred.push_back(id_);
}

Task TaskGraph::emplace(ComputeFn fn) {
  TaskNode n;
  n.kind = TaskKind::Compute;
  n.compute = std::move(fn);
  n.name = "task" + std::to_string(nodes_.size());
  nodes_.push_back(std::move(n));
  return Task(this, static_cast<int>(nodes_.size() - 1));
}

Task TaskGraph::emplace_comm(CollectiveDesc desc, CommStartFn start) {
  SHARDFLOW_REQUIRE(!desc.comm.empty(), "TaskGraph::emplace_comm: a communication task needs a communicator key");
  TaskNode n;
  n.kind = TaskKind::Comm;
  n.start = std::move(start);
  auto it = std::find(comm_keys_.begin(), comm_keys_.end(), desc.comm);
  if (it == comm_keys_.end()) {
    comm_keys_.push_back(desc.comm);
    comm_count_.push_back(0);
    it = comm_keys_.end() - 1;
  }
  n.comm_key = static_cast<int>(it - comm_keys_.begin());
  n.comm_seq = comm_count_[static_cast<size_t>(n.comm_key)]++;
  n.name = desc.kind + ":" + desc.tensor;
  n.desc = std::move(desc);
  nodes_.push_back(std::move(n));
  return Task(this, static_cast<int>(nodes_.size() - 1));
}

std::vector<int> TaskGraph::comm_sequence(const std::string& key) const {
  std::vector<int> out;
  auto it = std::find(comm_keys_.begin(), comm_keys_.end(), key);
  if (it == comm_keys_.end()) return out;
  const int k = static_cast<int>(it - comm_keys_.begin());
  out.resize(static_cast<size_t>(comm_count_[static_cast<size_t>(k)]));
  for (size_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].comm_key == k) out[static_cast<size_t>(nodes_[i].comm_seq)] = static_cast<int>(i);
  return out;
}

void TaskGraph::validate() const {
  // Kahn's algorithm; whatever is left over lies on or behind a cycle.
  std::vector<int> indeg(nodes_.size());
  std::vector<int> stack;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    indeg[i] = static_cast<int>(nodes_[i].pred.size());
    if (indeg[i] == 0) stack.push_back(static_cast<int>(i));
  }
  size_t seen = 0;
  while (!stack.empty()) {
    int v = stack.back();
    stack.pop_back();
    ++seen;
    for (int s : nodes_[static_cast<size_t>(v)].succ)
      if (--indeg[static_cast<size_t>(s)] == 0) stack.push_back(s);
  }
  if (seen != nodes_.size()) {
    for (size_t i = 0; i < nodes_.size(); ++i)
      if (indeg[i] > 0)
        throw Error("task graph '" + name_ + "' has a cycle through task '" + nodes_[i].name + "'");
  }
}

namespace {
std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}
}  // namespace

void TaskGraph::dump(std::ostream& os) const {
  os << "digraph \"" << escape(name_) << "\" {\n  rankdir=TB;\n";
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const auto& n = nodes_[i];
    os << "  t" << i << " [label=\"" << escape(n.name);
    if (n.kind == TaskKind::Comm)
      os << "\\n" << escape(n.desc.kind) << " on " << escape(n.desc.comm) << " #" << n.comm_seq
         << "\", shape=ellipse, style=filled, fillcolor=\"#cfe2ff\"];\n";
    else
      os << "\", shape=box];\n";
  }
  for (size_t i = 0; i < nodes_.size(); ++i)
    for (int s : nodes_[i].succ) os << "  t" << i << " -> t" << s << ";\n";
  os << "}\n";
}

std::string TaskGraph::dump() const {
  std::ostringstream os;
  dump(os);
  return os.str();
}

}  // namespace shardflow::graph
