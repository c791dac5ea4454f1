// prototype: rows->columns reshard on 2 ranks, pipelined chunks vs whole pack vs raw alltoallv
#include <mpi.h>
#include <immintrin.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <functional>
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
static void pack_rows(float* dst, const float* src, long rows, long cols, long c0, long w, bool nt) {
  for (long i = 0; i < rows; ++i) {
    const float* s = src + i * cols + c0; float* d = dst + i * w;
    if (nt && (w * 4) % 64 == 0 && ((uintptr_t)d & 63) == 0) {
      for (long k = 0; k < w; k += 16) _mm512_stream_ps(d + k, _mm512_loadu_ps(s + k));
    } else std::memcpy(d, s, w * 4);
  }
  if (nt) _mm_sfence();
}
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int me, n; MPI_Comm_rank(MPI_COMM_WORLD, &me); MPI_Comm_size(MPI_COMM_WORLD, &n);
  long bytes = atol(argv[1]); static bool demote = getenv("DEMOTE") != nullptr; long chunk = argc > 2 ? atol(argv[2]) : 262144; int slots = argc > 3 ? atoi(argv[3]) : 4;
  const long cols = 256, R = bytes / 4 / cols, h = R / 2, w = cols / 2;  // rank holds h rows; dest R x w
  const int peer = 1 - me;
  float* src = (float*)aligned_alloc(64, h * cols * 4);
  float* dst = (float*)aligned_alloc(64, R * w * 4);
  float* stage = (float*)aligned_alloc(64, h * w * 4);
  float* rs = (float*)aligned_alloc(64, 2 * h * w * 4); float* rr = (float*)aligned_alloc(64, 2 * h * w * 4);
  for (long i = 0; i < h * cols; ++i) src[i] = (float)((me * h) * cols + i);
  memset(dst, 0, R * w * 4); memset(stage, 0, h * w * 4); memset(rs, 1, 2*h*w*4); memset(rr, 0, 2*h*w*4);
  long crow = std::max(1L, chunk / (w * 4));  // rows per chunk
  std::vector<float*> ring(slots); for (auto& p : ring) { p = (float*)aligned_alloc(64, crow * w * 4); memset(p, 0, crow*w*4); }
  auto check = [&] { long bad = 0; for (long i = 0; i < R; ++i) for (long j = 0; j < w; j++) if (dst[i*w+j] != (float)(i*cols + me*w + j)) ++bad; return bad; };
  // variant 1: whole pack then one alltoallv
  int sc[2], sd[2], rc[2], rd[2];
  auto whole = [&] {
    pack_rows(stage, src, h, cols, peer * w, w, bytes >= (16L<<20));
    sc[me] = 0; sc[peer] = h * w; sd[0] = sd[1] = 0; rc[me] = 0; rc[peer] = h * w; rd[0] = rd[1] = peer * h * w;
    MPI_Request q; MPI_Ialltoallv(stage, sc, sd, MPI_FLOAT, dst, rc, rd, MPI_FLOAT, MPI_COMM_WORLD, &q);
    pack_rows(dst + me * h * w, src, h, cols, me * w, w, false);
    MPI_Wait(&q, MPI_STATUS_IGNORE);
  };
  // variant 2: pipelined chunks
  std::vector<MPI_Request> rq, sq;
  auto pipe = [&] {
    long nch = (h + crow - 1) / crow;
    rq.assign(nch, MPI_REQUEST_NULL); sq.assign(nch, MPI_REQUEST_NULL);
    for (long k = 0; k < nch; ++k) { long r0 = k * crow, rn = std::min(crow, h - r0);
      MPI_Irecv(dst + (peer * h + r0) * w, rn * w, MPI_FLOAT, peer, (int)k, MPI_COMM_WORLD, &rq[k]); }
    for (long k = 0; k < nch; ++k) {
      long r0 = k * crow, rn = std::min(crow, h - r0);
      if (k >= slots) MPI_Wait(&sq[k - slots], MPI_STATUS_IGNORE);
      float* b = ring[k % slots];
      if (demote) {  // fused: each row once
        float* kd = dst + (me * h + r0) * w;
        for (long i = 0; i < rn; ++i) { const float* s = src + (r0 + i) * cols;
          std::memcpy(b + i * w, s + peer * w, w * 4); std::memcpy(kd + i * w, s + me * w, w * 4); }
        MPI_Isend(b, rn * w, MPI_FLOAT, peer, (int)k, MPI_COMM_WORLD, &sq[k]);
      } else {
      pack_rows(b, src + r0 * cols, rn, cols, peer * w, w, false);
      MPI_Isend(b, rn * w, MPI_FLOAT, peer, (int)k, MPI_COMM_WORLD, &sq[k]);
      // the kept rows of this chunk while the peer copies
      pack_rows(dst + (me * h + r0) * w, src + r0 * cols, rn, cols, me * w, w, false);
      }
      int f; MPI_Testall((int)nch, rq.data(), &f, MPI_STATUSES_IGNORE);
    }
    MPI_Waitall((int)nch, rq.data(), MPI_STATUSES_IGNORE); MPI_Waitall((int)nch, sq.data(), MPI_STATUSES_IGNORE);
  };
  std::vector<MPI_Request> aq;
  auto rounds = [&] {
    long nch = (h + crow - 1) / crow;
    aq.assign(nch, MPI_REQUEST_NULL);
    for (long k = 0; k < nch; ++k) {
      long r0 = k * crow, rn = std::min(crow, h - r0);
      if (k >= slots) MPI_Wait(&aq[k - slots], MPI_STATUS_IGNORE);
      float* b = ring[k % slots];
      float* kd = dst + (me * h + r0) * w;
      for (long i = 0; i < rn; ++i) { const float* s = src + (r0 + i) * cols;
        std::memcpy(b + i * w, s + peer * w, w * 4); std::memcpy(kd + i * w, s + me * w, w * 4); }
      int c[2], d[2], rcn[2], rdp[2];
      c[me] = 0; c[peer] = rn * w; d[0] = d[1] = 0; rcn[me] = 0; rcn[peer] = rn * w; rdp[0] = rdp[1] = (peer * h + r0) * w;
      MPI_Ialltoallv(b, c, d, MPI_FLOAT, dst, rcn, rdp, MPI_FLOAT, MPI_COMM_WORLD, &aq[k]);
      if (k >= 1) { int f; MPI_Test(&aq[k - 1], &f, MPI_STATUS_IGNORE); }
    }
    MPI_Waitall((int)nch, aq.data(), MPI_STATUSES_IGNORE);
  };
  auto raw = [&] {
    int c2[2] = {(int)(h*w), (int)(h*w)}, d2[2] = {0, (int)(h*w)};
    MPI_Request q; MPI_Ialltoallv(rs, c2, d2, MPI_FLOAT, rr, c2, d2, MPI_FLOAT, MPI_COMM_WORLD, &q); MPI_Wait(&q, MPI_STATUS_IGNORE);
  };
  auto rawfresh = [&] { static float v = 0; std::fill(rs, rs + 2*h*w, v += 1); };
  int iters = std::max(3L, std::min(200L, (64L << 20) / bytes * 4));
  auto timeit = [&](auto f, auto pre) { double best = 1e9; for (int rep = 0; rep < 5; ++rep) { double t = 0;
      for (int i = 0; i < iters; ++i) { pre(); MPI_Barrier(MPI_COMM_WORLD); double t0 = now(); f(); double dt = now() - t0; double m; MPI_Allreduce(&dt, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD); t += m; }
      best = std::min(best, t / iters); } return best; };
  auto nop = [] {};
  double tr = timeit(raw, nop), trf = timeit(raw, rawfresh), tw = timeit(whole, nop); long bw = check(); memset(dst, 0, R*w*4);
  if (getenv("INTERLEAVE")) {
    std::function<void()> fp = getenv("ROUNDS") ? (std::function<void()>)rounds : (std::function<void()>)pipe;
    std::vector<double> a, b;
    for (int i = 0; i < 40; ++i) {
      MPI_Barrier(MPI_COMM_WORLD); double t0 = now(); fp(); double d1 = now() - t0;
      MPI_Barrier(MPI_COMM_WORLD); t0 = now(); raw(); double d2 = now() - t0;
      MPI_Allreduce(MPI_IN_PLACE, &d1, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      MPI_Allreduce(MPI_IN_PLACE, &d2, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      a.push_back(d1); b.push_back(d2);
    }
    std::sort(a.begin(), a.end()); std::sort(b.begin(), b.end());
    if (me == 0) printf("interleaved: pipe %.1f raw %.1f ratio %.2f\n", a[20]*1e6, b[20]*1e6, b[20]/a[20]);
  }
  double tp = timeit(getenv("ROUNDS") ? (std::function<void()>)rounds : (std::function<void()>)pipe, nop); long bp = check();
  if (me == 0) printf("%9ld chunk %7ld x%d  raw %8.1f us  rawfresh %8.1f  whole %8.1f (%.2f/%.2f)  pipe %8.1f (%.2f/%.2f)  bad %ld %ld\n", bytes, chunk, slots,
                      tr*1e6, trf*1e6, tw*1e6, tr/tw, trf/tw, tp*1e6, tr/tp, trf/tp, bw, bp);
  MPI_Finalize();
}
