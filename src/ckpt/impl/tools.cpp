#include "ckpt/tools.hpp"

#include <unistd.h>

#include "comm/control.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "ckpt/checkpoint.hpp"
#include "ckpt/impl/ckpt_internal.hpp"
#include "ckpt/impl/hdf5_util.hpp"
#include "comm/mpi_check.hpp"

namespace shardflow::ckpt {

namespace fs = std::filesystem;
using ::shardflow::detail::concat;

std::string describe(const std::string& path) {
  const std::string dir = resolve_checkpoint_dir(path);
  Manifest m = read_manifest(dir);
  std::ostringstream os;
  os << "checkpoint " << dir << "\n";
  os << "  step " << m.step << ", saved by " << m.world_size << " ranks at " << m.created << ", format " << m.version
     << (m.version >= 3 ? " (tiles stored whole)" : " (contiguous datasets)") << "\n";
  for (auto& [k, v] : m.meta.ints) os << "  int    " << k << " = " << v << "\n";
  for (auto& [k, v] : m.meta.reals) os << "  real   " << k << " = " << v << "\n";
  for (auto& [k, v] : m.meta.strings) {
    std::string first = v.substr(0, v.find('\n'));
    if (first.size() > 60) first = first.substr(0, 60);
    os << "  string " << k << " = \"" << first << (first.size() < v.size() ? "...\"" : "\"") << " (" << v.size()
       << " bytes)\n";
  }
  for (auto& [k, v] : m.meta.blobs) os << "  blob   " << k << " (" << v.size() << " bytes)\n";
  std::int64_t total = 0;
  for (const auto& t : m.tensors) {
    std::int64_t bytes = numel(t.shape) * static_cast<std::int64_t>(dtype_size(t.dtype));
    total += bytes;
    os << "  " << t.name << "  " << dtype_name(t.dtype) << " " << shape_to_string(t.shape) << "  layout "
       << (t.spec.empty() ? std::string("?") : t.spec) << " on " << t.mesh.to_string() << "  " << t.shards.size()
       << " shard(s), " << bytes << " bytes\n";
  }
  os << "  " << m.tensors.size() << " tensors, " << total << " bytes\n";
  for (const auto& f : m.files) {
    char crc[16];
    std::snprintf(crc, sizeof crc, "%08x", f.meta_crc32c);
    os << "  file " << f.name << "  " << f.size << " bytes, metadata crc32c " << crc << "\n";
  }
  return os.str();
}

VerifyReport verify(MPI_Comm comm, const std::string& path) {
  const comm::Control control(comm);
  const int rank = control.rank(), size = control.size();
  std::string err, dir, text;
  if (rank == 0) {
    try {
      dir = resolve_checkpoint_dir(path);
      text = detail::read_text_file(detail::join(dir, "manifest.json"));
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  detail::agree(comm, err);
  dir = detail::bcast_string(comm, dir, 0);
  text = detail::bcast_string(comm, text, 0);
  const std::string where = detail::join(dir, "manifest.json");
  VerifyReport rep;
  rep.dir = dir;
  Manifest m;
  try {
    m = Manifest::parse(text, where);
    m.validate(where);
  } catch (const std::exception& e) {
    rep.problems.push_back(e.what());
    return rep;
  }
  rep.tensors = static_cast<std::int64_t>(m.tensors.size());
  std::vector<std::string> mine;
  if (rank == 0)
    for (const auto& t : m.tensors) {
      std::string p = coverage_problem(t);
      if (!p.empty()) mine.push_back(concat("tensor '", t.name, "': ", p));
    }
  std::int64_t counts[3] = {0, 0, 0};  // shards, blocks, bytes
  {
    std::lock_guard<std::recursive_mutex> lock(h5::mutex());
    h5::init();
    detail::FileCache files(dir, m);
    std::vector<unsigned char> buf;
    std::int64_t k = 0;
    for (const auto& t : m.tensors)
      for (const auto& s : t.shards) {
        if (k++ % size != rank) continue;
        try {
          // verify also asks HDF5 (open_shard_dataset): every dataset where the manifest says
          h5::Handle ds = detail::open_shard_dataset(files, t, s);
          const int fd = files.checked_fd(s.file, t.name);
          const detail::TileGeometry g = detail::tile_geometry(t, s);
          const size_t nd = s.box.extent.size();
          for (std::int64_t b = 0; b < g.row_blocks; ++b) {  // one row block at a time: bounded memory
            Box rb{Shape(nd, 0), s.box.extent};
            if (nd) {
              rb.offset[0] = b * g.block_rows;
              rb.extent[0] = std::min(g.n0, rb.offset[0] + g.block_rows) - rb.offset[0];
            }
            buf.resize(static_cast<size_t>(rb.numel()) * dtype_size(t.dtype));
            counts[2] += detail::read_tiles(fd, ds, t, s, rb, buf.data(), rb.extent, Shape(nd, 0), dir);
            counts[1] += g.col_blocks;
          }
          counts[0] += 1;
        } catch (const std::exception& e) {
          mine.push_back(e.what());
        }
      }
  }
  std::int64_t sums[3] = {counts[0], counts[1], counts[2]};
  control.sum(sums, 3);
  rep.shards = sums[0];
  rep.blocks = sums[1];
  rep.bytes = sums[2];
  // every rank's problems to every rank, in rank order
  std::string joined;
  for (auto& p : mine) joined += p + '\n';
  for (int r = 0; r < size; ++r) {
    std::string s = detail::bcast_string(comm, joined, r);
    std::istringstream is(s);
    std::string line;
    while (std::getline(is, line))
      if (!line.empty()) rep.problems.push_back(line);
  }
  return rep;
}

Shape parse_shape(const std::string& text, const std::string& what) {
  Shape out;
  std::string t = text;
  SHARDFLOW_REQUIRE_INPUT(t.size() >= 2 && t.front() == '[' && t.back() == ']', what, ": malformed shape '", text, "'");
  std::istringstream is(t.substr(1, t.size() - 2));
  std::string item;
  while (std::getline(is, item, ',')) {
    try {
      size_t used = 0;
      long long v = std::stoll(item, &used);
      SHARDFLOW_REQUIRE_INPUT(v >= 0, what, ": negative extent in shape '", text, "'");
      out.push_back(v);
    } catch (const std::logic_error&) {
      throw InputError(what + ": malformed shape '" + text + "'");
    }
  }
  return out;
}

void consolidate(MPI_Comm comm, const std::string& path, const std::string& out_h5, bool include_all) {
  const int rank = comm::Control(comm).rank();
  std::string err;
  if (rank == 0) {
    // a name of our own beside the output: never a file the user has
    const std::string tmp = out_h5 + ".shardflow-tmp-" + std::to_string(::getpid());
    bool made_tmp = false;
    try {
      // never overwrite: the output could be the checkpoint's own files, or anything else
      std::error_code ec;
      SHARDFLOW_REQUIRE_INPUT(!fs::exists(fs::symlink_status(out_h5, ec)), "ckpt consolidate: '", out_h5,
                              "' exists already; give a path that does not exist (nothing was written)");
      SHARDFLOW_REQUIRE_INPUT(!fs::exists(fs::symlink_status(tmp, ec)), "ckpt consolidate: the temporary file '", tmp,
                              "' exists already (nothing was written)");
      const std::string dir = resolve_checkpoint_dir(path);
      Manifest m = read_manifest(dir);
      made_tmp = true;
      std::lock_guard<std::recursive_mutex> lock(h5::mutex());
      h5::init();
      h5::Handle out = h5::file_create(tmp);
      {
        h5::Handle root(CHECK_HDF5(H5Gopen2(out, "/", H5P_DEFAULT)), H5Gclose);
        h5::write_attr_i64(root, "step", {static_cast<long long>(m.step)});
        for (auto& [k, v] : m.meta.ints) h5::write_attr_i64(root, k, {static_cast<long long>(v)});
        for (auto& [k, v] : m.meta.reals) h5::write_attr_f64(root, k, v);
        for (auto& [k, v] : m.meta.strings)
          if (k.rfind("model_shape:", 0) != 0) h5::write_attr_string(root, k, v);
        root.close();
      }
      std::map<std::string, Shape> model_shapes;
      for (auto& [k, v] : m.meta.strings)
        if (k.rfind("model_shape:", 0) == 0) model_shapes[k.substr(12)] = parse_shape(v, dir + " metadata " + k);
      for (const auto& t : m.tensors) {
        auto ms = model_shapes.find(t.name);
        if (!model_shapes.empty() && !include_all && ms == model_shapes.end()) continue;
        const Shape out_shape = ms == model_shapes.end() ? t.shape : ms->second;
        SHARDFLOW_REQUIRE_INPUT(numel(out_shape) == numel(t.shape), dir, ": tensor '", t.name, "' saved as ",
                                shape_to_string(t.shape), " cannot be written as model shape ",
                                shape_to_string(out_shape));
        // the gather path onto this rank alone: a replicated layout on the trivial mesh
        const DType dt = is_floating(t.dtype) ? DType::F32 : DType::I64;
        std::vector<unsigned char> data(static_cast<size_t>(numel(t.shape)) * dtype_size(dt));
        TensorState ts{t.name, Layout::replicated(t.shape, MeshShape()), dt, data.data()};
        RestoreOptions ro;
        ro.allow_extra = true;
        ro.in_place = true;  // a fresh buffer of this loop
        restore(MPI_COMM_SELF, dir, {ts}, ro);
        h5::Handle space;
        if (out_shape.empty()) {
          space = h5::Handle(CHECK_HDF5(H5Screate(H5S_SCALAR)), H5Sclose);
        } else {
          std::vector<hsize_t> dims(out_shape.begin(), out_shape.end());
          space = h5::Handle(CHECK_HDF5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)), H5Sclose);
        }
        h5::Handle ftype = h5::file_type(dt);
        h5::Handle ds(CHECK_HDF5(H5Dcreate2(out, ("/" + t.name).c_str(), ftype, space, H5P_DEFAULT, H5P_DEFAULT,
                                            H5P_DEFAULT)),
                      H5Dclose);
        if (!data.empty()) CHECK_HDF5(H5Dwrite(ds, ftype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()));
        h5::write_attr_string(ds, "saved_dtype", dtype_name(t.dtype));
        ds.close();
      }
      out.close();
      detail::fsync_path(tmp, false);
      // link, not rename: fails instead of replacing an output that appeared meanwhile
      fs::create_hard_link(tmp, out_h5, ec);
      SHARDFLOW_REQUIRE_INPUT(!ec, "ckpt consolidate: cannot create '", out_h5, "' from '", tmp, "': ", ec.message());
      fs::remove(tmp, ec);
    } catch (const std::exception& e) {
      err = e.what();
      std::error_code ec;
      if (made_tmp) fs::remove(tmp, ec);
    }
  }
  detail::agree(comm, err);
}

}  // namespace shardflow::ckpt
