#include "graph/executor.hpp"

#include <algorithm>
#include <functional>
#include <string>

#include "core/error.hpp"

namespace shardflow::graph {

RunStats Executor::run(TaskGraph& g) {
  const size_t n = g.size();
  const size_t nkeys = g.comm_keys().size();
  RunStats st;
  auto t_run0 = Clock::now();
  for (auto* o : observers_) o->on_run_begin(g);

  pending_.assign(n, 0);
  ready_compute_.clear();
  comm_ready_.resize(nkeys);
  comm_next_.assign(nkeys, 0);
  for (size_t k = 0; k < nkeys; ++k) comm_ready_[k].assign(g.comm_sequence(g.comm_keys()[k]).size(), -1);

  struct InFlight {
    int task;
    std::function<bool()> done;
  };
  std::vector<InFlight> inflight;
  inflight.reserve(16);
  size_t completed = 0;
  auto heap_cmp = std::greater<int>();

  std::function<void(int)> complete;  // defined below
  auto issue_ready_comms = [&](size_t k) {
    auto& rk = comm_ready_[k];
    while (comm_next_[k] < static_cast<int>(rk.size()) && rk[static_cast<size_t>(comm_next_[k])] >= 0) {
      int id = rk[static_cast<size_t>(comm_next_[k])];
      ++comm_next_[k];
      auto t = Clock::now();
      for (auto* o : observers_) o->on_task_begin(g, id, t);
      auto poller = g.node(id).start();
      inflight.push_back({id, std::move(poller)});
      ++st.comm_tasks;
    }
  };
  auto make_ready = [&](int id) {
    auto& node = g.node(id);
    if (node.kind == TaskKind::Compute) {
      ready_compute_.push_back(id);
      std::push_heap(ready_compute_.begin(), ready_compute_.end(), heap_cmp);
    } else {
      comm_ready_[static_cast<size_t>(node.comm_key)][static_cast<size_t>(node.comm_seq)] = id;
      issue_ready_comms(static_cast<size_t>(node.comm_key));
    }
  };
  complete = [&](int id) {
    ++completed;
    ++st.tasks;
    for (int s : g.node(id).succ)
      if (--pending_[static_cast<size_t>(s)] == 0) make_ready(s);
  };
  auto poll = [&]() {
    bool progressed = false;
    for (size_t i = 0; i < inflight.size();) {
      if (inflight[i].done()) {
        int id = inflight[i].task;
        inflight.erase(inflight.begin() + static_cast<long>(i));
        auto t = Clock::now();
        for (auto* o : observers_) o->on_task_end(g, id, t);
        complete(id);
        progressed = true;
      } else {
        ++i;
      }
    }
    return progressed;
  };

  for (size_t i = 0; i < n; ++i) pending_[i] = static_cast<int>(g.node(static_cast<int>(i)).pred.size());
  for (size_t i = 0; i < n; ++i)
    if (pending_[i] == 0) make_ready(static_cast<int>(i));

  while (completed < n) {
    if (!inflight.empty() && poll() && completed == n) break;
    if (!ready_compute_.empty()) {
      std::pop_heap(ready_compute_.begin(), ready_compute_.end(), heap_cmp);
      int id = ready_compute_.back();
      ready_compute_.pop_back();
      auto t0 = Clock::now();
      for (auto* o : observers_) o->on_task_begin(g, id, t0);
      g.node(id).compute();
      auto t1 = Clock::now();
      for (auto* o : observers_) o->on_task_end(g, id, t1);
      st.compute_s += std::chrono::duration<double>(t1 - t0).count();
      complete(id);
      continue;
    }
    if (inflight.empty()) {
      std::string stuck;
      for (size_t i = 0; i < n && stuck.size() < 400; ++i)
        if (pending_[i] > 0) stuck += " '" + g.node(static_cast<int>(i)).name + "'";
      for (size_t k = 0; k < nkeys; ++k)
        if (comm_next_[k] < static_cast<int>(comm_ready_[k].size()))
          stuck += " (communicator '" + g.comm_keys()[k] + "' waits for collective #" + std::to_string(comm_next_[k]) + ")";
      throw Error("executor: graph '" + g.name() + "' cannot make progress; waiting tasks:" + stuck);
    }
    auto w0 = Clock::now();
    while (!poll()) {
    }
    auto w1 = Clock::now();
    st.comm_wait_s += std::chrono::duration<double>(w1 - w0).count();
    for (auto* o : observers_) o->on_wait(w0, w1);
  }
  st.total_s = std::chrono::duration<double>(Clock::now() - t_run0).count();
  for (auto* o : observers_) o->on_run_end(g);
  totals_.total_s += st.total_s;
  totals_.compute_s += st.compute_s;
  totals_.comm_wait_s += st.comm_wait_s;
  totals_.tasks += st.tasks;
  totals_.comm_tasks += st.comm_tasks;
  return st;
}

}  // namespace shardflow::graph
