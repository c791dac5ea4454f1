# bench_nn: forward + backward of the reference GPT on one rank (tokens/s, model GFLOP/s,
# ratio to the single-core sgemm rate of the same run). Run: build/perf/bench_nn
add_executable(bench_nn ${CMAKE_CURRENT_LIST_DIR}/bench_nn.cpp)
target_link_libraries(bench_nn PRIVATE shardflow)
target_compile_definitions(bench_nn PRIVATE SHARDFLOW_CORPUS_PATH="${PROJECT_SOURCE_DIR}/inputs/corpus.txt")
shardflow_target_options(bench_nn)
if(SHARDFLOW_BUILD_TESTS)
  # Smoke run: a small model, a few iterations; fails on any #wrong.
  add_test(NAME perf_bench_nn_smoke
    COMMAND bench_nn --iters 2 --batch 2 --layers 1 --seq 64 --sgemm-n 256)
  set_tests_properties(perf_bench_nn_smoke PROPERTIES LABELS "perf" TIMEOUT 120
    ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
endif()

# bench_gemm: the host f32 GEMM libraries (OpenBLAS, oneDNN) on one step's products, side by
# side (core/gemm.hpp). Run: build/perf/bench_gemm [--batch 4]
add_executable(bench_gemm ${CMAKE_CURRENT_LIST_DIR}/bench_gemm.cpp)
target_link_libraries(bench_gemm PRIVATE shardflow)
shardflow_target_options(bench_gemm)
if(SHARDFLOW_BUILD_TESTS)
  add_test(NAME perf_bench_gemm_smoke COMMAND bench_gemm --batch 1 --seq 64 --reps 2)
  set_tests_properties(perf_bench_gemm_smoke PROPERTIES LABELS "perf" TIMEOUT 120)
endif()
