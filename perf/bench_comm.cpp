// bench_comm: each collective through shardflow's communicator (a persistent Collective:
// start + wait) against the raw MPI_I* call + MPI_Wait on the same buffers, in the same
// run, sizes 1 KiB ... 64 MiB; and reshard (pack + all_to_allv + unpack) against a raw
// MPI_Alltoallv of the same bytes; "reshard/node" the same reshard with the tensor's source
// and destination in comm::NodeBuffers (a peer copies through a mapping of them), against
// the same raw peer on plain memory. Every run checks its own results (#wrong).
//
//   mpiexec -n 2 build/perf/bench_comm [--min-bytes B] [--max-bytes B] [--rounds R]
//                                      [--only collectives|reshard]
//
// size: nccl-tests convention (all_reduce / broadcast: the buffer; all_gather: the
// gathered output; reduce_scatter / all_to_all: the input). algbw = size / time; busbw =
// algbw x (all_reduce 2(n-1)/n; all_gather, reduce_scatter, all_to_all (n-1)/n; broadcast
// 1; reshard (n-1)/n). ratio = raw time / framework time (goal >= 0.97 at >= 1 MiB).
// Times are medians over iterations x R of per-iteration times (both sides interleaved).
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "comm/comm_set.hpp"
#include "comm/control.hpp"
#include "comm/node_buffer.hpp"
#include "shard/reshard.hpp"

using namespace shardflow;
using namespace shardflow::comm;

namespace {

int g_rank = 0, g_size = 1;
long g_wrong = 0;  // over every row, all ranks

float value(int rank, std::size_t i) { return static_cast<float>((rank + 1) * static_cast<int>(i % 17)); }

struct Result {
  double fw_s = 1e30, raw_s = 1e30;
  long wrong = 0;
};

/// Median seconds per iteration of fw() and raw(): the two alternate iteration by
/// iteration (which goes first alternates too), each sample is the slowest rank's time
/// after a barrier, so load from other processes on a shared machine hits both alike.
/// prep_raw() runs untimed before each raw sample.
template <class F, class G, class P>
void time_pair(Result& res, int iters, int rounds, F&& fw, G&& raw, P&& prep_raw) {
  fw();
  prep_raw();
  raw();  // warm up both
  const int samples = iters * rounds;
  std::vector<double> tf(static_cast<std::size_t>(samples)), tr(tf.size());
  auto timed = [](auto&& f) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    f();
    return MPI_Wtime() - t0;
  };
  for (int i = 0; i < samples; ++i) {
    const auto ui = static_cast<std::size_t>(i);
    if (i % 2 == 0) {
      tf[ui] = timed(fw);
      prep_raw();
      tr[ui] = timed(raw);
    } else {
      prep_raw();
      tr[ui] = timed(raw);
      tf[ui] = timed(fw);
    }
  }
  MPI_Allreduce(MPI_IN_PLACE, tf.data(), samples, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, tr.data(), samples, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  auto median = [](std::vector<double>& v) {
    std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
    return v[v.size() / 2];
  };
  res.fw_s = median(tf);
  res.raw_s = median(tr);
}

template <class F, class G>
void time_pair(Result& res, int iters, int rounds, F&& fw, G&& raw) {
  time_pair(res, iters, rounds, fw, raw, [] {});
}

void print_row(const char* op, std::size_t bytes, double factor, const Result& r) {
  long wrong = r.wrong;
  MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  g_wrong += wrong;
  if (g_rank != 0) return;
  const double fw_alg = static_cast<double>(bytes) / r.fw_s / 1e9, raw_alg = static_cast<double>(bytes) / r.raw_s / 1e9;
  std::printf("%-15s %10zu %10.1f %8.2f %8.2f %10.1f %8.2f %8.2f %6.3f %7ld\n", op, bytes, r.fw_s * 1e6, fw_alg,
              fw_alg * factor, r.raw_s * 1e6, raw_alg, raw_alg * factor, r.raw_s / r.fw_s, wrong);
  std::fflush(stdout);
}

int iterations(std::size_t bytes) {
  const std::size_t target = std::size_t(64) << 20;  // ~64 MiB moved per round
  // at least 10 samples per round: a 64 MiB collective takes tens of ms and 3 samples left
  // single outliers in the median
  return static_cast<int>(std::clamp<std::size_t>(target / std::max<std::size_t>(bytes, 1), 10, 100));
}

long count_wrong(const std::vector<float>& got, const std::vector<float>& want) {
  long w = 0;
  for (std::size_t i = 0; i < got.size(); ++i) w += got[i] != want[i];
  return w;
}

void bench_collectives(CommSet& comms, std::size_t bytes, int rounds) {
  Communicator& c = comms.world();
  MPI_Comm mc = c.mpi_comm();
  const int n = c.size(), me = c.rank();
  const auto un = static_cast<std::size_t>(n);
  const double nn = static_cast<double>(n);
  const int iters = iterations(bytes);
  const std::size_t elems = bytes / sizeof(float);
  if (elems < un || elems % un != 0) return;
  const std::size_t block = elems / un;

  {  // all_reduce
    std::vector<float> send(elems), recv(elems), want(elems);
    for (std::size_t i = 0; i < elems; ++i) {
      send[i] = value(me, i);
      want[i] = static_cast<float>(n * (n + 1) / 2 * static_cast<int>(i % 17));
    }
    Collective op(c, CollectivePlan::all_reduce(DType::F32, elems, ReduceOp::Sum), send.data(), recv.data());
    Result r;
    time_pair(
        r, iters, rounds, [&] { op.start().wait(); },
        [&] {
          MPI_Request q;
          MPI_Iallreduce(send.data(), recv.data(), static_cast<int>(elems), MPI_FLOAT, MPI_SUM, mc, &q);
          MPI_Wait(&q, MPI_STATUS_IGNORE);
        });
    r.wrong += count_wrong(recv, want);
    std::fill(recv.begin(), recv.end(), 0.f);
    op.start().wait();
    r.wrong += count_wrong(recv, want);
    print_row("all_reduce", bytes, 2.0 * (nn - 1) / nn, r);
  }
  {  // all_gather (size = gathered output)
    std::vector<float> send(block), recv(elems), want(elems);
    for (std::size_t i = 0; i < block; ++i) send[i] = value(me, i);
    for (int q = 0; q < n; ++q)
      for (std::size_t i = 0; i < block; ++i) want[static_cast<std::size_t>(q) * block + i] = value(q, i);
    Collective op(c, CollectivePlan::all_gather(DType::F32, block), send.data(), recv.data());
    Result r;
    time_pair(
        r, iters, rounds, [&] { op.start().wait(); },
        [&] {
          MPI_Request q;
          MPI_Iallgather(send.data(), static_cast<int>(block), MPI_FLOAT, recv.data(), static_cast<int>(block),
                         MPI_FLOAT, mc, &q);
          MPI_Wait(&q, MPI_STATUS_IGNORE);
        });
    r.wrong += count_wrong(recv, want);
    std::fill(recv.begin(), recv.end(), 0.f);
    op.start().wait();
    r.wrong += count_wrong(recv, want);
    print_row("all_gather", bytes, (nn - 1) / nn, r);
  }
  {  // reduce_scatter (size = input)
    std::vector<float> send(elems), recv(block), want(block);
    for (std::size_t i = 0; i < elems; ++i) send[i] = value(me, i);
    for (std::size_t i = 0; i < block; ++i)
      want[i] = static_cast<float>(n * (n + 1) / 2 * static_cast<int>((static_cast<std::size_t>(me) * block + i) % 17));
    Collective op(c, CollectivePlan::reduce_scatter(DType::F32, block, ReduceOp::Sum), send.data(), recv.data());
    Result r;
    time_pair(
        r, iters, rounds, [&] { op.start().wait(); },
        [&] {
          MPI_Request q;
          MPI_Ireduce_scatter_block(send.data(), recv.data(), static_cast<int>(block), MPI_FLOAT, MPI_SUM, mc, &q);
          MPI_Wait(&q, MPI_STATUS_IGNORE);
        });
    r.wrong += count_wrong(recv, want);
    std::fill(recv.begin(), recv.end(), 0.f);
    op.start().wait();
    r.wrong += count_wrong(recv, want);
    print_row("reduce_scatter", bytes, (nn - 1) / nn, r);
  }
  {  // all_to_all (size = input)
    std::vector<float> send(elems), recv(elems), want(elems);
    for (std::size_t i = 0; i < elems; ++i) send[i] = value(me, i);
    for (int q = 0; q < n; ++q)
      for (std::size_t i = 0; i < block; ++i)
        want[static_cast<std::size_t>(q) * block + i] = value(q, static_cast<std::size_t>(me) * block + i);
    Collective op(c, CollectivePlan::all_to_all(DType::F32, block), send.data(), recv.data());
    Result r;
    time_pair(
        r, iters, rounds, [&] { op.start().wait(); },
        [&] {
          MPI_Request q;
          MPI_Ialltoall(send.data(), static_cast<int>(block), MPI_FLOAT, recv.data(), static_cast<int>(block),
                        MPI_FLOAT, mc, &q);
          MPI_Wait(&q, MPI_STATUS_IGNORE);
        });
    r.wrong += count_wrong(recv, want);
    std::fill(recv.begin(), recv.end(), 0.f);
    op.start().wait();
    r.wrong += count_wrong(recv, want);
    print_row("all_to_all", bytes, (nn - 1) / nn, r);
  }
  {  // broadcast from rank 0
    std::vector<float> send(elems), recv(elems), want(elems);
    for (std::size_t i = 0; i < elems; ++i) {
      send[i] = value(me, i);
      want[i] = value(0, i);
    }
    Collective op(c, CollectivePlan::broadcast(DType::F32, elems, 0), send.data(), recv.data());
    Result r;
    time_pair(
        r, iters, rounds, [&] { op.start().wait(); },
        [&] {
          MPI_Request q;
          if (me == 0) std::memcpy(recv.data(), send.data(), bytes);
          MPI_Ibcast(recv.data(), static_cast<int>(elems), MPI_FLOAT, 0, mc, &q);
          MPI_Wait(&q, MPI_STATUS_IGNORE);
        });
    r.wrong += count_wrong(recv, want);
    std::fill(recv.begin(), recv.end(), 0.f);
    op.start().wait();
    r.wrong += count_wrong(recv, want);
    print_row("broadcast", bytes, 1.0, r);
  }
}

/// Reshard a [rows, 256] f32 tensor from rows split over the mesh to columns split
/// ("reshard"), and back ("reshard/back": the pieces then leave the source as contiguous rows
/// and land strided in the destination); the raw peer moves the same bytes with
/// MPI_Alltoallv on already-packed buffers (no pack/unpack).
void bench_reshard(CommSet& comms, std::size_t bytes, int rounds) {
  const Mesh& mesh = comms.mesh();
  const int n = mesh.size(), me = mesh.rank();
  const std::int64_t cols = 256;
  const std::int64_t rows = static_cast<std::int64_t>(bytes / sizeof(float)) / cols;
  if (rows < n) return;
  const Shape shape{rows, cols};
  Layout by_rows(shape, PartitionSpec{{"data"}, {}}, mesh.shape());
  Layout by_cols(shape, PartitionSpec{{}, {"data"}}, mesh.shape());
  for (const bool back : {false, true}) {
    const Layout& from = back ? by_cols : by_rows;
    const Layout& to = back ? by_rows : by_cols;
    shard::Resharder<float> op(comms.world(), shard::ReshardPlan(from, to, me));
    const Box fb = from.box(me), tb = to.box(me);
    std::vector<float> src(static_cast<std::size_t>(fb.numel())), dst(static_cast<std::size_t>(tb.numel())),
        want(dst.size());
    for (std::int64_t i = 0; i < fb.extent[0]; ++i)
      for (std::int64_t j = 0; j < fb.extent[1]; ++j)
        src[static_cast<std::size_t>(i * fb.extent[1] + j)] =
            static_cast<float>((fb.offset[0] + i) * cols + fb.offset[1] + j);
    for (std::int64_t i = 0; i < tb.extent[0]; ++i)
      for (std::int64_t j = 0; j < tb.extent[1]; ++j)
        want[static_cast<std::size_t>(i * tb.extent[1] + j)] =
            static_cast<float>((tb.offset[0] + i) * cols + tb.offset[1] + j);
    const auto plan = op.plan().exchange_plan(DType::F32);
    std::vector<int> sc, sd, rc, rd;
    for (int q = 0; q < n; ++q) {
      const auto uq = static_cast<std::size_t>(q);
      sc.push_back(static_cast<int>(plan.send_counts[uq]));
      sd.push_back(static_cast<int>(plan.send_displs[uq]));
      rc.push_back(static_cast<int>(plan.recv_counts[uq]));
      rd.push_back(static_cast<int>(plan.recv_displs[uq]));
    }
    // the raw peer moves every piece, the kept one included, through MPI_Alltoallv
    const int keep = static_cast<int>(op.plan().local_piece().numel());
    const auto ume = static_cast<std::size_t>(me);
    sc[ume] = rc[ume] = keep;
    for (int q = me + 1; q < n; ++q) {
      sd[static_cast<std::size_t>(q)] += keep;
      rd[static_cast<std::size_t>(q)] += keep;
    }
    std::vector<float> rsend(static_cast<std::size_t>(op.plan().send_elems() + keep)),
        rrecv(static_cast<std::size_t>(op.plan().recv_elems() + keep));
    using CV = shard::Resharder<float>::ConstView;
    using V = shard::Resharder<float>::View;
    auto fw = [&] { op.run(CV(src.data(), src.size()), V(dst.data(), dst.size())); };
    auto raw = [&] {
      MPI_Request q;
      MPI_Ialltoallv(rsend.data(), sc.data(), sd.data(), MPI_FLOAT, rrecv.data(), rc.data(), rd.data(), MPI_FLOAT,
                     comms.world().mpi_comm(), &q);
      MPI_Wait(&q, MPI_STATUS_IGNORE);
    };
    const double nn = static_cast<double>(n);
    Result r;
    time_pair(r, iterations(bytes), rounds, fw, raw);
    r.wrong += count_wrong(dst, want);
    print_row(back ? "reshard/back" : "reshard", bytes, (nn - 1) / nn, r);
    {  // the same with source and destination in node buffers: a peer copies through a mapping
      comm::NodeBuffer nsrc(src.size() * sizeof(float)), ndst(dst.size() * sizeof(float));
      std::copy(src.begin(), src.end(), nsrc.as<float>());
      const CV nsv(nsrc.as<float>(), src.size());
      const V ndv(ndst.as<float>(), dst.size());
      // every piece copied by a peer (Auto decides on the layouts alone and, below 16 MiB,
      // moves pieces read by their receivers in rounds)
      shard::Resharder<float> nop(
          comms.world(), shard::ReshardPlan(from, to, me), Kokkos::DefaultHostExecutionSpace(),
          comms.world().peer_copies() ? shard::ReshardPath::PeerCopy : shard::ReshardPath::Auto);
      Result rn;
      time_pair(
          rn, iterations(bytes), rounds, [&] { nop.run(nsv, ndv); }, raw);
      const std::vector<float> got(ndst.as<float>(), ndst.as<float>() + dst.size());
      rn.wrong += count_wrong(got, want);
      print_row(back ? "reshard/node/back" : "reshard/node", bytes, (nn - 1) / nn, rn);
    }
    if (back) continue;
    // The same, with the raw peer's send buffer written (untimed) before each of its samples,
    // as a program that packed its bytes would have just done: the peer then reads lines
    // another core holds modified, as the reshard's exchange does after its pack.
    float v = 0.f;
    Result rf;
    time_pair(rf, iterations(bytes), rounds, fw, raw, [&] { std::fill(rsend.begin(), rsend.end(), v += 1.f); });
    rf.wrong += count_wrong(dst, want);
    print_row("reshard/fresh", bytes, (nn - 1) / nn, rf);
  }
}

}  // namespace

int main(int argc, char** argv) {
  shardflow::comm::mpi_init(argc, argv);
  Kokkos::initialize(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  std::size_t min_bytes = 1024, max_bytes = std::size_t(64) << 20;
  int rounds = 5;
  std::string only;  // "collectives" or "reshard": run one group
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--min-bytes")
      min_bytes = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--max-bytes")
      max_bytes = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--rounds")
      rounds = std::atoi(argv[i + 1]);
    else if (a == "--only")
      only = argv[i + 1];
  }
  {
    Mesh mesh(MeshShape({"data"}, {g_size}));
    CommSet comms(mesh, Backend::Mpi);
    if (g_rank == 0) {
      std::printf("# bench_comm: %d ranks, f32, median of per-iteration times (%d rounds); backend mpi vs raw MPI\n",
                  g_size, rounds);
      std::printf("%-15s %10s %10s %8s %8s %10s %8s %8s %6s %7s\n", "# op", "size(B)", "fw(us)", "algbw", "busbw",
                  "raw(us)", "algbw", "busbw", "ratio", "#wrong");
    }
    if (only.empty() || only == "collectives")
      for (std::size_t b = min_bytes; b <= max_bytes; b *= 4) bench_collectives(comms, b, rounds);
    if (only.empty() || only == "reshard")
      for (std::size_t b = min_bytes; b <= max_bytes; b *= 4) bench_reshard(comms, b, rounds);
  }
  if (g_rank == 0) std::printf("# total #wrong: %ld\n", g_wrong);
  Kokkos::finalize();
  MPI_Finalize();
  return g_wrong == 0 ? 0 : 1;
}
