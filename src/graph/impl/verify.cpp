#include "graph/verify.hpp"

#include "comm/control.hpp"

#include <algorithm>
#include <sstream>

#include "core/error.hpp"
#include "comm/mpi_check.hpp"

namespace shardflow::graph {

std::string comm_key(const Mesh& mesh, const std::vector<std::string>& axes) {
  auto canon = mesh.canonical_axes(axes);
  std::string k;
  for (size_t i = 0; i < canon.size(); ++i) k += (i ? "+" : "") + canon[i];
  return k;
}

std::vector<std::string> comm_key_axes(const Mesh& mesh, const std::string& key) {
  if (key == "world") return mesh.shape().axis_names();
  std::vector<std::string> axes;
  std::string cur;
  for (char c : key + "+") {
    if (c == '+') {
      SHARDFLOW_REQUIRE(!cur.empty(), "malformed communicator key '", key, "'");
      SHARDFLOW_REQUIRE(mesh.shape().has_axis(cur), "communicator key '", key, "' names axis '", cur,
                        "' which mesh ", mesh.shape().to_string(), " does not have");
      axes.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return mesh.canonical_axes(axes);
}

namespace {

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == '\n') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return out;
}

/// Gathers one string from every rank of `comm` (in comm rank order).
std::vector<std::string> allgather_strings(const std::string& mine, MPI_Comm comm) {
  return comm::Control(comm).all_gather(mine);
}

std::string describe(const CollectiveDesc& d) {
  std::ostringstream os;
  os << d.kind << "(" << d.tensor << ", " << d.count << " " << d.dtype << ")";
  return os.str();
}

}  // namespace

void verify(const TaskGraph& g, const Mesh& mesh) {
  const auto& shape = mesh.shape();
  const int me = mesh.rank();
  // Normalise the graph's keys to canonical ones, and refuse keys the mesh cannot serve.
  std::string error;
  std::vector<std::string> canon_of_key;
  for (const auto& k : g.comm_keys()) {
    try {
      canon_of_key.push_back(comm_key(mesh, comm_key_axes(mesh, k)));
    } catch (const std::exception& e) {
      if (error.empty()) error = "rank " + std::to_string(me) + ": " + e.what();
      canon_of_key.push_back("");
    }
  }
  const int nax = shape.ndim();
  for (int mask = 1; mask < (1 << nax); ++mask) {
    std::vector<std::string> axes;
    for (int i = 0; i < nax; ++i)
      if (mask & (1 << i)) axes.push_back(shape.axis_names()[static_cast<size_t>(i)]);
    const std::string key = comm_key(mesh, axes);
    MPI_Comm comm = mesh.comm(axes);
    const auto group = shape.group_ranks(me, mesh.canonical_axes(axes));
    // This rank's collectives and point-to-point messages on this communicator, in order.
    std::string coll, p2p;
    for (size_t k = 0; k < g.comm_keys().size(); ++k) {
      if (canon_of_key[k] != key) continue;
      for (int id : g.comm_sequence(g.comm_keys()[k])) {
        const auto& d = g.node(id).desc;
        if (d.kind == "send" || d.kind == "recv")
          p2p += d.kind + " " + std::to_string(d.peer) + " " + std::to_string(d.count) + " " + d.dtype + " " +
                 d.tensor + "\n";
        else
          coll += describe(d) + "\n";
      }
    }
    auto colls = allgather_strings(coll, comm);
    auto p2ps = allgather_strings(p2p, comm);
    if (!error.empty()) continue;
    // Collectives: every member must issue the same sequence as the group's first member.
    std::vector<std::vector<std::string>> seqs;
    size_t longest = 0;
    for (auto& s : colls) {
      seqs.push_back(split_lines(s));
      longest = std::max(longest, seqs.back().size());
    }
    for (size_t i = 0; i < longest && error.empty(); ++i) {
      for (size_t r = 1; r < seqs.size(); ++r) {
        const std::string a = i < seqs[0].size() ? seqs[0][i] : "nothing";
        const std::string b = i < seqs[r].size() ? seqs[r][i] : "nothing";
        if (a != b) {
          error = "verify: collective #" + std::to_string(i) + " on communicator '" + key + "' differs: rank " +
                  std::to_string(group[0]) + " issues " + a + " but rank " + std::to_string(group[r]) + " issues " + b;
          break;
        }
      }
    }
    // Point-to-point: my sends to p must match p's receives from me, in order.
    const int my_index = shape.group_index(me, mesh.canonical_axes(axes));
    std::vector<std::vector<std::string>> sends(group.size()), recvs_from_me(group.size());
    for (const auto& line : split_lines(p2ps[static_cast<size_t>(my_index)])) {
      std::istringstream is(line);
      std::string kind, rest;
      int peer = -1;
      is >> kind >> peer;
      std::getline(is, rest);
      if (kind == "send") {
        if (peer < 0 || peer >= static_cast<int>(group.size())) {
          error = "verify: rank " + std::to_string(me) + " sends to peer " + std::to_string(peer) +
                  " outside communicator '" + key + "' of size " + std::to_string(group.size());
          break;
        }
        sends[static_cast<size_t>(peer)].push_back(rest);
      }
    }
    for (size_t p = 0; p < group.size() && error.empty(); ++p) {
      for (const auto& line : split_lines(p2ps[p])) {
        std::istringstream is(line);
        std::string kind, rest;
        int peer = -1;
        is >> kind >> peer;
        std::getline(is, rest);
        if (kind == "recv" && peer == my_index) recvs_from_me[p].push_back(rest);
      }
      const auto& s = sends[p];
      const auto& r = recvs_from_me[p];
      for (size_t i = 0; i < std::max(s.size(), r.size()); ++i) {
        const std::string a = i < s.size() ? "send" + s[i] : "nothing";
        const std::string b = i < r.size() ? "recv" + r[i] : "nothing";
        if (i >= s.size() || i >= r.size() || s[i] != r[i]) {
          error = "verify: message #" + std::to_string(i) + " from rank " + std::to_string(me) + " to rank " +
                  std::to_string(group[p]) + " on communicator '" + key + "' does not match: " + a + " vs " + b;
          break;
        }
      }
    }
  }
  // Agree on the outcome: the lowest failing rank's message goes to everyone.
  const comm::Control world(mesh.world());
  const int first = world.min(error.empty() ? shape.size() : me);
  if (first == shape.size()) return;
  throw Error(world.broadcast(error, first));
}

}  // namespace shardflow::graph
