// Cluster files (inputs/clusters/*.toml): parsing, lookup by name, and the device cost
// functions the simulator charges each kernel with.
#include "sim/cluster.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "sim/calibrate.hpp"

#ifndef SHARDFLOW_CLUSTER_DIR
#define SHARDFLOW_CLUSTER_DIR ""
#endif

namespace shardflow::sim {

double Cluster::peak_flops(DType dt) const {
  const double t = dt == DType::BF16 ? peak_bf16 : dt == DType::F16 ? peak_f16 : peak_f32;
  return t * 1e12;
}

double Cluster::gemm_fraction(double m, double n, double k) const {
  if (gemm_efficiency.empty()) return 1.0;
  const double size = std::cbrt(std::max(1.0, m) * std::max(1.0, n) * std::max(1.0, k));
  if (size <= gemm_efficiency.front().first) return gemm_efficiency.front().second;
  if (size >= gemm_efficiency.back().first) return gemm_efficiency.back().second;
  for (size_t i = 1; i < gemm_efficiency.size(); ++i) {
    const auto& [s1, e1] = gemm_efficiency[i];
    if (size > s1) continue;
    const auto& [s0, e0] = gemm_efficiency[i - 1];
    const double w = (std::log(size) - std::log(s0)) / (std::log(s1) - std::log(s0));
    return e0 + w * (e1 - e0);
  }
  return gemm_efficiency.back().second;
}

double Cluster::gemm_seconds(double m, double n, double k, DType dt) const {
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  return 2.0 * m * n * k / (peak_flops(dt) * gemm_fraction(m, n, k));
}

double Cluster::bytes_seconds(double bytes) const {
  return bytes <= 0 ? 0 : bytes / (memory_bandwidth_gbs * 1e9 * elementwise_efficiency);
}

namespace {

double number(const toml::table& t, const std::string& key, const std::string& where, bool required = true,
              double def = 0) {
  const auto* node = t.get(key);
  if (node == nullptr) {
    SHARDFLOW_REQUIRE_INPUT(!required, where, ": missing key ", key);
    return def;
  }
  if (auto v = node->value<double>()) {
    SHARDFLOW_REQUIRE_INPUT(std::isfinite(*v) && *v >= 0, where, ": ", key, " = ", *v,
                            " must be a finite number >= 0");
    return *v;
  }
  throw InputError(where + ": " + key + " must be a number");
}

const toml::table& table(const toml::table& t, const std::string& key, const std::string& where) {
  const auto* node = t.get(key);
  SHARDFLOW_REQUIRE_INPUT(node != nullptr && node->is_table(), where, ": missing table [", key, "]");
  return *node->as_table();
}

Link link(const toml::table& root, const std::string& name, const std::string& where) {
  const std::string w = where + ": [link." + name + "]";
  const toml::table& l = table(table(root, "link", where), name, where + ": [link]");
  Link k;
  k.bandwidth_gbs = number(l, "bandwidth_gbs", w);
  SHARDFLOW_REQUIRE_INPUT(k.bandwidth_gbs > 0, w, ": bandwidth_gbs must be > 0");
  k.latency_us = number(l, "latency_us", w);
  k.hop_latency_us = number(l, "hop_latency_us", w, false, 0);
  k.efficiency = number(l, "efficiency", w, false, 1);
  SHARDFLOW_REQUIRE_INPUT(k.efficiency > 0 && k.efficiency <= 1, w, ": efficiency = ", k.efficiency,
                          " must be in (0, 1]");
  return k;
}

}  // namespace

Cluster parse_cluster(const std::string& text, const std::string& where) {
  toml::table root;
  try {
    root = toml::parse(text, where);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << where << ":" << e.source().begin.line << ": " << e.description();
    throw InputError(os.str());
  }
  Cluster c;
  c.source = where;
  c.name = root["name"].value_or(std::string());
  SHARDFLOW_REQUIRE_INPUT(!c.name.empty(), where, ": missing key name");
  c.description = root["description"].value_or(std::string());
  const toml::table& dev = table(root, "device", where);
  const std::string wd = where + ": [device]";
  const toml::table& peak = table(dev, "peak_tflops", wd);
  c.peak_f32 = number(peak, "f32", wd + " peak_tflops");
  c.peak_tf32 = number(peak, "tf32", wd + " peak_tflops", false, c.peak_f32);
  c.peak_bf16 = number(peak, "bf16", wd + " peak_tflops", false, c.peak_f32);
  c.peak_f16 = number(peak, "f16", wd + " peak_tflops", false, c.peak_bf16);
  SHARDFLOW_REQUIRE_INPUT(c.peak_f32 > 0 && c.peak_bf16 > 0 && c.peak_f16 > 0, wd,
                          ": peak_tflops must be > 0 for f32, bf16 and f16");
  c.memory_gib = number(dev, "memory_gib", wd);
  c.memory_bandwidth_gbs = number(dev, "memory_bandwidth_gbs", wd);
  SHARDFLOW_REQUIRE_INPUT(c.memory_gib > 0 && c.memory_bandwidth_gbs > 0, wd,
                          ": memory_gib and memory_bandwidth_gbs must be > 0");
  c.elementwise_efficiency = number(dev, "elementwise_efficiency", wd, false, 1);
  SHARDFLOW_REQUIRE_INPUT(c.elementwise_efficiency > 0 && c.elementwise_efficiency <= 1, wd,
                          ": elementwise_efficiency = ", c.elementwise_efficiency, " must be in (0, 1]");
  c.dropout_mask_ns = number(dev, "dropout_mask_ns", wd, false, 0);
  SHARDFLOW_REQUIRE_INPUT(c.dropout_mask_ns >= 0, wd, ": dropout_mask_ns = ", c.dropout_mask_ns, " must be >= 0");
  if (const auto* v = dev.get("sixteen_bit_as_f32")) {
    SHARDFLOW_REQUIRE_INPUT(v->is_boolean(), wd, ": sixteen_bit_as_f32 must be true or false");
    c.sixteen_bit_as_f32 = *v->value<bool>();
  }
  if (const auto* arr = dev.get_as<toml::array>("gemm_efficiency")) {
    for (const auto& e : *arr) {
      const auto* pair = e.as_array();
      SHARDFLOW_REQUIRE_INPUT(pair != nullptr && pair->size() == 2, wd,
                              ": gemm_efficiency must be a list of [size, fraction] pairs");
      const double s = pair->get(0)->value<double>().value_or(-1), f = pair->get(1)->value<double>().value_or(-1);
      SHARDFLOW_REQUIRE_INPUT(s > 0 && f > 0 && f <= 1, wd, ": gemm_efficiency entry [", s, ", ", f,
                              "] needs size > 0 and a fraction in (0, 1]");
      SHARDFLOW_REQUIRE_INPUT(c.gemm_efficiency.empty() || s > c.gemm_efficiency.back().first, wd,
                              ": gemm_efficiency sizes must increase (", s, " after ",
                              c.gemm_efficiency.back().first, ")");
      c.gemm_efficiency.emplace_back(s, f);
    }
  }
  const toml::table& node = table(root, "node", where);
  const double dpn = number(node, "devices", where + ": [node]");
  SHARDFLOW_REQUIRE_INPUT(dpn >= 1 && dpn == std::floor(dpn), where, ": [node] devices = ", dpn,
                          " must be a whole number >= 1");
  c.devices_per_node = static_cast<int>(dpn);
  if (const auto* v = node.get("comm_on_compute_core")) {
    SHARDFLOW_REQUIRE_INPUT(v->is_boolean(), where, ": [node] comm_on_compute_core must be true or false");
    c.comm_on_compute_core = *v->value<bool>();
  }
  c.intra = link(root, "intra", where);
  c.inter = link(root, "inter", where);
  if (const auto* coll = root.get_as<toml::table>("collectives")) {
    c.intra_algo = (*coll)["intra"].value_or(c.intra_algo);
    c.inter_algo = (*coll)["inter"].value_or(c.inter_algo);
  }
  SHARDFLOW_REQUIRE_INPUT(c.intra_algo == "ring", where, ": [collectives] intra = \"", c.intra_algo,
                          "\": only \"ring\" is modelled");
  SHARDFLOW_REQUIRE_INPUT(c.inter_algo == "ring" || c.inter_algo == "hierarchical", where,
                          ": [collectives] inter = \"", c.inter_algo, "\" must be \"ring\" or \"hierarchical\"");
  return c;
}

Cluster load_cluster(const std::string& name_or_file) {
  namespace fs = std::filesystem;
  auto read = [](const fs::path& p) {
    std::ifstream f(p);
    SHARDFLOW_REQUIRE_INPUT(f.good(), "cluster file ", p.string(), " cannot be read");
    std::ostringstream os;
    os << f.rdbuf();
    return parse_cluster(os.str(), p.string());
  };
  const bool is_path = name_or_file.find('/') != std::string::npos ||
                       (name_or_file.size() > 5 && name_or_file.substr(name_or_file.size() - 5) == ".toml");
  if (is_path) {
    SHARDFLOW_REQUIRE_INPUT(fs::exists(name_or_file), "--cluster ", name_or_file, ": no such file");
    return read(name_or_file);
  }
  if (name_or_file == "local") {  // `shardflow calibrate`'s file
    const fs::path p = local_cluster_path();
    SHARDFLOW_REQUIRE_INPUT(fs::exists(p), "--cluster local: ", p.string(), " does not exist: run `shardflow calibrate`");
    return read(p);
  }
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("SHARDFLOW_CLUSTERS")) dirs.emplace_back(env);
  if (std::string(SHARDFLOW_CLUSTER_DIR).size() > 0) dirs.emplace_back(SHARDFLOW_CLUSTER_DIR);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back(exe.parent_path().parent_path() / "share" / "shardflow" / "clusters");
  std::string known;
  for (const auto& d : dirs) {
    const fs::path p = d / (name_or_file + ".toml");
    if (fs::exists(p)) return read(p);
    if (fs::is_directory(d, ec))
      for (const auto& e : fs::directory_iterator(d, ec))
        if (e.path().extension() == ".toml") known += " " + e.path().stem().string();
  }
  throw InputError("--cluster " + name_or_file + ": no cluster of that name (known:" +
                   (known.empty() ? std::string(" none found") : known) +
                   "; or give a file path, or set SHARDFLOW_CLUSTERS to a directory of cluster files)");
}

}  // namespace shardflow::sim
