// 2 ranks: 64 MiB rows->columns reshard copies. (a) current: walk (kept NT + sent into private slot) + writev slot->peer dst.
// (b) shared slot: walk (kept NT + sent into my shared slot[k%2]) ; flag; peer copies from it into its dst with NT.
// raw: memcpy + writev contiguous.
#include <mpi.h>
#include <sys/uio.h>
#include <unistd.h>
#include <immintrin.h>
#include <atomic>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <cstdlib>
#include <vector>
__attribute__((target("avx2"))) static inline void cp512(char* d, const char* s) {
  for (int k = 0; k < 512; k += 32) _mm256_storeu_si256((__m256i*)(d + k), _mm256_loadu_si256((const __m256i*)(s + k)));
}
__attribute__((target("avx2"))) static inline void nt512(char* d, const char* s) {  // d 64-aligned
  for (int k = 0; k < 512; k += 32) _mm256_stream_si256((__m256i*)(d + k), _mm256_loadu_si256((const __m256i*)(s + k)));
}
__attribute__((target("avx2"))) static inline void ntcopy(char* d, const char* s, size_t n) {
  for (size_t k = 0; k < n; k += 32) _mm256_stream_si256((__m256i*)(d + k), _mm256_loadu_si256((const __m256i*)(s + k)));
}
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int me; MPI_Comm_rank(MPI_COMM_WORLD, &me); int peer = 1 - me;
  const size_t R = argc > 1 ? atol(argv[1]) : 32768, row = 1024, half = 512, slab = 256;
  const size_t slotb = slab * half;
  std::vector<float> vsrc(R*row/4), vdst(R*row/4), vrs(R*row/4), vrr(R*row/4), vwant(R*row/4);
  const bool V = getenv("VEC");
  char* src = (char*)aligned_alloc(4096, R * row); char* dst = (char*)aligned_alloc(4096, 2 * R * half);
  char* rsend = V ? (char*)vrs.data() : (char*)aligned_alloc(4096, R * row); char* rrecv = V ? (char*)vrr.data() : (char*)aligned_alloc(4096, R * row);
  memset(src, 1, R * row); memset(dst, 2, 2 * R * half); memset(rsend, 3, R * row); memset(rrecv, 4, R * row);
  std::vector<char> slot(slotb);
  // shared: per rank 2 slots + counters
  MPI_Comm node; MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  const size_t segb = 2 * slotb + 4096 + 2 * R * half;
  char* mine; MPI_Win win; MPI_Win_allocate_shared(segb, 4096, MPI_INFO_NULL, node, &mine, &win);
  MPI_Aint sz; int du; char* theirs; MPI_Win_shared_query(win, peer, &sz, &du, &theirs);
  // counters at offset 2*slotb: [0] = slabs I have published, [16] = slabs of the peer's I consumed (written by me into MY segment)
  auto ctr = [&](char* seg, int i) { return reinterpret_cast<std::atomic<long>*>(seg + 2 * slotb + 64 * i); };
  long pid = getpid(), ppid; uintptr_t a = (uintptr_t)dst, pa, ar = (uintptr_t)rrecv, par;
  MPI_Sendrecv(&pid, 1, MPI_LONG, peer, 0, &ppid, 1, MPI_LONG, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  MPI_Sendrecv(&a, 8, MPI_BYTE, peer, 1, &pa, 8, MPI_BYTE, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  MPI_Sendrecv(&ar, 8, MPI_BYTE, peer, 1, &par, 8, MPI_BYTE, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  const char* names[] = {"raw memcpy+writev", "walk NT kept + writev", "walk NT kept + shared slot NT", "shared slot plain", "MPI_Alltoallv", "one pass into shared dst"};
  std::vector<std::vector<double>> T(6);
  std::vector<int> sc{int(R*half),int(R*half)}, sd{0,int(R*half)};
  long base = 0;
  const int X = argc > 2 ? atoi(argv[2]) : 1;
  for (int it = 0; it < 60; ++it)
  for (int mm = 0; mm < 2; ++mm) { const int m = ((mm + it) % 2) ? 4 : X; auto& t = T[m]; {
      ctr(mine, 0)->store(0); ctr(mine, 1)->store(0);
      MPI_Barrier(MPI_COMM_WORLD);
      auto t0 = std::chrono::steady_clock::now();
      char* kept = dst + me * R * half;
      if (m == 5) {  // destination in a node-shared segment: one pass, the sent half straight into the peer's
        char* mydst = mine + 2 * slotb + 4096; char* pdst = theirs + 2 * slotb + 4096;
        for (size_t r = 0; r < R; ++r) { nt512(mydst + (me * R + r) * half, src + r * row); nt512(pdst + (me * R + r) * half, src + r * row + half); }
        _mm_sfence();
      } else if (m == 4) {
        static std::vector<int> fc{int(R*half/4),int(R*half/4)}, fd{0,int(R*half/4)};
        if (getenv("IA")) { MPI_Request q; MPI_Ialltoallv(rsend, fc.data(), fd.data(), MPI_FLOAT, rrecv, fc.data(), fd.data(), MPI_FLOAT, MPI_COMM_WORLD, &q); MPI_Wait(&q, MPI_STATUS_IGNORE); }
        else MPI_Alltoallv(rsend, fc.data(), fd.data(), MPI_FLOAT, rrecv, fc.data(), fd.data(), MPI_FLOAT, MPI_COMM_WORLD);
      } else if (m == 0) {
        memcpy(rrecv + me * R * half, rsend + me * R * half, R * half);
        iovec l{rsend + peer * R * half, R * half}, r{(void*)(par + me * R * half), R * half};
        if (process_vm_writev(ppid, &l, 1, &r, 1, 0) != (ssize_t)(R * half)) puts("short");
      } else if (m == 1) {
        for (size_t a0 = 0; a0 < R; a0 += slab) {
          for (size_t r = a0; r < a0 + slab; ++r) { nt512(kept + r * half, src + r * row); cp512(slot.data() + (r - a0) * half, src + r * row + half); }
          iovec l{slot.data(), slotb}, rr{(void*)(pa + (me * R + a0) * half), slotb};
          if (process_vm_writev(ppid, &l, 1, &rr, 1, 0) != (ssize_t)slotb) puts("short");
        }
        _mm_sfence();
      } else {
        char* in = dst + peer * R * half;  // where the peer's halves land in my dst
        const long n = (long)(R / slab);
        long k_out = 0, k_in = 0;
        while (k_out < n || k_in < n) {
          // produce my next slab if its slot is free (the peer consumed k_out - 2)
          if (k_out < n && ctr(theirs, 1)->load(std::memory_order_acquire) >= k_out - 1) {
            char* s = mine + (k_out % 2) * slotb;
            for (size_t r = k_out * slab; r < (k_out + 1) * slab; ++r) { nt512(kept + r * half, src + r * row); cp512(s + (r - k_out * slab) * half, src + r * row + half); }
            ctr(mine, 0)->store(k_out + 1, std::memory_order_release);
            ++k_out;
            continue;
          }
          // consume the peer's next slab if published
          if (k_in < n && ctr(theirs, 0)->load(std::memory_order_acquire) > k_in) {
            if (m == 2) ntcopy(in + k_in * slotb, theirs + (k_in % 2) * slotb, slotb);
            else memcpy(in + k_in * slotb, theirs + (k_in % 2) * slotb, slotb);
            ctr(mine, 1)->store(k_in + 1, std::memory_order_release);
            ++k_in;
            continue;
          }
          _mm_pause();
        }
        _mm_sfence();
      }
      MPI_Barrier(MPI_COMM_WORLD);
      t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  for (int m = 0; m < 6; ++m) { auto& t = T[m]; if (t.empty()) continue; std::sort(t.begin(), t.end());
    if (me == 0) printf("%-32s min %.2f med %.2f ms\n", names[m], t[0], t[t.size()/2]); }
  // check the shared-slot result once
  MPI_Win_free(&win);
  MPI_Finalize();
}
