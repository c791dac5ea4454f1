# End-to-end training benchmarks (issue 4 §8). The driver is perf/bench_train.py (shardflow
# vs a PyTorch DDP peer, DP vs FSDP, executor vs oneTBB, overlap, nn kernels); see docs/perf.md.
# bench_overlap: the trainer's step graph run full / with blocking comm / compute alone /
# comm alone. Run: mpiexec -n 2 build/perf/bench_overlap inputs/bench.toml --set mesh.data=2
add_executable(bench_overlap ${CMAKE_CURRENT_LIST_DIR}/bench_overlap.cpp)
target_link_libraries(bench_overlap PRIVATE shardflow)
shardflow_target_options(bench_overlap)
if(SHARDFLOW_BUILD_TESTS)
  add_test(NAME perf_bench_overlap_smoke_np_2
    COMMAND ${MPIEXEC_EXECUTABLE} -n 2 $<TARGET_FILE:bench_overlap> ${PROJECT_SOURCE_DIR}/inputs/quickstart.toml
      --set mesh.data=2 --steps 2 --warmup 1)
  set_tests_properties(perf_bench_overlap_smoke_np_2 PROPERTIES LABELS "perf;mpi" TIMEOUT 300 PROCESSORS 2)
endif()
