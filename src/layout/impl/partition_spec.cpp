#include "layout/partition_spec.hpp"

#include <algorithm>
#include <cctype>

#include "core/error.hpp"

namespace shardflow {

std::vector<std::string> PartitionSpec::axes_used() const {
  std::vector<std::string> out;
  for (const auto& d : dims_) out.insert(out.end(), d.begin(), d.end());
  return out;
}

bool PartitionSpec::uses_axis(const std::string& axis) const { return dim_of_axis(axis) >= 0; }

int PartitionSpec::dim_of_axis(const std::string& axis) const {
  for (size_t d = 0; d < dims_.size(); ++d)
    if (std::find(dims_[d].begin(), dims_[d].end(), axis) != dims_[d].end()) return static_cast<int>(d);
  return -1;
}

void PartitionSpec::validate(const MeshShape& mesh) const {
  auto used = axes_used();
  for (const auto& a : used) {
    SHARDFLOW_REQUIRE_INPUT(mesh.has_axis(a), "partition spec ", to_string(), " uses axis '", a,
                            "' which mesh ", mesh.to_string(), " does not have");
    SHARDFLOW_REQUIRE_INPUT(std::count(used.begin(), used.end(), a) == 1, "partition spec ", to_string(),
                            " uses axis '", a, "' more than once");
  }
}

std::string PartitionSpec::to_string() const {
  std::string s = "(";
  for (size_t d = 0; d < dims_.size(); ++d) {
    if (d) s += ", ";
    const auto& ax = dims_[d];
    if (ax.empty()) {
      s += "None";
    } else if (ax.size() == 1) {
      s += "'" + ax[0] + "'";
    } else {
      s += "(";
      for (size_t i = 0; i < ax.size(); ++i) s += (i ? ", '" : "'") + ax[i] + "'";
      s += ")";
    }
  }
  if (dims_.size() == 1) s += ",";
  return s + ")";
}

namespace {
struct Parser {
  const std::string& t;
  size_t i = 0;
  void ws() {
    while (i < t.size() && std::isspace(static_cast<unsigned char>(t[i]))) ++i;
  }
  bool eat(char c) {
    ws();
    if (i < t.size() && t[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  [[noreturn]] void fail(const std::string& why) {
    throw InputError("malformed partition spec '" + t + "' at character " + std::to_string(i) + ": " + why);
  }
  std::string name() {
    ws();
    if (!eat('\'')) fail("expected a quoted axis name");
    size_t j = t.find('\'', i);
    if (j == std::string::npos) fail("unterminated axis name");
    std::string n = t.substr(i, j - i);
    i = j + 1;
    return n;
  }
};
}  // namespace

PartitionSpec PartitionSpec::parse(const std::string& text) {
  Parser p{text};
  std::vector<DimAxes> dims;
  if (!p.eat('(')) p.fail("expected '('");
  while (true) {
    p.ws();
    if (p.eat(')')) break;
    if (text.compare(p.i, 4, "None") == 0) {
      p.i += 4;
      dims.emplace_back();
    } else if (p.eat('(')) {
      DimAxes ax;
      while (!p.eat(')')) {
        ax.push_back(p.name());
        p.eat(',');
      }
      dims.push_back(ax);
    } else {
      dims.push_back({p.name()});
    }
    if (!p.eat(',')) {
      if (!p.eat(')')) p.fail("expected ',' or ')'");
      break;
    }
  }
  p.ws();
  if (p.i != text.size()) p.fail("trailing characters");
  return PartitionSpec(dims);
}

}  // namespace shardflow
