// `shardflow report DIR`: collects the run records of a study made by `shardflow submit`
// (DIR/study.json plus each run's --summary JSON) into DIR/report.csv, states the strong-
// or weak-scaling efficiency (DIR/report.txt, also printed), and draws PNG plots with
// gnuplot: throughput against ranks with the ideal line, parallel efficiency, and the
// per-step time breakdown (compute / communication wait / other) per configuration.
// `--simulate CLUSTER [--extend N,...]` predicts every configuration with the simulator
// (sim/simulator.hpp) beside its measurement, and each family at rank counts beyond the
// study's, in the CSV, the statement and the throughput plot.
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "command.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"
#include "sim/simulator.hpp"

namespace {

using namespace shardflow;
namespace fs = std::filesystem;
using nlohmann::json;

struct ReportOptions {
  std::string dir, baseline, gnuplot = "gnuplot";
  bool no_plots = false;
  std::string simulate;             // a cluster (simulate --cluster): predict every configuration
  std::vector<int64_t> extend;      // --simulate: predict each family at these rank counts too
};

struct Row {
  std::string name, mesh, family, job_id, status = "missing", summary, peak_source;
  int64_t ranks = 0, nodes = 0, global_batch = 0, steps = 0, zero_stage = 0;
  double step_s = 0, tokens_per_s = 0, mfu = 0, peak_gflops = 0, compute_s = 0, comm_s = 0, other_s = 0;
  double final_loss = 0, speedup = 0, ideal = 0, efficiency = 0;
  int64_t peak_mem = 0, model_state = 0;
  double predicted_step_s = 0, predicted_tokens_per_s = 0;  // report --simulate
  std::vector<std::string> sets;                            // the configuration's deck overrides
  bool ok() const { return status == "ok"; }
};

const char* kAxisOrder[] = {"data", "fsdp", "pipeline", "expert", "tensor"};

std::string mesh_text(const json& mesh, const char* sep, bool keep_ones) {
  std::string out;
  for (const char* a : kAxisOrder) {
    if (!mesh.contains(a)) continue;
    const int64_t v = mesh[a].get<int64_t>();
    if (v == 1 && !keep_ones) continue;
    out += (out.empty() ? "" : sep) + std::string(a) + "=" + std::to_string(v);
  }
  return out.empty() ? "data=1" : out;
}

/// The axes that split work (size > 1), e.g. "data", "fsdp", "data+fsdp"; "serial" for one rank.
std::string family_of(const json& mesh) {
  std::string out;
  for (const char* a : kAxisOrder)
    if (mesh.contains(a) && mesh[a].get<int64_t>() > 1) out += (out.empty() ? "" : "+") + std::string(a);
  return out.empty() ? "serial" : out;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

json read_json(const fs::path& p) {
  std::ifstream is(p);
  SHARDFLOW_REQUIRE_INPUT(is.good(), "cannot read '", p.string(), "'");
  try {
    return json::parse(is);
  } catch (const json::exception& e) {
    throw InputError(detail::concat("'", p.string(), "' is not valid JSON: ", e.what()));
  }
}

/// The run's summary: summary-JOBID.json in its run directory, else the newest summary-*.json.
fs::path find_summary(const fs::path& run_dir, const std::string& job_id) {
  if (!job_id.empty() && fs::exists(run_dir / ("summary-" + job_id + ".json")))
    return run_dir / ("summary-" + job_id + ".json");
  fs::path best;
  fs::file_time_type best_t{};
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return {};
  for (const auto& e : fs::directory_iterator(run_dir)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("summary-", 0) != 0 || e.path().extension() != ".json") continue;
    if (best.empty() || e.last_write_time() > best_t) {
      best = e.path();
      best_t = e.last_write_time();
    }
  }
  return best;
}

void fill_from_summary(Row& r, const json& s) {
  const auto& steps = s.at("steps");
  r.steps = static_cast<int64_t>(steps.size());
  SHARDFLOW_REQUIRE_INPUT(r.steps > 0, "the summary has no steps");
  r.zero_stage = s.value("zero_stage", 0);
  r.step_s = s.at("median_step_time_s").get<double>();
  r.tokens_per_s = s.at("tokens_per_s").get<double>();
  r.mfu = s.value("mfu", 0.0);
  r.peak_gflops = s.value("peak_gflops_per_rank", 0.0);
  r.peak_source = s.value("peak_gflops_source", std::string());
  r.final_loss = s.value("final_loss", 0.0);
  // steady-state breakdown of one step: medians over the steps after the first (warm-up)
  std::vector<double> comp, comm, total;
  for (size_t i = steps.size() > 1 ? 1 : 0; i < steps.size(); ++i) {
    comp.push_back(steps[i].at("compute_s").get<double>());
    comm.push_back(steps[i].at("comm_wait_s").get<double>());
    total.push_back(steps[i].at("step_time_s").get<double>());
  }
  r.compute_s = median(comp);
  r.comm_s = median(comm);
  r.other_s = std::max(0.0, median(total) - r.compute_s - r.comm_s);
  for (const auto& v : s.value("peak_memory_bytes", json::array())) r.peak_mem = std::max(r.peak_mem, v.get<int64_t>());
  for (const auto& v : s.value("model_state_bytes", json::array()))
    r.model_state = std::max(r.model_state, v.get<int64_t>());
  if (s.contains("world_size"))
    SHARDFLOW_REQUIRE_INPUT(s["world_size"].get<int64_t>() == r.ranks, "the summary's world_size ", s["world_size"],
                            " differs from the configuration's ranks ", r.ranks);
}

std::string fmt_double(double v, int prec) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

std::string pct(double v) { return fmt_double(100.0 * v, 1) + "%"; }

std::string sh_quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("''") : std::string(1, ch);
  return out + "'";
}

/// Writes the plot data and the gnuplot script; runs gnuplot. Returns the PNGs written.
std::vector<std::string> make_plots(const ReportOptions& o, const fs::path& dir, const std::string& study,
                                    const std::string& scaling, const std::vector<Row>& rows, const Row& base,
                                    const std::vector<Row>& extended) {
  const fs::path pd = dir / "plots";
  fs::create_directories(pd);
  std::vector<const Row*> ok;
  for (const auto& r : rows)
    if (r.ok()) ok.push_back(&r);
  // one series per family (the axes that split work), each starting at the baseline
  std::map<std::string, std::vector<const Row*>> fam;
  for (const Row* r : ok) fam[r->family].push_back(r);
  int64_t max_ranks = 1;
  for (const Row* r : ok) max_ranks = std::max(max_ranks, r->ranks);
  // report --simulate: the predicted throughput per family, measured points and extensions
  std::map<std::string, std::vector<const Row*>> pred;
  for (const auto& r : rows)
    if (r.predicted_tokens_per_s > 0) pred[r.family].push_back(&r);
  for (const auto& r : extended) {
    pred[r.family].push_back(&r);
    max_ranks = std::max(max_ranks, r.ranks);
  }
  std::vector<std::pair<std::string, std::string>> pred_series;
  for (auto& [f, v] : pred) {
    std::stable_sort(v.begin(), v.end(), [](const Row* a, const Row* b) { return a->ranks < b->ranks; });
    std::string file = (pd / ("predicted_" + f + ".dat")).string();
    std::replace(file.begin() + static_cast<long>(pd.string().size()), file.end(), '+', '_');
    std::ofstream os(file);
    os << "# ranks predicted_tokens_per_s name\n";
    for (const Row* r : v) os << r->ranks << " " << r->predicted_tokens_per_s << " " << r->name << "\n";
    pred_series.emplace_back(f, file);
  }
  std::vector<std::pair<std::string, std::string>> series;  // family, data file
  for (auto& [f, v] : fam) {
    if (f == "serial" && fam.size() > 1) continue;  // the one-rank run is every family's start
    if (std::none_of(v.begin(), v.end(), [&](const Row* r) { return r == &base; })) v.insert(v.begin(), &base);
    std::stable_sort(v.begin(), v.end(), [](const Row* a, const Row* b) { return a->ranks < b->ranks; });
    std::string file = (pd / ("series_" + f + ".dat")).string();
    std::replace(file.begin() + static_cast<long>(pd.string().size()), file.end(), '+', '_');
    std::ofstream os(file);
    os << "# ranks tokens_per_s efficiency name\n";
    for (const Row* r : v) os << r->ranks << " " << r->tokens_per_s << " " << r->efficiency << " " << r->name << "\n";
    series.emplace_back(f, file);
  }
  {
    std::ofstream os(pd / "ideal.dat");
    for (int64_t n = base.ranks; n <= max_ranks; n *= 2) os << n << " " << base.tokens_per_s * n / base.ranks << "\n";
    if ((max_ranks & (max_ranks - 1)) != 0)
      os << max_ranks << " " << base.tokens_per_s * max_ranks / base.ranks << "\n";
  }
  {
    std::ofstream os(pd / "breakdown.dat");
    os << "# name compute_ms comm_wait_ms other_ms\n";
    for (const Row* r : ok)
      os << r->name << " " << r->compute_s * 1e3 << " " << r->comm_s * 1e3 << " " << r->other_s * 1e3 << "\n";
  }
  const std::string xr = "set xrange [" + fmt_double(base.ranks * 0.8, 2) + ":" + fmt_double(max_ranks * 1.25, 2) +
                         "]\nset logscale x 2\nset xtics (" +
                         [&] {
                           std::string t;
                           for (int64_t n = 1; n <= max_ranks; n *= 2) t += (t.empty() ? "" : ", ") + std::to_string(n);
                           return t;
                         }() +
                         ")\n";
  std::ostringstream thr, eff, brk;
  thr << "set title " << gp_quote("throughput, " + scaling + " scaling") << "\n"
      << "set xlabel 'ranks'\nset ylabel 'tokens/s'\nset key left top\nset grid\n"
      << xr << "set yrange [0:*]\nplot " << gp_quote((pd / "ideal.dat").string())
      << " using 1:2 with lines dt 2 lc rgb 'gray40' title " << gp_quote("ideal (from " + base.name + ")");
  for (const auto& [f, file] : series)
    thr << ", " << gp_quote(file) << " using 1:2 with linespoints pt 7 ps 1.2 title " << gp_quote(f);
  for (const auto& [f, file] : pred_series)
    thr << ", " << gp_quote(file) << " using 1:2 with linespoints dt 3 pt 6 ps 1.0 title "
        << gp_quote(f + " predicted (" + o.simulate + ")");
  thr << "\n";
  eff << "set title " << gp_quote("parallel efficiency, " + scaling + " scaling") << "\n"
      << "set xlabel 'ranks'\nset ylabel 'efficiency'\nset key left bottom\nset grid\n"
      << xr << "set yrange [0:1.2]\nplot 1 with lines dt 2 lc rgb 'gray40' title 'ideal'";
  for (const auto& [f, file] : series)
    eff << ", " << gp_quote(file) << " using 1:3 with linespoints pt 7 ps 1.2 title " << gp_quote(f);
  eff << "\n";
  brk << "unset logscale x\nset xrange [*:*]\nset yrange [0:*]\nset xtics rotate by -30 autofreq\nset grid ytics\n"
      << "set title 'time per step (steady state)'\nset xlabel ''\nset ylabel 'ms'\nset key left top\n"
      << "set style data histograms\nset style histogram rowstacked\nset style fill solid 0.75 border -1\n"
      << "set boxwidth 0.6\nplot " << gp_quote((pd / "breakdown.dat").string())
      << " using 2:xtic(1) title 'compute' lc rgb '#4477aa', '' using 3 title 'comm wait' lc rgb '#ee6677', "
      << "'' using 4 title 'other / idle' lc rgb '#bbbbbb'\n";

  std::vector<std::string> pngs = {(dir / "throughput.png").string(), (dir / "efficiency.png").string(),
                                   (dir / "breakdown.png").string(), (dir / "report.png").string()};
  const fs::path gp = pd / "report.gp";
  {
    std::ofstream os(gp);
    os << "# written by `shardflow report` for study '" << study << "'\n"
       << "set terminal pngcairo size 640,440 noenhanced font ',10'\nset datafile separator whitespace\n";
    const std::string parts[3] = {thr.str(), eff.str(), brk.str()};
    for (int i = 0; i < 3; ++i)
      os << "reset\nset output " << gp_quote(pngs[static_cast<size_t>(i)]) << "\n" << parts[i];
    os << "reset\nset terminal pngcairo size 1500,440 noenhanced font ',10'\nset output " << gp_quote(pngs[3])
       << "\nset multiplot layout 1,3 title " << gp_quote("shardflow study '" + study + "'") << "\n";
    for (const auto& p : parts) os << p << "reset\n";
    os << "unset multiplot\nset output\n";
  }
  const std::string cmd = o.gnuplot + " " + sh_quote(gp.string()) + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  SHARDFLOW_REQUIRE(p, "cannot run '", cmd, "'");
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  const int status = pclose(p);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  SHARDFLOW_REQUIRE_INPUT(code != 127, "'", o.gnuplot,
                          "' was not found: install gnuplot (apt-get install --no-install-recommends gnuplot-nox) "
                          "or pass --no-plots; the CSV and report.txt are written");
  SHARDFLOW_REQUIRE_INPUT(code == 0, "gnuplot failed on ", gp.string(), " (exit ", code, "):\n", out);
  for (const auto& png : pngs)
    SHARDFLOW_REQUIRE(fs::exists(png) && fs::file_size(png) > 0, "gnuplot did not write ", png);
  return pngs;
}

int run_report(const ReportOptions& o) {
  if (app::world_rank() != 0) return 0;
  const fs::path dir = fs::absolute(o.dir);
  const json study = read_json(dir / "study.json");
  const std::string name = study.value("study", std::string("study"));
  const std::string scaling = study.value("scaling", std::string("strong"));
  std::vector<Row> rows;
  std::vector<std::string> problems;
  for (const auto& c : study.at("configs")) {
    Row r;
    r.name = c.at("name").get<std::string>();
    r.ranks = c.at("ranks").get<int64_t>();
    r.nodes = c.value("nodes", int64_t{0});
    r.global_batch = c.value("global_batch", int64_t{0});
    r.job_id = c.value("job_id", std::string());
    r.mesh = mesh_text(c.at("mesh"), " ", false);
    r.family = family_of(c.at("mesh"));
    for (const auto& kv : c.value("sets", json::array())) r.sets.push_back(kv.get<std::string>());
    const fs::path s = find_summary(c.at("run_dir").get<std::string>(), r.job_id);
    if (s.empty()) {
      problems.push_back(r.name + ": no summary in " + c.at("run_dir").get<std::string>() + " (job " + r.job_id +
                         "; see " + c.value("output", std::string("its output")) + ")");
    } else {
      r.summary = s.string();
      try {
        fill_from_summary(r, read_json(s));
        r.status = "ok";
      } catch (const std::exception& e) {
        r.status = "bad-summary";
        problems.push_back(r.name + ": " + s.string() + ": " + e.what());
      }
    }
    rows.push_back(r);
  }
  std::vector<Row*> ok;
  for (auto& r : rows)
    if (r.ok()) ok.push_back(&r);
  SHARDFLOW_REQUIRE_INPUT(!ok.empty(), "study '", name, "' in ", dir.string(), " has no finished run yet:\n  ", [&] {
    std::string t;
    for (const auto& p : problems) t += p + "\n  ";
    return t;
  }());
  Row* base = ok.front();
  for (Row* r : ok)
    if (o.baseline.empty() ? r->ranks < base->ranks : r->name == o.baseline) base = r;
  SHARDFLOW_REQUIRE_INPUT(o.baseline.empty() || base->name == o.baseline, "--baseline '", o.baseline,
                          "' is not a finished configuration of study '", name, "'");
  for (Row* r : ok) {
    r->speedup = r->tokens_per_s / base->tokens_per_s;
    r->ideal = base->tokens_per_s * static_cast<double>(r->ranks) / static_cast<double>(base->ranks);
    r->efficiency = r->tokens_per_s / r->ideal;
  }

  // --simulate: each configuration's deck (the study's deck with its overrides) on a cluster
  // model, and each family grown along its first axis to the --extend rank counts
  std::vector<std::string> predictions;
  std::vector<Row> extended;  // predicted only (kept apart: `ok` and `base` point into rows)
  if (!o.simulate.empty()) {
    const sim::Cluster cluster = sim::load_cluster(o.simulate);
    const std::string deck_path = study.at("deck").get<std::string>();
    for (auto& r : rows) {
      try {
        const Deck d = load_deck(deck_path, r.sets, static_cast<int>(r.ranks));
        const sim::SimResult p = sim::simulate(d, cluster);
        r.predicted_step_s = p.step_time_s;
        r.predicted_tokens_per_s = p.tokens_per_s;
      } catch (const std::exception& e) {
        predictions.push_back(r.name + ": not simulated: " + e.what());
      }
    }
    std::map<std::string, const Row*> largest;  // per family, its largest configuration
    for (const auto& r : rows)
      if (r.family != "serial" && (!largest.count(r.family) || r.ranks > largest[r.family]->ranks))
        largest[r.family] = &r;
    for (const auto& [fam, r] : largest) {
      const std::string axis = fam.substr(0, fam.find('+'));
      for (int64_t n : o.extend) {
        if (n <= r->ranks) continue;
        try {
          std::vector<std::string> sets = r->sets;
          Deck d = load_deck(deck_path, sets);
          const int64_t others = d.mesh.size() / d.mesh.to_mesh_shape().axis_size(axis);
          SHARDFLOW_REQUIRE_INPUT(n % others == 0, n, " ranks is not a multiple of the other axes' ", others);
          sets.push_back("mesh." + axis + "=" + std::to_string(n / others));
          d = load_deck(deck_path, sets, static_cast<int>(n));
          const sim::SimResult p = sim::simulate(d, cluster);
          Row x;
          x.name = fam + "@" + std::to_string(n);
          x.family = fam;
          x.ranks = n;
          x.mesh = d.mesh.to_mesh_shape().to_string();
          x.status = "predicted";
          x.predicted_step_s = p.step_time_s;
          x.predicted_tokens_per_s = p.tokens_per_s;
          extended.push_back(x);
        } catch (const std::exception& e) {
          predictions.push_back(fam + " at " + std::to_string(n) + " ranks: not simulated: " + e.what());
        }
      }
    }
  }

  {
    std::ofstream csv(dir / "report.csv");
    SHARDFLOW_REQUIRE_INPUT(csv.good(), "cannot write ", (dir / "report.csv").string());
    csv << std::setprecision(15);
    csv << "name,status,ranks,nodes,mesh,zero_stage,global_batch,steps,median_step_time_s,tokens_per_s,"
           "tokens_per_s_per_rank,speedup,ideal_tokens_per_s,efficiency,mfu,peak_gflops_per_rank,"
           "compute_s_per_step,comm_wait_s_per_step,other_s_per_step,peak_memory_bytes_per_rank,"
           "model_state_bytes_per_rank,final_loss,job_id,summary,predicted_step_time_s,predicted_tokens_per_s,"
           "predicted_over_measured\n";
    std::vector<const Row*> all;
    for (const auto& r : rows) all.push_back(&r);
    for (const auto& r : extended) all.push_back(&r);
    for (const Row* rp : all) {
      const Row& r = *rp;
      csv << r.name << "," << r.status << "," << r.ranks << "," << r.nodes << "," << r.mesh << "," << r.zero_stage
          << "," << r.global_batch << "," << r.steps << ",";
      if (r.ok())
        csv << r.step_s << "," << r.tokens_per_s << "," << r.tokens_per_s / static_cast<double>(r.ranks) << ","
            << r.speedup << "," << r.ideal << "," << r.efficiency << "," << r.mfu << "," << r.peak_gflops << ","
            << r.compute_s << "," << r.comm_s << "," << r.other_s << "," << r.peak_mem << "," << r.model_state << ","
            << r.final_loss;
      else
        csv << ",,,,,,,,,,,,,";
      csv << "," << r.job_id << "," << r.summary << ",";
      if (r.predicted_step_s > 0) {
        csv << r.predicted_step_s << "," << r.predicted_tokens_per_s << ",";
        if (r.ok()) csv << r.predicted_step_s / r.step_s;
      } else {
        csv << ",,";
      }
      csv << "\n";
    }
  }

  std::ostringstream txt;
  txt << "study '" << name << "' (" << scaling << " scaling): " << ok.size() << " of " << rows.size()
      << " configuration(s) finished; baseline " << base->name << " (" << base->ranks << " rank(s), "
      << fmt_double(base->tokens_per_s, 0) << " tokens/s)\n";
  txt << "efficiency E(N) = (tokens/s at N / N) / (tokens/s at b / b), b = " << base->name
      << (scaling == "strong" ? "; strong scaling (fixed global batch): = T(b)*N(b) / (T(N)*N) in step times T\n"
                              : "; weak scaling (fixed batch per data-parallel rank): = T(b) / T(N) in step times T\n");
  double peak_lo = base->peak_gflops, peak_hi = base->peak_gflops;
  for (const Row* r : ok) {
    peak_lo = std::min(peak_lo, r->peak_gflops);
    peak_hi = std::max(peak_hi, r->peak_gflops);
  }
  if (peak_hi <= 1.2 * peak_lo) {
    txt << "MFU against the per-rank peak " << fmt_double(base->peak_gflops, 1) << " GFLOP/s ("
        << (base->peak_source.empty() ? "stated in the summaries" : base->peak_source) << ")\n\n";
  } else {
    txt << "warning: the runs used different per-rank peaks (" << fmt_double(peak_lo, 1) << " to "
        << fmt_double(peak_hi, 1) << " GFLOP/s, " << (base->peak_source.empty() ? "as stated" : base->peak_source)
        << "; a shared or loaded machine), so their MFU values do not compare: state one peak with "
           "slurm.peak_gflops in the sweep (--peak-gflops)\n\n";
  }
  char line[400];
  std::snprintf(line, sizeof line, "%-18s %5s %-20s %9s %10s %8s %7s %6s %9s %9s %9s %10s\n", "config", "ranks", "mesh",
                "step_ms", "tokens/s", "speedup", "effic.", "MFU", "comp_ms", "comm_ms", "other_ms", "peak_mem");
  txt << line;
  for (const auto& r : rows) {
    if (!r.ok()) {
      std::snprintf(line, sizeof line, "%-18s %5lld %-20s %s\n", r.name.c_str(), static_cast<long long>(r.ranks),
                    r.mesh.c_str(), r.status.c_str());
    } else {
      std::snprintf(line, sizeof line, "%-18s %5lld %-20s %9.1f %10.0f %8.2f %7s %6s %9.1f %9.1f %9.1f %7.1f MiB\n",
                    r.name.c_str(), static_cast<long long>(r.ranks), r.mesh.c_str(), r.step_s * 1e3, r.tokens_per_s,
                    r.speedup, pct(r.efficiency).c_str(), pct(r.mfu).c_str(), r.compute_s * 1e3, r.comm_s * 1e3,
                    r.other_s * 1e3, static_cast<double>(r.peak_mem) / (1 << 20));
    }
    txt << line;
  }
  txt << "\n";
  for (const Row* r : ok) {
    if (r == base) continue;
    txt << scaling << "-scaling efficiency of " << r->name << " at " << r->ranks << " ranks: " << pct(r->efficiency)
        << " (speedup " << fmt_double(r->speedup, 2) << " of ideal " << fmt_double(r->ideal / base->tokens_per_s, 2)
        << ")\n";
  }
  for (const auto& p : problems) txt << "missing: " << p << "\n";
  if (!o.simulate.empty()) {
    txt << "\npredicted by `shardflow simulate --cluster " << o.simulate << "` (docs/simulator.md):\n";
    std::vector<const Row*> all;
    for (const auto& r : rows) all.push_back(&r);
    for (const auto& r : extended) all.push_back(&r);
    for (const Row* rp : all) {
      const Row& r = *rp;
      if (r.predicted_step_s <= 0) continue;
      std::snprintf(line, sizeof line, "%-18s %5lld %-26s predicted step %9.1f ms, %10.0f tokens/s", r.name.c_str(),
                    static_cast<long long>(r.ranks), r.mesh.c_str(), r.predicted_step_s * 1e3,
                    r.predicted_tokens_per_s);
      txt << line;
      if (r.ok()) txt << "; measured " << fmt_double(r.step_s * 1e3, 1) << " ms (predicted / measured "
                      << fmt_double(r.predicted_step_s / r.step_s, 3) << ")";
      txt << "\n";
    }
    for (const auto& p : predictions) txt << p << "\n";
  }
  {
    std::ofstream os(dir / "report.txt");
    os << txt.str();
  }
  std::printf("%s", txt.str().c_str());
  std::printf("wrote %s and %s\n", (dir / "report.csv").string().c_str(), (dir / "report.txt").string().c_str());
  if (!o.no_plots) {
    for (const auto& png : make_plots(o, dir, name, scaling, rows, *base, extended))
      std::printf("wrote %s\n", png.c_str());
  }
  return 0;
}

app::CommandRegistration reg(
    "report", "collect a study's run records into a CSV, efficiency statement and plots",
    [](CLI::App& sub) {
      auto o = std::make_shared<ReportOptions>();
      sub.add_option("dir", o->dir, "study directory (made by shardflow submit)")->required();
      sub.add_option("--baseline", o->baseline,
                     "configuration the efficiency is measured against (default: fewest ranks)");
      sub.add_flag("--no-plots", o->no_plots, "write the CSV and the statement only");
      sub.add_option("--gnuplot", o->gnuplot, "the gnuplot command (default: gnuplot)");
      sub.add_option("--simulate", o->simulate,
                     "predict every configuration on a cluster model (simulate --cluster: "
                     "a100-80gb, h100-80gb, h200, local or a file) beside the measurement");
      sub.add_option("--extend", o->extend,
                     "with --simulate: also predict each family at these rank counts "
                     "(grown along its first axis)")
          ->delimiter(',');
      return [o] { return run_report(*o); };
    },
    /*needs_mpi=*/false);

}  // namespace
