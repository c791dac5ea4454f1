// bench_ckpt: checkpoint save / restore throughput against raw sequential POSIX write /
// read of the same bytes to the same file system in the same run, and the blocking time of
// an async save against a sync save (nccl-tests manner: every row checks its own restored
// data and reports #wrong).
//
//   mpiexec -n R bench_ckpt [--dir D] [--mib-per-rank N] [--tensors K] [--cols C] [--iters I]
//                           [--profile-in-place P] [--profile-resh-in-place P]
//
// (the last two repeat the in-place restore, same layout or column split, P times per
// iteration: something for `perf record` to sample)
// Each of K f32 tensors [rows, C] (C = 4096 by default: 16 KiB rows) is split along rows
// over a `data` mesh of R ranks, so every rank holds N MiB. raw write: each rank write()s N
// MiB to a new file of its own in 8 MiB chunks and fsyncs it and the directory (the
// durability a save gives its shard files); raw read reads it back; raw write-behind is raw
// write that starts each chunk's writeback at once (sync_file_range), as save does. save: Checkpointer::save (sync,
// including checksums, the shard files' metadata checksums, manifest, fsyncs and the
// atomic commit; with keep = 1, the previous checkpoint is retired in the background, and
// the bench waits for that outside the timed parts). metadata check: what restore/verify do per shard file before HDF5
// opens it (size + CRC-32C of every byte outside the raw data), timed alone. restore-same: the same layout;
// restore-reshard: the tensors split along columns instead (every rank reads the column tiles it needs from every saved
// shard: the bytes read are reported). Reads come from the page cache for raw and shardflow alike. Times are the best
// of I iterations, each the operation's wall time: from the first rank's start to the last rank's end (timed()).
#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "comm/control.hpp"
#include "ckpt/checkpoint.hpp"
#include "ckpt/checksum.hpp"

namespace {
using namespace shardflow;
namespace fs = std::filesystem;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

bool g_one_node = true;  // every rank on this node (set in main)

// The operation's wall time: from the first rank's start to the last rank's end. Each rank
// timing only its own part under-reports an operation without a synchronisation of its
// own when ranks share CPUs: with 4 ranks on 2 cores, two ranks may read their whole files
// while the other two wait for a CPU before they start their clocks, and the longest
// rank's own time was then 2-9 ms under the 23-27 ms the raw read took (session 25). On one
// node steady_clock is one clock for every rank; across nodes each rank times until a
// barrier after the last has finished. The barriers and reductions go through
// comm::Control, which waits politely when the node has more ranks than CPUs (as the
// library's own agreements do): a rank spinning in MPI_Barrier or a blocking MPI_Allreduce
// takes the CPU the others still time their work on (4 ranks on 2 cores: an uneven
// operation, such as the column-split restore, read 10-20 % slower through the spin).
template <class F>
double timed(F&& f) {
  const shardflow::comm::Control control(MPI_COMM_WORLD);
  control.max(0);
  const double t0 = now();
  f();
  const double t1 = now();
  if (g_one_node) return control.max(t1) - control.min(t0);
  control.max(0);
  return control.max(now() - t0);
}

void die(const char* what, const std::string& path) {
  std::fprintf(stderr, "bench_ckpt: %s '%s': %s\n", what, path.c_str(), std::strerror(errno));
  MPI_Abort(MPI_COMM_WORLD, 1);
}

// behind: each chunk's writeback to the device is started as soon as it is written
// (sync_file_range WRITE, as save does), so the final fsync has less left to wait for
void raw_write(const std::string& path, const std::vector<float>& data, bool behind) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die("cannot create", path);
  const char* p = reinterpret_cast<const char*>(data.data());
  size_t left = data.size() * sizeof(float);
  off_t at = 0;
  while (left) {
    ssize_t w = ::write(fd, p, std::min<size_t>(left, 8u << 20));
    if (w <= 0) die("write failed on", path);
    if (behind) ::sync_file_range(fd, at, w, SYNC_FILE_RANGE_WRITE);
    at += w;
    p += w;
    left -= static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) die("fsync failed on", path);
  ::close(fd);
  int dfd = ::open(fs::path(path).parent_path().c_str(), O_RDONLY | O_DIRECTORY);
  ::fsync(dfd);
  ::close(dfd);
}

void raw_read(const std::string& path, std::vector<float>& data) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) die("cannot open", path);
  char* p = reinterpret_cast<char*>(data.data());
  size_t left = data.size() * sizeof(float);
  while (left) {
    ssize_t r = ::read(fd, p, std::min<size_t>(left, 8u << 20));
    if (r <= 0) die("read failed on", path);
    p += r;
    left -= static_cast<size_t>(r);
  }
  ::close(fd);
}

float value(int t, std::int64_t row, std::int64_t col) { return static_cast<float>((row * 1031 + col * 7 + t * 13) % 65521); }

}  // namespace

int main(int argc, char** argv) {
  shardflow::comm::mpi_init(argc, argv);
  Kokkos::initialize(argc, argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  g_one_node = shardflow::comm::Control(MPI_COMM_WORLD).node_ranks() == size;
  std::string dir = (fs::temp_directory_path() / "shardflow_bench_ckpt").string();
  double mib = 64;
  int ntensors = 8, iters = 3, profile_in_place = 1, profile_resh = 1;
  long long ncols = 4096;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--dir") dir = argv[i + 1];
    else if (a == "--mib-per-rank") mib = std::atof(argv[i + 1]);
    else if (a == "--tensors") ntensors = std::atoi(argv[i + 1]);
    else if (a == "--iters") iters = std::atoi(argv[i + 1]);
    else if (a == "--cols") ncols = std::atoll(argv[i + 1]);
    else if (a == "--profile-in-place") profile_in_place = std::atoi(argv[i + 1]);  // repeat it (for perf record)
    else if (a == "--profile-resh-in-place") profile_resh = std::atoi(argv[i + 1]);  // the column split's, likewise
    else {
      if (rank == 0) std::fprintf(stderr, "bench_ckpt: unknown option '%s'\n", a.c_str());
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  int failures = 0;
  {
    const std::int64_t cols = ncols;
    const std::int64_t rows_per_rank =
        std::max<std::int64_t>(1, static_cast<std::int64_t>(mib * (1 << 20) / ntensors / (cols * 4)));
    const std::int64_t rows = rows_per_rank * size;
    MeshShape mesh({"data"}, {size});
    std::vector<Layout> by_rows, by_cols;
    std::vector<std::vector<float>> bufs, back;
    for (int t = 0; t < ntensors; ++t) {
      by_rows.emplace_back(Shape{rows, cols}, PartitionSpec{{"data"}, {}}, mesh);
      by_cols.emplace_back(Shape{rows, cols}, PartitionSpec{{}, {"data"}}, mesh);
      Box b = by_rows.back().box(rank);
      std::vector<float> v(static_cast<size_t>(b.numel()));
      for (std::int64_t r = 0; r < b.extent[0]; ++r)
        for (std::int64_t c = 0; c < cols; ++c) v[static_cast<size_t>(r * cols + c)] = value(t, b.offset[0] + r, c);
      bufs.push_back(std::move(v));
    }
    auto states = [&](std::vector<Layout>& lay, std::vector<std::vector<float>>& data) {
      std::vector<ckpt::TensorState> ts;
      for (int t = 0; t < ntensors; ++t)
        ts.push_back(ckpt::TensorState{"t" + std::to_string(t), lay[static_cast<size_t>(t)], DType::F32,
                                       data[static_cast<size_t>(t)].data()});
      return ts;
    };
    auto check = [&](std::vector<Layout>& lay, std::vector<std::vector<float>>& data) {
      long long wrong = 0;
      for (int t = 0; t < ntensors; ++t) {
        Box b = lay[static_cast<size_t>(t)].box(rank);
        for (std::int64_t r = 0; r < b.extent[0]; ++r)
          for (std::int64_t c = 0; c < b.extent[1]; ++c)
            wrong += data[static_cast<size_t>(t)][static_cast<size_t>(r * b.extent[1] + c)] !=
                     value(t, b.offset[0] + r, b.offset[1] + c);
      }
      long long all = 0;
      MPI_Allreduce(&wrong, &all, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
      return all;
    };
    const double bytes_all = static_cast<double>(rows) * cols * 4 * ntensors;
    if (rank == 0) {
      fs::remove_all(dir);
      fs::create_directories(dir);
      std::printf("# bench_ckpt: %d ranks, %d tensors of [%lld, %lld] f32, %.1f MiB per rank, %.1f MiB total, dir %s\n",
                  size, ntensors, static_cast<long long>(rows), static_cast<long long>(cols),
                  bytes_all / size / (1 << 20), bytes_all / (1 << 20), dir.c_str());
    }
    MPI_Barrier(MPI_COMM_WORLD);
    std::vector<float> flat;
    for (auto& v : bufs) flat.insert(flat.end(), v.begin(), v.end());
    std::vector<float> flat_back(flat.size());
    const std::string raw = (fs::path(dir) / ("raw-" + std::to_string(rank) + ".bin")).string();
    double t_rw = 1e30, t_rwb = 1e30, t_rr = 1e30, t_save = 1e30, t_same = 1e30, t_resh = 1e30, t_async = 1e30,
           t_wait = 1e30;
    double t_same_ip = 1e30, t_resh_ip = 1e30, t_shard_read = 1e30;
    double t_meta = 1e30;
    long long meta_bytes = 0, resh_read = 0;
    long long wrong = 0;
    std::int64_t step = 0;
    for (int it = 0; it < iters; ++it) {
      // every raw file is new, as save's are (each rank removes its own outside the timing)
      t_rw = std::min(t_rw, timed([&] { raw_write(raw, flat, false); }));
      t_rr = std::min(t_rr, timed([&] { raw_read(raw, flat_back); }));
      fs::remove(raw);
      MPI_Barrier(MPI_COMM_WORLD);
      t_rwb = std::min(t_rwb, timed([&] { raw_write(raw, flat, true); }));
      fs::remove(raw);
      MPI_Barrier(MPI_COMM_WORLD);
      const std::string root = (fs::path(dir) / "ckpt").string();
      ckpt::SaveOptions o;
      o.keep = 1;
      ckpt::Checkpointer ck(MPI_COMM_WORLD, root, o);
      ckpt::Metadata m;
      m.step = step++;
      std::string saved_dir;
      t_save = std::min(t_save, timed([&] { saved_dir = ck.save(states(by_rows, bufs), m); }));
      ck.wait();  // retention (keep = 1) deletes the previous checkpoint in the background: not during the reads
      {  // the metadata check of this rank's shard file, alone
        const ckpt::Manifest man = ckpt::read_manifest(saved_dir);
        const std::string mine = "shard-" + std::to_string(rank) + ".h5";
        const ckpt::FileRecord* f = man.find_file(mine);
        long long mb = 0;
        t_meta = std::min(t_meta, timed([&] {
          if (!f) return;
          const auto ranges = man.data_ranges(mine);
          const std::uint32_t c = ckpt::file_crc32c_outside((fs::path(saved_dir) / mine).string(), f->size, ranges);
          if (c != f->meta_crc32c) die("metadata checksum differs for", mine);
          mb = f->size;
          for (const auto& r : ranges) mb -= r.length;
        }));
        MPI_Allreduce(&mb, &meta_bytes, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
        // the shard file itself read raw (8 MiB reads): the file as save left it in the page
        // cache, apart from what restore does with it
        std::vector<float> whole(static_cast<size_t>(f ? f->size / 4 : 0));
        t_shard_read = std::min(t_shard_read, timed([&] {
          if (f) raw_read((fs::path(saved_dir) / mine).string(), whole);
        }));
      }
      back.assign(static_cast<size_t>(ntensors), {});
      for (int t = 0; t < ntensors; ++t) back[static_cast<size_t>(t)].assign(bufs[static_cast<size_t>(t)].size(), -1.f);
      t_same = std::min(t_same, timed([&] { ckpt::restore(MPI_COMM_WORLD, root, states(by_rows, back)); }));
      wrong += check(by_rows, back);
      {  // in place (what train --resume does): no staging copy
        ckpt::RestoreOptions ip;
        ip.in_place = true;
        for (auto& v : back) std::fill(v.begin(), v.end(), -1.f);
        for (int k = 0; k < std::max(1, profile_in_place); ++k)
          t_same_ip = std::min(t_same_ip, timed([&] { ckpt::restore(MPI_COMM_WORLD, root, states(by_rows, back), ip); }));
        wrong += check(by_rows, back);
        for (int t = 0; t < ntensors; ++t)
          back[static_cast<size_t>(t)].assign(static_cast<size_t>(by_cols[static_cast<size_t>(t)].local_numel(rank)), -1.f);
        for (int k = 0; k < std::max(1, profile_resh); ++k)
          t_resh_ip = std::min(t_resh_ip, timed([&] { ckpt::restore(MPI_COMM_WORLD, root, states(by_cols, back), ip); }));
        wrong += check(by_cols, back);
      }
      for (int t = 0; t < ntensors; ++t)
        back[static_cast<size_t>(t)].assign(static_cast<size_t>(by_cols[static_cast<size_t>(t)].local_numel(rank)), -1.f);
      ckpt::RestoreStats rst;
      ckpt::RestoreOptions ropt;
      ropt.stats = &rst;
      t_resh = std::min(t_resh, timed([&] { ckpt::restore(MPI_COMM_WORLD, root, states(by_cols, back), ropt); }));
      long long rd = rst.bytes_read;
      MPI_Allreduce(&rd, &resh_read, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
      wrong += check(by_cols, back);
      ckpt::SaveOptions oa = o;
      oa.async = true;
      ckpt::Checkpointer cka(MPI_COMM_WORLD, root, oa);
      m.step = step++;
      t_async = std::min(t_async, timed([&] { cka.save(states(by_rows, bufs), m); }));
      t_wait = std::min(t_wait, timed([&] { cka.wait(); }));
      cka.wait();
    }
    if (rank == 0) {
      auto gbs = [&](double t) { return bytes_all / t / 1e9; };
      std::printf("# %-22s %10s %9s %8s\n", "operation", "time_ms", "GB/s", "ratio");
      std::printf("  %-22s %10.1f %9.3f %8s\n", "raw write+fsync", t_rw * 1e3, gbs(t_rw), "1.00");
      std::printf("  %-22s %10.1f %9.3f %8.2f   (each 8 MiB's writeback started at once, as save does)\n",
                  "raw write-behind+fsync", t_rwb * 1e3, gbs(t_rwb), t_rw / t_rwb);
      std::printf("  %-22s %10.1f %9.3f %8.2f   (%.2f of raw write-behind+fsync)\n", "save (sync)", t_save * 1e3,
                  gbs(t_save), t_rw / t_save, t_rwb / t_save);
      std::printf("  %-22s %10.2f %9s %8.3f   (of save time; %lld metadata bytes hashed in all)\n", "metadata check",
                  t_meta * 1e3, "-", t_meta / t_save, meta_bytes);
      std::printf("  %-22s %10.1f %9.3f %8s\n", "raw read", t_rr * 1e3, gbs(t_rr), "1.00");
      std::printf("  %-22s %10.1f %9.3f %8.2f   (the shard file read raw, metadata included)\n", "raw read, shard file",
                  t_shard_read * 1e3, gbs(t_shard_read), t_rr / t_shard_read);
      std::printf("  %-22s %10.1f %9.3f %8.2f   (in place: what train --resume, eval, ckpt reshard do)\n",
                  "restore same, in place", t_same_ip * 1e3, gbs(t_same_ip), t_rr / t_same_ip);
      std::printf("  %-22s %10.1f %9.3f %8.2f   (column split: each rank reads 1/%d of every shard)\n",
                  "restore resh., in place", t_resh_ip * 1e3, gbs(t_resh_ip), t_rr / t_resh_ip, size);
      std::printf("  %-22s %10.1f %9.3f %8.2f   (staged: caller's buffers untouched on a failure; one more copy)\n",
                  "restore same, staged", t_same * 1e3, gbs(t_same), t_rr / t_same);
      std::printf("  %-22s %10.1f %9.3f %8.2f   (bytes read by all ranks / tensor bytes: %.3f; whole rows: %d)\n",
                  "restore resh., staged", t_resh * 1e3, gbs(t_resh), t_rr / t_resh,
                  static_cast<double>(resh_read) / bytes_all, size);
      std::printf("  %-22s %10.1f %9s %8.2f   (blocking time / sync save time)\n", "async save: blocking", t_async * 1e3,
                  "-", t_async / t_save);
      std::printf("  %-22s %10.1f %9s %8s\n", "async save: wait()", t_wait * 1e3, "-", "-");
      // CRC-32C against the memory bandwidth: one core hashing a 64 MiB buffer against the
      // same core copying it (best of 5 each); the result checked against the portable CRC
      {
        const size_t n = size_t{64} << 20;
        std::vector<unsigned char> src(n), dst(n);
        for (size_t i = 0; i < n; ++i) src[i] = static_cast<unsigned char>((i * 2654435761u) >> 13);
        double t_copy = 1e30, t_crc = 1e30;
        std::uint32_t c = 0;
        for (int k = 0; k < 5; ++k) {  // rank 0 alone: no barrier (timed() has one)
          double t0 = now();
          std::memcpy(dst.data(), src.data(), n);
          t_copy = std::min(t_copy, now() - t0);
          t0 = now();
          c = ckpt::crc32c(src.data(), n);
          t_crc = std::min(t_crc, now() - t0);
        }
        if (dst[n / 3] != src[n / 3] || c != ckpt::crc32c_portable(src.data(), n)) ++wrong;
        const double copy_gbs = static_cast<double>(n) / t_copy / 1e9, crc_gbs = static_cast<double>(n) / t_crc / 1e9;
        std::printf("  %-22s %10.2f %9.3f %8s   (64 MiB, one core: the memory bandwidth the CRC is held to)\n",
                    "memcpy", t_copy * 1e3, copy_gbs, "1.00");
        std::printf("  %-22s %10.2f %9.3f %8.2f   (the same bytes; ratio = CRC GB/s / memcpy GB/s)\n", "crc32c",
                    t_crc * 1e3, crc_gbs, crc_gbs / copy_gbs);
        // in cache, as restore runs it: 256 KiB (one tile) hashed right after it was copied
        const size_t m = size_t{256} << 10;
        double t_copy_c = 1e30, t_crc_c = 1e30;
        for (int k = 0; k < 200; ++k) {
          double t0 = now();
          std::memcpy(dst.data(), src.data() + (k % 2) * m, m);
          t_copy_c = std::min(t_copy_c, now() - t0);
          t0 = now();
          c = ckpt::crc32c(dst.data(), m);
          t_crc_c = std::min(t_crc_c, now() - t0);
        }
        if (c != ckpt::crc32c_portable(dst.data(), m)) ++wrong;
        const double copy_c = static_cast<double>(m) / t_copy_c / 1e9, crc_c = static_cast<double>(m) / t_crc_c / 1e9;
        std::printf("  %-22s %10.3f %9.3f %8s   (256 KiB in cache, one core)\n", "memcpy, in cache", t_copy_c * 1e3,
                    copy_c, "1.00");
        std::printf("  %-22s %10.3f %9.3f %8.2f   (the copied 256 KiB, in cache: %s)\n", "crc32c, in cache",
                    t_crc_c * 1e3, crc_c, crc_c / copy_c, ckpt::crc32c_implementation());
      }
      std::printf("# #wrong %lld\n", wrong);
      fs::remove_all(dir);
    }
    failures = wrong != 0;
  }
  Kokkos::finalize();
  MPI_Finalize();
  return failures;
}
