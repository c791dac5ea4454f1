#include "graph/executor.hpp"

#include <string>
#include <thread>

#include "core/error.hpp"

namespace shardflow::graph {

namespace {

int lowest_bit(uint64_t w) { return __builtin_ctzll(w); }

// Polls of a wait before the executor starts yielding the core between polls.
constexpr int kSpinPolls = 64;

// What the run is doing since the last clock read; time is charged to it at the next change.
enum class Activity { Other, Compute, Wait };

}  // namespace

// The scheduler, per run:
//  - ready compute tasks live in a two-level bitset (one bit per task id, one summary bit
//    per 64-task word), so "the smallest ready id" (the deterministic order) costs a few
//    word scans instead of heap operations;
//  - comm tasks wait in a flat per-communicator array indexed by sequence number and are
//    issued strictly in that order;
//  - the clock is read only when the activity changes (compute -> comm issue/poll -> wait),
//    or around every task when observers are attached (they need each task's times), so a
//    run of consecutive compute tasks costs no clock reads;
//  - a wait spins kSpinPolls polls, then yields between polls;
//  - per-graph state (predecessor counts, communicator sequence sizes) is gathered in one
//    pass over the nodes; all scratch is reused across runs.
RunStats Executor::run(TaskGraph& g) {
  const size_t n = g.size();
  const size_t nkeys = g.comm_keys().size();
  const bool observed = !observers_.empty();
  RunStats st;
  const auto t_run0 = Clock::now();
  for (auto* o : observers_) o->on_run_begin(g);
  TaskNode* const nodes = n > 0 ? &g.node(0) : nullptr;

  // ---- per-run state, one pass over the graph ----------------------------------------------
  pending_.resize(n);
  const size_t nwords = (n + 63) / 64;
  ready_bits_.assign(nwords, 0);
  ready_summary_.assign((nwords + 63) / 64, 0);
  ready_count_ = 0;
  comm_end_.assign(nkeys, 0);
  for (size_t i = 0; i < n; ++i) {
    pending_[i] = static_cast<int>(nodes[i].pred.size());
    if (nodes[i].kind == TaskKind::Comm) ++comm_end_[static_cast<size_t>(nodes[i].comm_key)];
  }
  comm_base_.resize(nkeys);
  comm_next_.resize(nkeys);
  int ncomm = 0;
  for (size_t k = 0; k < nkeys; ++k) {
    comm_base_[k] = comm_next_[k] = ncomm;
    ncomm += comm_end_[k];
    comm_end_[k] = ncomm;
  }
  comm_slots_.assign(static_cast<size_t>(ncomm), -1);
  inflight_.clear();

  // ---- time accounting -----------------------------------------------------------------------
  Activity activity = Activity::Other;
  Clock::time_point t_mark = t_run0;
  double* const bucket_of[] = {nullptr, &st.compute_s, &st.comm_wait_s};
  // Charges the time since the last read to the current activity and switches; reads the
  // clock only on a change (or always when `force`). Returns the time of the switch.
  auto switch_to = [&](Activity a, bool force) {
    if (a == activity && !force) return t_mark;
    const auto now = Clock::now();
    if (double* b = bucket_of[static_cast<int>(activity)]) *b += std::chrono::duration<double>(now - t_mark).count();
    t_mark = now;
    activity = a;
    return now;
  };

  // ---- ready sets ------------------------------------------------------------------------------
  auto push_ready = [&](int id) {
    const size_t w = static_cast<size_t>(id) >> 6;
    ready_bits_[w] |= uint64_t{1} << (id & 63);
    ready_summary_[w >> 6] |= uint64_t{1} << (w & 63);
    ++ready_count_;
  };
  auto pop_ready = [&]() {
    size_t s = 0;
    while (ready_summary_[s] == 0) ++s;
    const size_t w = (s << 6) + static_cast<size_t>(lowest_bit(ready_summary_[s]));
    const int id = static_cast<int>((w << 6) + static_cast<size_t>(lowest_bit(ready_bits_[w])));
    ready_bits_[w] &= ready_bits_[w] - 1;
    if (ready_bits_[w] == 0) ready_summary_[s] &= ~(uint64_t{1} << (w & 63));
    --ready_count_;
    return id;
  };
  auto issue_ready_comms = [&](size_t k) {
    int& next = comm_next_[k];
    while (next < comm_end_[k] && comm_slots_[static_cast<size_t>(next)] >= 0) {
      const int id = comm_slots_[static_cast<size_t>(next)];
      ++next;
      const auto t = switch_to(Activity::Other, observed);
      for (auto* o : observers_) o->on_task_begin(g, id, t);
      inflight_.push_back({id, nodes[id].start()});
      ++st.comm_tasks;
    }
  };
  size_t completed = 0;
  auto complete = [&](int id) {
    ++completed;
    for (int s : nodes[id].succ) {
      if (--pending_[static_cast<size_t>(s)] != 0) continue;
      const TaskNode& sn = nodes[s];
      if (sn.kind == TaskKind::Compute) {
        push_ready(s);
      } else {
        const size_t k = static_cast<size_t>(sn.comm_key);
        comm_slots_[static_cast<size_t>(comm_base_[k] + sn.comm_seq)] = s;
        issue_ready_comms(k);
      }
    }
  };
  // Tests every in-flight operation once (in issue order) and completes the finished ones;
  // operations their successors issue are appended and tested from the next poll on.
  auto poll = [&]() {
    bool progressed = false;
    const size_t scan = inflight_.size();
    size_t keep = 0;
    for (size_t i = 0; i < scan; ++i) {
      if (inflight_[i].done()) {
        const int id = inflight_[i].task;
        if (observed) {
          const auto t = Clock::now();
          for (auto* o : observers_) o->on_task_end(g, id, t);
        }
        complete(id);  // may append to inflight_
        progressed = true;
      } else {
        if (keep != i) inflight_[keep] = std::move(inflight_[i]);
        ++keep;
      }
    }
    if (keep != scan) {
      for (size_t i = scan; i < inflight_.size(); ++i) inflight_[keep++] = std::move(inflight_[i]);
      inflight_.resize(keep);
    }
    return progressed;
  };

  try {
    for (size_t i = 0; i < n; ++i)
      if (pending_[i] == 0) {
        if (nodes[i].kind == TaskKind::Compute) {
          push_ready(static_cast<int>(i));
        } else {
          const size_t k = static_cast<size_t>(nodes[i].comm_key);
          comm_slots_[static_cast<size_t>(comm_base_[k] + nodes[i].comm_seq)] = static_cast<int>(i);
          issue_ready_comms(k);
        }
      }

    while (completed < n) {
      if (!inflight_.empty()) {
        switch_to(Activity::Other, false);
        if (poll() && completed == n) break;
      }
      if (ready_count_ > 0) {
        const int id = pop_ready();
        if (observed) {
          const auto t0 = switch_to(Activity::Compute, true);
          for (auto* o : observers_) o->on_task_begin(g, id, t0);
          nodes[id].compute();
          const auto t1 = switch_to(Activity::Other, true);
          for (auto* o : observers_) o->on_task_end(g, id, t1);
        } else {
          switch_to(Activity::Compute, false);
          nodes[id].compute();
        }
        complete(id);
        continue;
      }
      if (inflight_.empty()) {
        std::string stuck;
        for (size_t i = 0; i < n && stuck.size() < 400; ++i)
          if (pending_[i] > 0) stuck += " '" + nodes[i].name + "'";
        for (size_t k = 0; k < nkeys; ++k)
          if (comm_next_[k] < comm_end_[k])
            stuck += " (communicator '" + g.comm_keys()[k] + "' waits for collective #" +
                     std::to_string(comm_next_[k] - comm_base_[k]) + ")";
        throw Error("executor: graph '" + g.name() + "' cannot make progress; waiting tasks:" + stuck);
      }
      const auto w0 = switch_to(Activity::Wait, false);
      // Spin briefly, then yield the core between polls: on an oversubscribed core the
      // rank this one waits for may need it (costs nothing when the core is free).
      for (int spins = 0; !poll();)
        if (++spins > kSpinPolls) std::this_thread::yield();
      const auto w1 = switch_to(Activity::Other, false);
      for (auto* o : observers_) o->on_wait(w0, w1);
    }
  } catch (...) {
    inflight_.clear();  // as before: pending requests are completed by their destructors
    throw;
  }
  switch_to(Activity::Other, true);
  st.tasks = static_cast<int64_t>(completed);
  st.total_s = std::chrono::duration<double>(t_mark - t_run0).count();
  for (auto* o : observers_) o->on_run_end(g);
  totals_.total_s += st.total_s;
  totals_.compute_s += st.compute_s;
  totals_.comm_wait_s += st.comm_wait_s;
  totals_.tasks += st.tasks;
  totals_.comm_tasks += st.comm_tasks;
  return st;
}

}  // namespace shardflow::graph
