#include "graph/observer.hpp"

#include <fstream>
#include <iomanip>

#include "core/error.hpp"

namespace shardflow::graph {

double ChromeTraceObserver::us(Clock::time_point t) const {
  return std::chrono::duration<double, std::micro>(t - origin_).count();
}

void ChromeTraceObserver::on_task_begin(const TaskGraph&, int task, Clock::time_point t) { open_.emplace_back(task, t); }

void ChromeTraceObserver::on_task_end(const TaskGraph& g, int task, Clock::time_point t) {
  for (size_t i = 0; i < open_.size(); ++i) {
    if (open_[i].first != task) continue;
    const auto& node = g.node(task);
    const bool comm = node.kind == TaskKind::Comm;
    events_.push_back({node.name, comm ? "comm" : "compute", us(open_[i].second),
                       std::chrono::duration<double, std::micro>(t - open_[i].second).count(), comm ? 1 : 0});
    open_.erase(open_.begin() + static_cast<long>(i));
    return;
  }
}

void ChromeTraceObserver::on_wait(Clock::time_point b, Clock::time_point e) {
  events_.push_back({"wait", "wait", us(b), std::chrono::duration<double, std::micro>(e - b).count(), 2});
}

namespace {
std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    o += c;
  }
  return o;
}
}  // namespace

void ChromeTraceObserver::write(const std::string& path) const {
  std::ofstream os(path);
  SHARDFLOW_REQUIRE(os.good(), "cannot write trace file '", path, "'");
  os << std::fixed << std::setprecision(3);
  os << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  const char* tnames[] = {"compute", "communication", "waiting on communication"};
  for (int t = 0; t < 3; ++t)
    os << "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":" << rank_ << ",\"tid\":" << t
       << ",\"args\":{\"name\":\"" << tnames[t] << "\"}},\n";
  os << "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":" << rank_ << ",\"args\":{\"name\":\"rank " << rank_
     << "\"}}";
  for (const auto& e : events_)
    os << ",\n{\"name\":\"" << json_escape(e.name) << "\",\"cat\":\"" << e.cat << "\",\"ph\":\"X\",\"ts\":" << e.ts_us
       << ",\"dur\":" << e.dur_us << ",\"pid\":" << rank_ << ",\"tid\":" << e.tid << "}";
  os << "\n]}\n";
  SHARDFLOW_REQUIRE(os.good(), "error writing trace file '", path, "'");
}

}  // namespace shardflow::graph
