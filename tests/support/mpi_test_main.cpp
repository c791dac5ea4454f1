// gtest main for every shardflow test: initialises MPI and Kokkos, runs the tests on
// every rank, prints full output on rank 0 and only failures (tagged with the rank) on
// the others, and exits non-zero on any rank whose tests failed.
#include <gtest/gtest.h>
#include <mpi.h>

#include "comm/control.hpp"
#include "core/blas.hpp"
#include "core/threads.hpp"

#include <Kokkos_Core.hpp>
#include <cstdio>

namespace {
class RankFailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
  }

 private:
  int rank_;
};
}  // namespace

int main(int argc, char** argv) {
  shardflow::ensure_best_blas_kernel(argc, argv);  // may re-execute: before MPI_Init
  shardflow::comm::mpi_init(argc, argv);
  shardflow::limit_blas_threads();
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  Kokkos::initialize(argc, argv);
  testing::InitGoogleTest(&argc, argv);
  if (rank != 0) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  int rc = RUN_ALL_TESTS();
  Kokkos::finalize();
  MPI_Finalize();
  return rc;
}
