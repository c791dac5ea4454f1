// `shardflow submit DECK --sweep SWEEP.toml [--dir DIR] [--dry-run]`: turns a deck and a
// sweep description into Slurm job arrays (one array per rank/node count, one array task
// per configuration), submits them with sbatch and records the job ids with the
// configurations in DIR/study.json and DIR/study.csv, for `shardflow report DIR`.
// docs/slurm.md describes the sweep file; inputs/sweep_dp.toml is an example.
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "command.hpp"
#include "config/deck.hpp"
#include "core/error.hpp"

namespace {

using namespace shardflow;
namespace fs = std::filesystem;

const std::array<const char*, 5> kAxes = {"data", "fsdp", "tensor", "pipeline", "expert"};

struct SubmitOptions {
  std::string deck, sweep, dir, batch_dir, bin, sbatch = "sbatch";
  bool dry_run = false;
};

struct SlurmSettings {
  std::string partition, time = "00:30:00", cpu_bind = "cores", launcher = "srun";
  int64_t cpus_per_task = 1, gpus_per_task = 0, ranks_per_node = 0, signal_lead_s = 120;
  double peak_gflops = 0;
  std::vector<std::string> sbatch_options;
};

struct Config {
  std::string name;
  int64_t ranks = 0, nodes = 0;  // nodes 0: let Slurm place the ranks
  std::map<std::string, int64_t> mesh;
  std::vector<std::string> sets;  // every --set of the run, in order
  int64_t global_batch = 0;
  std::string where;  // sweep file:line
  // filled when the scripts are written / submitted
  std::string script, job_id, run_dir, output;
  int64_t array_task = -1;
};

struct Study {
  std::string name = "study", scaling = "strong", dir;
  int64_t steps = 0;
  std::vector<std::string> sets;
  SlurmSettings slurm;
  std::vector<Config> configs;
};

std::string loc(const std::string& file, const toml::node& n) {
  return file + ":" + std::to_string(n.source().begin.line);
}

// ---- reading the sweep file ---------------------------------------------------------------
class SweepReader {
 public:
  explicit SweepReader(std::string file) : file_(std::move(file)) {}

  Study read() {
    toml::table root;
    try {
      root = toml::parse_file(file_);
    } catch (const toml::parse_error& e) {
      throw InputError(detail::concat("sweep ", file_, ":", e.source().begin.line, ": ", e.description()));
    }
    Study s;
    for (auto&& [k, v] : root) {
      const std::string key(k.str());
      if (key == "study")
        read_study(v, s);
      else if (key == "slurm")
        read_slurm(v, s.slurm);
      else if (key == "config")
        read_configs(v, s);
      else if (key == "sweep")
        read_generator(v, s);
      else
        throw InputError(detail::concat("sweep ", loc(file_, v), ": unknown section [", key,
                                        "] (known: study, slurm, sweep, config)"));
    }
    SHARDFLOW_REQUIRE_INPUT(!s.configs.empty(), "sweep ", file_,
                            ": no configurations (add [[config]] tables or a [sweep] section)");
    return s;
  }

 private:
  std::string file_;

  const toml::table& table(const toml::node& n, const std::string& what) {
    const toml::table* t = n.as_table();
    SHARDFLOW_REQUIRE_INPUT(t, "sweep ", loc(file_, n), ": ", what, " must be a table");
    return *t;
  }
  std::string str(const toml::node& n, const std::string& key) {
    auto v = n.value<std::string>();
    SHARDFLOW_REQUIRE_INPUT(v && n.is_string(), "sweep ", loc(file_, n), ": ", key, " must be a string");
    return *v;
  }
  int64_t integer(const toml::node& n, const std::string& key, int64_t min) {
    SHARDFLOW_REQUIRE_INPUT(n.is_integer(), "sweep ", loc(file_, n), ": ", key, " must be an integer");
    int64_t v = *n.value<int64_t>();
    SHARDFLOW_REQUIRE_INPUT(v >= min, "sweep ", loc(file_, n), ": ", key, " = ", v, " must be >= ", min);
    return v;
  }
  double number(const toml::node& n, const std::string& key) {
    SHARDFLOW_REQUIRE_INPUT(n.is_number(), "sweep ", loc(file_, n), ": ", key, " must be a number");
    double v = *n.value<double>();
    SHARDFLOW_REQUIRE_INPUT(v >= 0, "sweep ", loc(file_, n), ": ", key, " = ", v, " must be >= 0");
    return v;
  }
  std::vector<std::string> strings(const toml::node& n, const std::string& key) {
    const toml::array* a = n.as_array();
    SHARDFLOW_REQUIRE_INPUT(a, "sweep ", loc(file_, n), ": ", key, " must be an array of strings");
    std::vector<std::string> out;
    for (auto&& e : *a) out.push_back(str(e, key));
    return out;
  }
  std::vector<int64_t> ints(const toml::node& n, const std::string& key) {
    const toml::array* a = n.as_array();
    SHARDFLOW_REQUIRE_INPUT(a && !a->empty(), "sweep ", loc(file_, n), ": ", key,
                            " must be a non-empty array of integers");
    std::vector<int64_t> out;
    for (auto&& e : *a) out.push_back(integer(e, key, 1));
    return out;
  }
  [[noreturn]] void unknown(const std::string& section, const std::string& key, const toml::node& n,
                            const char* known) {
    throw InputError(
        detail::concat("sweep ", loc(file_, n), ": unknown key ", section, ".", key, " (known: ", known, ")"));
  }

  void read_study(const toml::node& n, Study& s) {
    for (auto&& [k, v] : table(n, "[study]")) {
      const std::string key(k.str());
      if (key == "name")
        s.name = str(v, "study.name");
      else if (key == "dir")
        s.dir = str(v, "study.dir");
      else if (key == "scaling") {
        s.scaling = str(v, "study.scaling");
        SHARDFLOW_REQUIRE_INPUT(s.scaling == "strong" || s.scaling == "weak", "sweep ", loc(file_, v),
                                ": study.scaling = '", s.scaling, "' must be 'strong' or 'weak'");
      } else if (key == "steps")
        s.steps = integer(v, "study.steps", 1);
      else if (key == "set")
        s.sets = strings(v, "study.set");
      else
        unknown("study", key, v, "name, dir, scaling, steps, set");
    }
  }

  void read_slurm(const toml::node& n, SlurmSettings& sl) {
    for (auto&& [k, v] : table(n, "[slurm]")) {
      const std::string key(k.str());
      if (key == "partition")
        sl.partition = str(v, "slurm.partition");
      else if (key == "time")
        sl.time = str(v, "slurm.time");
      else if (key == "cpus_per_task")
        sl.cpus_per_task = integer(v, "slurm.cpus_per_task", 1);
      else if (key == "gpus_per_task") {
        sl.gpus_per_task = integer(v, "slurm.gpus_per_task", 0);
        if (sl.gpus_per_task > 0 && app::world_rank() == 0)
          std::fprintf(stderr,
                       "shardflow submit: warning: %s: slurm.gpus_per_task = %lld asks for GPUs, but `shardflow "
                       "train` runs on the host CPUs with MPI (the CUDA/NCCL paths are not used by training yet): "
                       "the GPUs would stay idle\n",
                       loc(file_, v).c_str(), static_cast<long long>(sl.gpus_per_task));
      }
      else if (key == "ranks_per_node")
        sl.ranks_per_node = integer(v, "slurm.ranks_per_node", 0);
      else if (key == "signal_lead_s")
        sl.signal_lead_s = integer(v, "slurm.signal_lead_s", 0);
      else if (key == "cpu_bind")
        sl.cpu_bind = str(v, "slurm.cpu_bind");
      else if (key == "launcher") {
        sl.launcher = str(v, "slurm.launcher");
        SHARDFLOW_REQUIRE_INPUT(sl.launcher == "srun" || sl.launcher == "mpiexec", "sweep ", loc(file_, v),
                                ": slurm.launcher = '", sl.launcher, "' must be 'srun' or 'mpiexec'");
      } else if (key == "peak_gflops")
        sl.peak_gflops = number(v, "slurm.peak_gflops");
      else if (key == "sbatch")
        sl.sbatch_options = strings(v, "slurm.sbatch");
      else
        unknown("slurm", key, v,
                "partition, time, cpus_per_task, gpus_per_task, ranks_per_node, signal_lead_s, cpu_bind, "
                "launcher, peak_gflops, sbatch");
    }
  }

  std::map<std::string, int64_t> mesh(const toml::node& n) {
    std::map<std::string, int64_t> m;
    for (auto&& [k, v] : table(n, "mesh")) {
      const std::string axis(k.str());
      SHARDFLOW_REQUIRE_INPUT(std::find(kAxes.begin(), kAxes.end(), axis) != kAxes.end(), "sweep ", loc(file_, v),
                              ": mesh axis '", axis, "' is not one of data, fsdp, tensor, pipeline, expert");
      m[axis] = integer(v, "mesh." + axis, 1);
    }
    return m;
  }

  void read_configs(const toml::node& n, Study& s) {
    const toml::array* a = n.as_array();
    SHARDFLOW_REQUIRE_INPUT(a && a->is_array_of_tables(), "sweep ", loc(file_, n),
                            ": config must be an array of tables ([[config]])");
    for (auto&& e : *a) {
      Config c;
      c.where = loc(file_, e);
      for (auto&& [k, v] : *e.as_table()) {
        const std::string key(k.str());
        if (key == "name")
          c.name = str(v, "config.name");
        else if (key == "ranks")
          c.ranks = integer(v, "config.ranks", 1);
        else if (key == "nodes")
          c.nodes = integer(v, "config.nodes", 1);
        else if (key == "mesh")
          c.mesh = mesh(v);
        else if (key == "set")
          c.sets = strings(v, "config.set");
        else
          unknown("config", key, v, "name, ranks, nodes, mesh, set");
      }
      s.configs.push_back(std::move(c));
    }
  }

  // [sweep] ranks = [1, 2, 4] (or nodes = [...]), axis = "data", set = [...]: one
  // configuration per entry, the whole mesh on `axis`.
  void read_generator(const toml::node& n, Study& s) {
    std::vector<int64_t> ranks, nodes;
    std::string axis = "data";
    std::vector<std::string> sets;
    const std::string where = loc(file_, n);
    for (auto&& [k, v] : table(n, "[sweep]")) {
      const std::string key(k.str());
      if (key == "ranks")
        ranks = ints(v, "sweep.ranks");
      else if (key == "nodes")
        nodes = ints(v, "sweep.nodes");
      else if (key == "axis") {
        axis = str(v, "sweep.axis");
        SHARDFLOW_REQUIRE_INPUT(std::find(kAxes.begin(), kAxes.end(), axis) != kAxes.end(), "sweep ", loc(file_, v),
                                ": sweep.axis = '", axis, "' is not one of data, fsdp, tensor, pipeline, expert");
      } else if (key == "set")
        sets = strings(v, "sweep.set");
      else
        unknown("sweep", key, v, "ranks, nodes, axis, set");
    }
    SHARDFLOW_REQUIRE_INPUT(ranks.empty() != nodes.empty(), "sweep ", where,
                            ": [sweep] needs exactly one of ranks = [...] or nodes = [...]");
    for (int64_t r : ranks) {
      Config c;
      c.where = where;
      c.ranks = r;
      c.mesh[axis] = r;
      c.sets = sets;
      s.configs.push_back(std::move(c));
    }
    for (int64_t nn : nodes) {
      Config c;
      c.where = where;
      c.nodes = nn;
      c.mesh[axis] = -1;  // filled with the rank count once ranks_per_node is known
      c.sets = sets;
      s.configs.push_back(std::move(c));
    }
  }
};

// ---- configurations → runs ---------------------------------------------------------------
std::string mesh_label(const std::map<std::string, int64_t>& m) {
  std::string out;
  for (const char* a : kAxes) {
    auto it = m.find(a);
    if (it == m.end() || (it->second == 1 && std::string(a) != "data")) continue;
    out += (out.empty() ? "" : "-") + std::string(a) + std::to_string(it->second);
  }
  return out;
}

bool safe_name(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.';
  });
}

/// Completes every configuration (ranks, nodes, names, the --set list, the global batch)
/// and validates it by loading the deck with its overrides.
void resolve(Study& s, const std::string& deck_path, const fs::path& dir) {
  const Deck base = load_deck(deck_path);
  const int64_t rpn = s.slurm.ranks_per_node;
  std::set<std::string> names;
  int64_t base_dp = 0;
  for (auto& c : s.configs) {
    if (c.nodes > 0) {
      SHARDFLOW_REQUIRE_INPUT(rpn > 0 || c.ranks > 0, "sweep ", c.where, ": nodes = ", c.nodes,
                              " needs slurm.ranks_per_node (or ranks) to know the rank count");
      if (c.ranks == 0) c.ranks = c.nodes * rpn;
      SHARDFLOW_REQUIRE_INPUT(rpn == 0 || c.ranks <= c.nodes * rpn, "sweep ", c.where, ": ranks = ", c.ranks,
                              " do not fit on ", c.nodes, " nodes of ", rpn, " ranks");
    } else if (rpn > 0 && c.ranks > 0) {
      c.nodes = (c.ranks + rpn - 1) / rpn;
    }
    for (auto& [axis, size] : c.mesh)
      if (size == -1) size = c.ranks;
    if (c.mesh.empty()) c.mesh["data"] = c.ranks;
    int64_t product = 1;
    for (auto& [axis, size] : c.mesh) product *= size;
    if (c.ranks == 0) c.ranks = product;
    SHARDFLOW_REQUIRE_INPUT(product == c.ranks, "sweep ", c.where, ": the mesh ", mesh_label(c.mesh), " has ", product,
                            " devices but the configuration has ranks = ", c.ranks);
    if (c.name.empty()) c.name = "n" + std::to_string(c.ranks) + "-" + mesh_label(c.mesh);
    SHARDFLOW_REQUIRE_INPUT(safe_name(c.name), "sweep ", c.where, ": configuration name '", c.name,
                            "' may only hold letters, digits, '-', '_' and '.'");
    if (names.count(c.name)) {
      int i = 2;
      while (names.count(c.name + "-" + std::to_string(i))) ++i;
      c.name += "-" + std::to_string(i);
    }
    names.insert(c.name);
    c.run_dir = (dir / "runs" / c.name).string();

    std::vector<std::string> sets;
    for (const char* a : kAxes) {
      auto it = c.mesh.find(a);
      sets.push_back(std::string("mesh.") + a + "=" + std::to_string(it == c.mesh.end() ? 1 : it->second));
    }
    if (s.steps > 0) sets.push_back("train.steps=" + std::to_string(s.steps));
    sets.push_back("checkpoint.dir=" + (fs::path(c.run_dir) / "checkpoints").string());
    sets.insert(sets.end(), s.sets.begin(), s.sets.end());
    sets.insert(sets.end(), c.sets.begin(), c.sets.end());
    // weak scaling: the batch per data-parallel rank stays that of the first configuration
    Deck with;
    try {
      with = load_deck(deck_path, sets);
      if (s.scaling == "weak") {
        if (base_dp == 0) base_dp = with.data_parallel_size();
        const int64_t gb = with.train.global_batch * with.data_parallel_size();
        SHARDFLOW_REQUIRE_INPUT(gb % base_dp == 0, "weak scaling cannot scale global_batch ", with.train.global_batch,
                                " by ", with.data_parallel_size(), "/", base_dp);
        sets.push_back("train.global_batch=" + std::to_string(gb / base_dp));
        with = load_deck(deck_path, sets);
      }
      check_world_size(with, static_cast<int>(c.ranks));
    } catch (const InputError& e) {
      throw InputError(detail::concat("sweep ", c.where, ": configuration '", c.name, "': ", e.what()));
    }
    c.global_batch = with.train.global_batch;
    c.sets = sets;
  }
  (void)base;
}

std::string sh_quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) {
    if (ch == '\'')
      out += "'\\''";
    else
      out += ch;
  }
  return out + "'";
}

struct Group {
  int64_t ranks, nodes;
  std::vector<size_t> members;  // indices into Study::configs, in array-task order
  std::string file, job_name, script;
};

std::vector<Group> group_configs(Study& s) {
  std::vector<Group> groups;
  for (size_t i = 0; i < s.configs.size(); ++i) {
    auto& c = s.configs[i];
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const Group& g) { return g.ranks == c.ranks && g.nodes == c.nodes; });
    if (it == groups.end()) {
      groups.push_back(Group{c.ranks, c.nodes, {}, "", "", ""});
      it = groups.end() - 1;
    }
    c.array_task = static_cast<int64_t>(it->members.size());
    it->members.push_back(i);
  }
  return groups;
}

/// A value written into the script between double quotes or after #SBATCH: one line, and
/// nothing the shell would expand.
void require_plain(const std::string& v, const std::string& what) {
  SHARDFLOW_REQUIRE_INPUT(v.find_first_of("\n\r\"$`\\") == std::string::npos, what, " = '", v,
                          "' may not hold newlines, quotes, '$', '`' or '\\'");
}

std::string render_script(const Study& s, Group& g, const fs::path& dir, const std::string& deck,
                          const std::string& bin) {
  const auto& sl = s.slurm;
  require_plain(bin, "the shardflow binary path");
  require_plain(sl.cpu_bind, "slurm.cpu_bind");
  require_plain(sl.time, "slurm.time");
  require_plain(sl.partition, "slurm.partition");
  for (const auto& o : sl.sbatch_options) require_plain(o, "slurm.sbatch entry");
  std::ostringstream os;
  std::string tag = "n" + std::to_string(g.ranks) + (g.nodes > 0 ? "-N" + std::to_string(g.nodes) : "");
  g.job_name = "sf-" + s.name + "-" + tag;
  g.file = (dir / "jobs" / (tag + ".sbatch")).string();
  os << "#!/bin/bash\n"
     << "# shardflow study '" << s.name << "' (" << s.scaling << " scaling): " << g.members.size()
     << " configuration(s) of " << g.ranks << " rank(s), one array task each.\n"
     << "# Written by `shardflow submit`; the job body is " << (dir / "shardflow_job.sh").string() << ".\n"
     << "#SBATCH --job-name=" << g.job_name << "\n"
     << "#SBATCH --array=0-" << g.members.size() - 1 << "\n"
     << "#SBATCH --ntasks=" << g.ranks << "\n";
  if (g.nodes > 0) os << "#SBATCH --nodes=" << g.nodes << "\n";
  if (sl.ranks_per_node > 0) os << "#SBATCH --ntasks-per-node=" << sl.ranks_per_node << "\n";
  os << "#SBATCH --cpus-per-task=" << sl.cpus_per_task << "\n";
  if (sl.gpus_per_task > 0) os << "#SBATCH --gpus-per-task=" << sl.gpus_per_task << "\n";
  if (!sl.partition.empty()) os << "#SBATCH --partition=" << sl.partition << "\n";
  os << "#SBATCH --time=" << sl.time << "\n"
     << "#SBATCH --output=" << (dir / "logs").string() << "/%x-%A_%a.out\n"
     << "#SBATCH --open-mode=append\n"
     << "#SBATCH --requeue\n";
  if (sl.signal_lead_s > 0) os << "#SBATCH --signal=B:USR1@" << sl.signal_lead_s << "\n";
  for (const auto& o : sl.sbatch_options) os << "#SBATCH " << o << "\n";
  // the environment of the submitting shell wins over the sweep's settings
  os << "\nexport SHARDFLOW_BIN=\"${SHARDFLOW_BIN:-" << bin << "}\"\n"
     << "export SHARDFLOW_LAUNCHER=\"${SHARDFLOW_LAUNCHER:-" << sl.launcher << "}\"\n"
     << "export SHARDFLOW_CPU_BIND=\"${SHARDFLOW_CPU_BIND:-" << sl.cpu_bind << "}\"\n";
  if (sl.peak_gflops > 0) os << "export SHARDFLOW_PEAK_GFLOPS=\"${SHARDFLOW_PEAK_GFLOPS:-" << sl.peak_gflops << "}\"\n";
  os << "deck=" << sh_quote(deck) << "\n"
     << "case \"${SLURM_ARRAY_TASK_ID:-}\" in\n";
  for (size_t t = 0; t < g.members.size(); ++t) {
    const Config& c = s.configs[g.members[t]];
    os << "  " << t << ")\n    name=" << sh_quote(c.name) << "\n    args=(";
    for (size_t i = 0; i < c.sets.size(); ++i) os << (i ? " " : "") << "--set " << sh_quote(c.sets[i]);
    os << ")\n    ;;\n";
  }
  os << "  *)\n    echo \"shardflow job: no configuration for array task '${SLURM_ARRAY_TASK_ID:-}'\" >&2\n"
     << "    exit 2\n    ;;\nesac\n"
     << "export SHARDFLOW_RUN_DIR=" << sh_quote((dir / "runs").string()) << "/\"$name\"\n"
     << "source " << sh_quote((dir / "shardflow_job.sh").string()) << "\n"
     << "shardflow_run_train \"$deck\" \"${args[@]}\"\n"
     << "exit $?\n";
  g.script = os.str();
  return g.script;
}

/// The directory that holds batch/shardflow_job.sh: --batch-dir, $SHARDFLOW_HOME/batch, or
/// batch/ in the first ancestor of the executable or of the current directory that has it.
fs::path find_batch_dir(const std::string& option) {
  if (!option.empty()) {
    SHARDFLOW_REQUIRE_INPUT(fs::exists(fs::path(option) / "shardflow_job.sh"), "--batch-dir '", option,
                            "' has no shardflow_job.sh");
    return fs::absolute(option);
  }
  if (const char* home = std::getenv("SHARDFLOW_HOME")) {
    fs::path p = fs::path(home) / "batch";
    SHARDFLOW_REQUIRE_INPUT(fs::exists(p / "shardflow_job.sh"), "SHARDFLOW_HOME='", home,
                            "' has no batch/shardflow_job.sh");
    return fs::absolute(p);
  }
  std::vector<fs::path> starts;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) starts.push_back(exe.parent_path());
  starts.push_back(fs::current_path());
  for (fs::path p : starts) {
    for (; !p.empty(); p = p.parent_path()) {
      if (fs::exists(p / "batch" / "shardflow_job.sh")) return p / "batch";
      if (p == p.root_path()) break;
    }
  }
  throw InputError(
      "cannot find batch/shardflow_job.sh above the executable or the current directory; "
      "pass --batch-dir DIR or set SHARDFLOW_HOME to the shardflow source tree");
}

std::string run_capture(const std::string& cmd, int& status) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  SHARDFLOW_REQUIRE(p, "cannot run '", cmd, "'");
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  status = pclose(p);
  return out;
}

nlohmann::json config_json(const Study& s, const Config& c, const Group& g) {
  return {{"name", c.name},
          {"ranks", c.ranks},
          {"nodes", c.nodes},
          {"mesh", c.mesh},
          {"global_batch", c.global_batch},
          {"steps", s.steps},
          {"sets", c.sets},
          {"script", g.file},
          {"array_task", c.array_task},
          {"job_id", c.job_id},
          {"run_dir", c.run_dir},
          {"output", c.output}};
}

int run_submit(const SubmitOptions& o) {
  if (app::world_rank() != 0) return 0;
  SHARDFLOW_REQUIRE_INPUT(fs::exists(o.deck), "deck '", o.deck, "' does not exist");
  SHARDFLOW_REQUIRE_INPUT(fs::exists(o.sweep), "--sweep '", o.sweep, "' does not exist");
  Study s = SweepReader(o.sweep).read();
  SHARDFLOW_REQUIRE_INPUT(safe_name(s.name), "sweep ", o.sweep, ": study.name '", s.name,
                          "' may only hold letters, digits, '-', '_' and '.'");
  fs::path dir = !o.dir.empty() ? fs::path(o.dir) : !s.dir.empty() ? fs::path(s.dir) : fs::path("studies") / s.name;
  dir = fs::absolute(dir).lexically_normal();
  const std::string deck = fs::absolute(o.deck).lexically_normal().string();
  resolve(s, deck, dir);
  const fs::path batch = find_batch_dir(o.batch_dir);
  std::string bin = o.bin;
  if (bin.empty()) {
    std::error_code ec;
    bin = fs::read_symlink("/proc/self/exe", ec).string();
    SHARDFLOW_REQUIRE(!ec, "cannot resolve /proc/self/exe: ", ec.message(), " (pass --bin)");
  }
  auto groups = group_configs(s);
  for (auto& g : groups) render_script(s, g, dir, deck, bin);

  if (o.dry_run) {
    std::printf(
        "# shardflow submit --dry-run: study '%s' (%s scaling), %zu configuration(s) in %zu job array(s); "
        "study directory %s\n",
        s.name.c_str(), s.scaling.c_str(), s.configs.size(), groups.size(), dir.string().c_str());
    for (const auto& g : groups) std::printf("\n# ===== %s\n%s", g.file.c_str(), g.script.c_str());
    return 0;
  }

  fs::create_directories(dir / "jobs");
  fs::create_directories(dir / "logs");
  fs::copy_file(batch / "shardflow_job.sh", dir / "shardflow_job.sh", fs::copy_options::overwrite_existing);
  fs::copy_file(o.sweep, dir / "sweep.toml", fs::copy_options::overwrite_existing);
  for (auto& c : s.configs) fs::create_directories(c.run_dir);
  for (auto& g : groups) {
    std::ofstream os(g.file);
    SHARDFLOW_REQUIRE_INPUT(os.good(), "cannot write '", g.file, "'");
    os << g.script;
  }
  nlohmann::json study = {{"study", s.name},
                          {"scaling", s.scaling},
                          {"deck", deck},
                          {"sweep", fs::absolute(o.sweep).string()},
                          {"steps", s.steps},
                          {"dir", dir.string()},
                          {"configs", nlohmann::json::array()}};
  auto write_records = [&] {
    study["configs"] = nlohmann::json::array();
    for (const auto& g : groups)
      for (size_t i : g.members) study["configs"].push_back(config_json(s, s.configs[i], g));
    std::ofstream js(dir / "study.json");
    js << study.dump(2) << "\n";
    std::ofstream csv(dir / "study.csv");
    csv << "name,ranks,nodes,mesh,global_batch,steps,job_id,script,run_dir,output\n";
    for (const auto& g : groups)
      for (size_t i : g.members) {
        const auto& c = s.configs[i];
        csv << c.name << "," << c.ranks << "," << c.nodes << "," << mesh_label(c.mesh) << "," << c.global_batch << ","
            << s.steps << "," << c.job_id << "," << g.file << "," << c.run_dir << "," << c.output << "\n";
      }
  };
  for (auto& g : groups) {
    int status = 0;
    const std::string cmd = o.sbatch + " --parsable " + sh_quote(g.file) + " 2>&1";
    std::string out = run_capture(cmd, status);
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    const std::string id = out.substr(0, out.find(';'));
    const bool numeric =
        !id.empty() && std::all_of(id.begin(), id.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    if (status != 0 || !numeric) {
      write_records();  // what was submitted so far stays on record
      throw InputError(detail::concat("sbatch failed for ", g.file, " (status ", status, "): ", out));
    }
    for (size_t i : g.members) {
      auto& c = s.configs[i];
      c.job_id = id + "_" + std::to_string(c.array_task);
      c.output = (dir / "logs" / (g.job_name + "-" + c.job_id + ".out")).string();
    }
    std::printf("submitted %s: job array %s (%zu configuration(s), %lld rank(s) each)\n", g.file.c_str(), id.c_str(),
                g.members.size(), static_cast<long long>(g.ranks));
  }
  write_records();
  std::printf("study '%s': %zu configuration(s) recorded in %s\n", s.name.c_str(), s.configs.size(),
              (dir / "study.json").string().c_str());
  return 0;
}

app::CommandRegistration reg(
    "submit", "build Slurm job arrays for a scaling study (a deck and a sweep) and submit them", [](CLI::App& sub) {
      auto o = std::make_shared<SubmitOptions>();
      sub.add_option("deck", o->deck, "input deck (TOML)")->required();
      sub.add_option("--sweep", o->sweep, "sweep description (TOML)")->required();
      sub.add_option("--dir", o->dir, "study directory (default: study.dir, else studies/NAME)");
      sub.add_flag("--dry-run", o->dry_run, "print the sbatch scripts; write and submit nothing");
      sub.add_option("--batch-dir", o->batch_dir,
                     "directory with shardflow_job.sh (default: found from the executable)");
      sub.add_option("--bin", o->bin, "shardflow binary the jobs run (default: this one)");
      sub.add_option("--sbatch", o->sbatch, "the sbatch command (default: sbatch)");
      return [o] { return run_submit(*o); };
    });

}  // namespace
