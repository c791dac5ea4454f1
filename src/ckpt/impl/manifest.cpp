#include "ckpt/manifest.hpp"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "ckpt/checksum.hpp"
#include "core/error.hpp"

namespace shardflow::ckpt {

using nlohmann::json;

namespace {

std::string hex32(std::uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "%08x", v);
  return b;
}
std::string to_hex(const std::vector<std::uint8_t>& v) {
  static const char* d = "0123456789abcdef";
  std::string s;
  s.reserve(v.size() * 2);
  for (auto c : v) {
    s.push_back(d[c >> 4]);
    s.push_back(d[c & 15]);
  }
  return s;
}
int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
std::vector<std::uint8_t> from_hex(const std::string& s, const std::string& where, const std::string& what) {
  SHARDFLOW_REQUIRE_INPUT(s.size() % 2 == 0, where, ": ", what, " is not a hex string");
  std::vector<std::uint8_t> v(s.size() / 2);
  for (size_t i = 0; i < v.size(); ++i) {
    int a = hexval(s[2 * i]), b = hexval(s[2 * i + 1]);
    SHARDFLOW_REQUIRE_INPUT(a >= 0 && b >= 0, where, ": ", what, " is not a hex string");
    v[i] = static_cast<std::uint8_t>(a * 16 + b);
  }
  return v;
}
/// CRC-32C of the compact dump of `j` (keys sorted, the shortest round-trip numbers: parsing
/// and dumping again gives the same text).
std::uint32_t crc32c_of_json(const json& j) {
  const std::string text = j.dump();
  return crc32c(text.data(), text.size());
}

std::uint32_t parse_hex32(const std::string& s, const std::string& where, const std::string& what) {
  SHARDFLOW_REQUIRE_INPUT(s.size() == 8, where, ": ", what, " checksum '", s, "' is not 8 hex digits");
  std::uint32_t v = 0;
  for (char c : s) {
    int h = hexval(c);
    SHARDFLOW_REQUIRE_INPUT(h >= 0, where, ": ", what, " checksum '", s, "' is not 8 hex digits");
    v = v * 16 + static_cast<std::uint32_t>(h);
  }
  return v;
}

// Strict integer reads: nlohmann's get<int>() on a float (or an out-of-range integer)
// converts with static_cast, which is undefined behaviour for 1e300 (found by fuzzing).
constexpr std::int64_t kMaxElements = std::int64_t(1) << 56;

template <typename T>
T get_int(const json& v, const std::string& where, const std::string& what) {
  SHARDFLOW_REQUIRE_INPUT(v.is_number_integer(), where, ": ", what, " is not an integer: ", v.dump());
  bool ok;
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    ok = u <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
  } else {
    const auto i = v.get<std::int64_t>();
    ok = i >= static_cast<std::int64_t>(std::numeric_limits<T>::min()) &&
         i <= static_cast<std::int64_t>(std::numeric_limits<T>::max());
  }
  SHARDFLOW_REQUIRE_INPUT(ok, where, ": ", what, " ", v.dump(), " is out of range");
  return v.is_number_unsigned() ? static_cast<T>(v.get<std::uint64_t>()) : static_cast<T>(v.get<std::int64_t>());
}
template <typename T>
std::vector<T> get_int_array(const json& v, const std::string& where, const std::string& what) {
  SHARDFLOW_REQUIRE_INPUT(v.is_array(), where, ": ", what, " is not an array: ", v.dump());
  std::vector<T> out;
  for (const json& e : v) out.push_back(get_int<T>(e, where, what));
  return out;
}
template <typename T>
std::map<std::string, T> get_int_map(const json& v, const std::string& where, const std::string& what) {
  SHARDFLOW_REQUIRE_INPUT(v.is_object(), where, ": ", what, " is not an object: ", v.dump());
  std::map<std::string, T> out;
  for (auto& [k, e] : v.items()) out[k] = get_int<T>(e, where, what + " '" + k + "'");
  return out;
}

}  // namespace

std::int64_t row_numel(const Shape& extent) {
  std::int64_t n = 1;
  for (size_t d = 1; d < extent.size(); ++d) n *= extent[d];
  return n;
}

std::int64_t block_rows_for(const Shape& extent, std::size_t elem_size, std::int64_t block_bytes) {
  if (extent.empty()) return 1;
  const std::int64_t row_bytes = row_numel(extent) * static_cast<std::int64_t>(elem_size);
  std::int64_t r = row_bytes > 0 ? block_bytes / row_bytes : extent[0];
  return r < 1 ? 1 : r;
}

std::int64_t num_blocks(const Shape& extent, std::int64_t block_rows) {
  if (extent.empty()) return 1;
  if (extent[0] == 0) return 0;
  return (extent[0] - 1) / block_rows + 1;  // no overflow for any block_rows >= 1
}

namespace {
// Column tiles of a box for block_cols (0: whole width); 1 for 0-d/1-d boxes and for an
// empty second dimension (the row blocks then hold no bytes, as in format 1).
std::int64_t col_tiles(const Shape& extent, std::int64_t block_cols) {
  if (extent.size() < 2 || extent[1] == 0 || block_cols <= 0) return 1;
  return (extent[1] - 1) / block_cols + 1;
}
}  // namespace

std::int64_t num_blocks(const Shape& extent, std::int64_t block_rows, std::int64_t block_cols) {
  const std::int64_t rows = num_blocks(extent, block_rows);
  const std::int64_t cols = col_tiles(extent, block_cols);
  // both are <= kMaxElements-bounded extents; the product of two extents of one valid box
  // is bounded by its element count (<= 2^56) unless a dimension is 0, handled above
  return rows == 0 ? 0 : rows * cols;
}

std::int64_t block_cols_for(const Shape& extent, std::size_t elem_size, std::int64_t run_bytes) {
  if (extent.size() < 2 || extent[1] == 0) return 1;
  std::int64_t col_bytes = static_cast<std::int64_t>(elem_size);
  for (size_t d = 2; d < extent.size(); ++d) col_bytes *= extent[d];
  if (col_bytes <= 0) return extent[1];
  const std::int64_t c = (run_bytes + col_bytes - 1) / col_bytes;
  return c < 1 ? 1 : (c > extent[1] ? extent[1] : c);
}

std::int64_t ShardRecord::cols_per_block() const {
  if (box.extent.size() < 2) return 1;
  if (block_cols > 0) return block_cols;
  return box.extent[1] > 0 ? box.extent[1] : 1;
}

std::int64_t ShardRecord::col_blocks() const { return col_tiles(box.extent, cols_per_block()); }

std::int64_t ShardRecord::tile_bytes(std::size_t elem_size) const {
  std::int64_t b = block_rows * cols_per_block() * static_cast<std::int64_t>(elem_size);
  for (size_t d = 2; d < box.extent.size(); ++d) b *= box.extent[d];
  return b;
}

std::int64_t ShardRecord::stored_bytes(std::size_t elem_size) const {
  if (numel() == 0) return 0;
  if (!tiled) return numel() * static_cast<std::int64_t>(elem_size);
  return num_blocks(box.extent, block_rows, cols_per_block()) * tile_bytes(elem_size);
}

bool is_safe_relative_path(const std::string& p) {
  if (p.empty() || p[0] == '/' || p.find('\\') != std::string::npos || p.find('\0') != std::string::npos) return false;
  std::istringstream is(p);
  std::string part;
  while (std::getline(is, part, '/'))
    if (part.empty() || part == "." || part == "..") return false;
  return p.back() != '/';
}

bool is_valid_tensor_name(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos && name != "." && name != ".." &&
         name.find('\0') == std::string::npos;
}

std::string Manifest::to_json() const {
  json j;
  j["format"] = "shardflow-checkpoint";
  j["version"] = version;
  j["step"] = step;
  j["world_size"] = world_size;
  j["created"] = created;
  j["checksum"] = "crc32c";
  json m;
  m["ints"] = meta.ints;
  m["reals"] = meta.reals;
  m["strings"] = meta.strings;
  json blobs = json::object();
  for (auto& [k, v] : meta.blobs) blobs[k] = to_hex(v);
  m["blobs"] = blobs;
  j["metadata"] = m;
  json ts = json::array();
  for (const auto& t : tensors) {
    json jt;
    jt["name"] = t.name;
    jt["shape"] = t.shape;
    jt["dtype"] = dtype_name(t.dtype);
    json lay;
    lay["spec"] = t.spec;
    lay["mesh_axes"] = t.mesh.axis_names();
    lay["mesh_sizes"] = t.mesh.sizes();
    lay["tensor_adjacent"] = t.mesh.tensor_adjacent();
    lay["pinned"] = t.pinned;
    jt["layout"] = lay;
    json shards = json::array();
    for (const auto& s : t.shards) {
      json js;
      js["offset"] = s.box.offset;
      js["extent"] = s.box.extent;
      js["file"] = s.file;
      js["dataset"] = s.dataset;
      js["writer"] = s.writer;
      js["block_rows"] = s.block_rows;
      js["block_cols"] = s.cols_per_block();
      js["file_offset"] = s.file_offset;
      json crcs = json::array();
      for (auto c : s.crc32c) crcs.push_back(hex32(c));
      js["crc32c"] = crcs;
      shards.push_back(js);
    }
    jt["shards"] = shards;
    ts.push_back(jt);
  }
  j["tensors"] = ts;
  json fs = json::array();
  for (const auto& f : files) {
    json jf;
    jf["name"] = f.name;
    jf["size"] = f.size;
    jf["meta_crc32c"] = hex32(f.meta_crc32c);
    fs.push_back(jf);
  }
  j["files"] = fs;
  // the manifest's own checksum: an edit (a dtype changed, a tensor dropped) or damage is
  // reported as such, not later as damage of the shard files it describes
  j["manifest_crc32c"] = hex32(crc32c_of_json(j));
  return j.dump(1) + "\n";
}

Manifest Manifest::parse(const std::string& text, const std::string& where) {
  Manifest m;
  try {
    json j = json::parse(text);
    if (j.is_object() && j.contains("manifest_crc32c")) {  // absent in manifests of shardflow before 2026-12
      const std::uint32_t stored = parse_hex32(j.at("manifest_crc32c").get<std::string>(), where, "manifest");
      json body = j;
      body.erase("manifest_crc32c");
      const std::uint32_t computed = crc32c_of_json(body);
      if (stored != computed) {
        char b[64];
        std::snprintf(b, sizeof b, "stored %08x, computed %08x", stored, computed);
        throw InputError(::shardflow::detail::concat(
            where, ": the manifest does not match its own checksum (", b,
            "): it was edited or damaged after the checkpoint was written, so neither it nor the shard files it "
            "describes can be trusted; restore an earlier checkpoint"));
      }
    }
    SHARDFLOW_REQUIRE_INPUT(j.at("format").get<std::string>() == "shardflow-checkpoint", where,
                            ": not a shardflow checkpoint manifest (format '", j.at("format").get<std::string>(), "')");
    const int version = get_int<int>(j.at("version"), where, "version");
    SHARDFLOW_REQUIRE_INPUT(version != 1, where,
                            ": manifest version 1 is no longer read: its shard files carry no size and metadata "
                            "checksum, so they cannot be checked before HDF5 parses them (format ", kVersion,
                            " does); restore it with the shardflow that wrote it and save it again");
    SHARDFLOW_REQUIRE_INPUT(version == 2 || version == kVersion, where, ": manifest version ", version,
                            " is not supported (expected 2 or ", kVersion, ")");
    m.version = version;
    SHARDFLOW_REQUIRE_INPUT(j.value("checksum", std::string("crc32c")) == "crc32c", where, ": unknown checksum '",
                            j.value("checksum", std::string()), "'");
    m.step = get_int<std::int64_t>(j.at("step"), where, "step");
    m.world_size = get_int<int>(j.at("world_size"), where, "world_size");
    m.created = j.value("created", std::string());
    const json& md = j.at("metadata");
    m.meta.step = m.step;
    m.meta.ints = get_int_map<std::int64_t>(md.value("ints", json::object()), where, "metadata int");
    m.meta.reals = md.value("reals", json::object()).get<std::map<std::string, double>>();
    m.meta.strings = md.value("strings", json::object()).get<std::map<std::string, std::string>>();
    const json blobs = md.value("blobs", json::object());
    for (auto& [k, v] : blobs.items())
      m.meta.blobs[k] = from_hex(v.get<std::string>(), where, "blob '" + k + "'");
    for (const json& jt : j.at("tensors")) {
      TensorRecord t;
      t.name = jt.at("name").get<std::string>();
      t.shape = get_int_array<std::int64_t>(jt.at("shape"), where, "tensor '" + t.name + "' shape");
      t.dtype = parse_dtype(jt.at("dtype").get<std::string>());
      const json& lay = jt.at("layout");
      t.spec = lay.at("spec").get<std::string>();
      t.mesh = MeshShape(lay.at("mesh_axes").get<std::vector<std::string>>(),
                         get_int_array<int>(lay.at("mesh_sizes"), where, "tensor '" + t.name + "' mesh_sizes"),
                         lay.value("tensor_adjacent", true));
      t.pinned = get_int_map<int>(lay.value("pinned", json::object()), where, "tensor '" + t.name + "' pinned axis");
      for (const json& js : jt.at("shards")) {
        ShardRecord s;
        s.box.offset = get_int_array<std::int64_t>(js.at("offset"), where, "tensor '" + t.name + "' shard offset");
        s.box.extent = get_int_array<std::int64_t>(js.at("extent"), where, "tensor '" + t.name + "' shard extent");
        s.file = js.at("file").get<std::string>();
        s.dataset = js.at("dataset").get<std::string>();
        s.writer = js.contains("writer") ? get_int<int>(js.at("writer"), where, "tensor '" + t.name + "' shard writer") : -1;
        s.block_rows = get_int<std::int64_t>(js.at("block_rows"), where, "tensor '" + t.name + "' block_rows");
        s.block_cols = get_int<std::int64_t>(js.at("block_cols"), where, "tensor '" + t.name + "' block_cols");
        SHARDFLOW_REQUIRE_INPUT(s.block_cols >= 1, where, ": tensor '", t.name, "': block_cols ", s.block_cols, " < 1");
        s.file_offset = get_int<std::int64_t>(js.at("file_offset"), where, "tensor '" + t.name + "' file_offset");
        s.tiled = version >= 3 && ShardRecord::tiles(s.box);
        for (const json& c : js.at("crc32c"))
          s.crc32c.push_back(parse_hex32(c.get<std::string>(), where, "tensor '" + t.name + "'"));
        t.shards.push_back(std::move(s));
      }
      m.tensors.push_back(std::move(t));
    }
    for (const json& jf : j.at("files")) {
      FileRecord f;
      f.name = jf.at("name").get<std::string>();
      f.size = get_int<std::int64_t>(jf.at("size"), where, "file '" + f.name + "' size");
      f.meta_crc32c = parse_hex32(jf.at("meta_crc32c").get<std::string>(), where, "file '" + f.name + "' metadata");
      m.files.push_back(std::move(f));
    }
  } catch (const json::exception& e) {
    throw InputError(detail::concat(where, ": malformed manifest: ", e.what()));
  }
  return m;
}

void Manifest::validate(const std::string& where) const {
  SHARDFLOW_REQUIRE_INPUT(world_size >= 1, where, ": world_size ", world_size, " < 1");
  std::map<std::string, const FileRecord*> file_index;
  std::map<std::string, std::vector<ByteRange>> ranges;  // per file, from its shards
  for (const auto& f : files) {
    SHARDFLOW_REQUIRE_INPUT(is_safe_relative_path(f.name), where, ": file path '", f.name,
                            "' escapes the checkpoint directory (absolute, '..' or empty components are refused)");
    SHARDFLOW_REQUIRE_INPUT(file_index.emplace(f.name, &f).second, where, ": file '", f.name, "' listed twice");
    SHARDFLOW_REQUIRE_INPUT(f.size >= 0 && f.size <= kMaxElements, where, ": file '", f.name, "' has size ", f.size,
                            " outside [0, ", kMaxElements, "]");
    ranges[f.name];
  }
  std::set<std::string> names, used;
  for (const auto& t : tensors) {
    SHARDFLOW_REQUIRE_INPUT(is_valid_tensor_name(t.name), where, ": invalid tensor name '", t.name, "'");
    SHARDFLOW_REQUIRE_INPUT(names.insert(t.name).second, where, ": tensor '", t.name, "' listed twice");
    // Bounded extents and element counts keep every size and byte computation of the
    // reader (offsets, numel * element size, block arithmetic) free of overflow.
    std::int64_t total = 1;
    for (auto e : t.shape) {
      SHARDFLOW_REQUIRE_INPUT(e >= 0, where, ": tensor '", t.name, "' has negative extent in shape ",
                              shape_to_string(t.shape));
      SHARDFLOW_REQUIRE_INPUT(e <= kMaxElements, where, ": tensor '", t.name, "' has extent ", e, " > ", kMaxElements,
                              " in shape ", shape_to_string(t.shape));
      total = e == 0 || total <= kMaxElements / e ? total * e : kMaxElements + 1;
    }
    SHARDFLOW_REQUIRE_INPUT(total <= kMaxElements, where, ": tensor '", t.name, "' of shape ", shape_to_string(t.shape),
                            " has more than ", kMaxElements, " elements");
    for (const auto& s : t.shards) {
      SHARDFLOW_REQUIRE_INPUT(s.box.offset.size() == t.shape.size() && s.box.extent.size() == t.shape.size(), where,
                              ": tensor '", t.name, "': shard box ", s.box.to_string(), " does not have the rank of shape ",
                              shape_to_string(t.shape));
      for (size_t d = 0; d < t.shape.size(); ++d)
        SHARDFLOW_REQUIRE_INPUT(s.box.offset[d] >= 0 && s.box.extent[d] >= 0 && s.box.extent[d] <= t.shape[d] &&
                                    s.box.offset[d] <= t.shape[d] - s.box.extent[d],
                                where, ": tensor '", t.name, "': shard box ", s.box.to_string(), " leaves shape ",
                                shape_to_string(t.shape));
      SHARDFLOW_REQUIRE_INPUT(is_safe_relative_path(s.file), where, ": tensor '", t.name, "': shard file path '", s.file,
                              "' escapes the checkpoint directory (absolute, '..' or empty components are refused)");
      SHARDFLOW_REQUIRE_INPUT(s.dataset == "/" + t.name, where, ": tensor '", t.name, "': dataset '", s.dataset,
                              "' in file '", s.file, "' is not '/", t.name, "'");
      SHARDFLOW_REQUIRE_INPUT(s.block_rows >= 1 && s.block_rows <= kMaxElements, where, ": tensor '", t.name,
                              "': block_rows ", s.block_rows, " is not in [1, ", kMaxElements, "]");
      SHARDFLOW_REQUIRE_INPUT(s.block_cols >= 0 && s.block_cols <= kMaxElements &&
                                  (s.box.extent.size() >= 2 || s.block_cols <= 1),
                              where, ": tensor '", t.name, "': block_cols ", s.block_cols, " is not in [1, ",
                              s.box.extent.size() >= 2 ? kMaxElements : 1, "]");
      const std::int64_t nb = num_blocks(s.box.extent, s.block_rows, s.cols_per_block());
      SHARDFLOW_REQUIRE_INPUT(static_cast<std::int64_t>(s.crc32c.size()) == nb, where, ": tensor '", t.name,
                              "': shard in file '", s.file, "' has ", s.crc32c.size(), " checksums for ", nb, " blocks");
      auto fi = file_index.find(s.file);
      const FileRecord* f = fi == file_index.end() ? nullptr : fi->second;
      SHARDFLOW_REQUIRE_INPUT(f != nullptr, where, ": tensor '", t.name, "': shard file '", s.file,
                              "' has no entry in \"files\" (size and metadata checksum)");
      // the stored size: a tile's bytes and the tile count are each bounded by the shard's
      // elements (tiles are no larger than a padded box of at most 2 x its extents)
      SHARDFLOW_REQUIRE_INPUT(!s.tiled || (s.block_rows <= s.box.extent[0] && s.cols_per_block() <= (s.box.extent.size() >= 2 ? s.box.extent[1] : 1)),
                              where, ": tensor '", t.name, "': tile of ", s.block_rows, " x ", s.cols_per_block(),
                              " is larger than the shard box ", s.box.to_string());
      const std::int64_t bytes = s.stored_bytes(dtype_size(t.dtype));
      if (bytes == 0) {
        SHARDFLOW_REQUIRE_INPUT(s.file_offset == -1, where, ": tensor '", t.name, "': empty shard in file '", s.file,
                                "' has file_offset ", s.file_offset, " (must be -1)");
      } else {
        SHARDFLOW_REQUIRE_INPUT(s.file_offset >= 0 && s.file_offset <= f->size && bytes <= f->size - s.file_offset,
                                where, ": tensor '", t.name, "': data [", s.file_offset, ", +", bytes,
                                ") of the shard lies outside file '", s.file, "' of ", f->size, " bytes");
        ranges[s.file].push_back(ByteRange{s.file_offset, bytes});
      }
      used.insert(s.file);
    }
  }
  for (auto& [name, r] : ranges) {
    SHARDFLOW_REQUIRE_INPUT(used.count(name), where, ": file '", name, "' holds no shard");
    std::sort(r.begin(), r.end(), [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
    for (size_t i = 1; i < r.size(); ++i)
      SHARDFLOW_REQUIRE_INPUT(r[i - 1].offset + r[i - 1].length <= r[i].offset, where, ": file '", name,
                              "': data ranges [", r[i - 1].offset, ", +", r[i - 1].length, ") and [", r[i].offset, ", +",
                              r[i].length, ") overlap");
  }
}

const FileRecord* Manifest::find_file(const std::string& name) const {
  for (const auto& f : files)
    if (f.name == name) return &f;
  return nullptr;
}

std::vector<ByteRange> Manifest::data_ranges(const std::string& file) const {
  std::vector<ByteRange> r;
  for (const auto& t : tensors)
    for (const auto& s : t.shards)
      if (s.file == file && s.file_offset >= 0) r.push_back(ByteRange{s.file_offset, s.stored_bytes(dtype_size(t.dtype))});
  std::sort(r.begin(), r.end(), [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
  return r;
}

const TensorRecord* Manifest::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

std::string coverage_problem(const TensorRecord& t) {
  const Box whole{Shape(t.shape.size(), 0), t.shape};
  std::int64_t covered = 0;
  for (size_t i = 0; i < t.shards.size(); ++i) {
    const Box& a = t.shards[i].box;
    if (!whole.contains(a) && a.numel() > 0)
      return detail::concat("shard ", a.to_string(), " in '", t.shards[i].file, "' leaves shape ",
                            shape_to_string(t.shape));
    covered += a.numel();
    for (size_t j = i + 1; j < t.shards.size(); ++j) {
      Box x = Box::intersect(a, t.shards[j].box);
      if (!x.empty())
        return detail::concat("shards ", a.to_string(), " in '", t.shards[i].file, "' and ", t.shards[j].box.to_string(),
                              " in '", t.shards[j].file, "' overlap in ", x.to_string());
    }
  }
  const std::int64_t total = numel(t.shape);
  if (covered != total)
    return detail::concat("shards cover ", covered, " of ", total, " elements of shape ", shape_to_string(t.shape));
  return {};
}

}  // namespace shardflow::ckpt
