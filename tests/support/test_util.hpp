#pragma once
// Helpers shared by the tests.
#include <mpi.h>

#include <random>
#include <vector>

namespace shardflow::test {

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}
/// True on every rank iff `ok` holds on every rank (so all ranks agree before a collective).
inline bool all_ranks(bool ok) {
  int v = ok ? 1 : 0, r = 0;
  MPI_Allreduce(&v, &r, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return r == 1;
}
/// All factorisations of n into `k` ordered factors >= 1.
inline std::vector<std::vector<int>> factorisations(int n, int k) {
  std::vector<std::vector<int>> out;
  if (k == 0) {
    if (n == 1) out.push_back({});
    return out;
  }
  for (int f = 1; f <= n; ++f)
    if (n % f == 0)
      for (auto rest : factorisations(n / f, k - 1)) {
        rest.insert(rest.begin(), f);
        out.push_back(rest);
      }
  return out;
}

}  // namespace shardflow::test
