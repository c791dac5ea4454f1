# bench_nn: forward + backward of the reference GPT on one rank (tokens/s, model GFLOP/s,
# ratio to the single-core sgemm rate of the same run). Run: build/perf/bench_nn
add_executable(bench_nn ${CMAKE_CURRENT_SOURCE_DIR}/bench_nn.cpp)
target_link_libraries(bench_nn PRIVATE shardflow)
target_compile_definitions(bench_nn PRIVATE SHARDFLOW_CORPUS_PATH="${PROJECT_SOURCE_DIR}/inputs/corpus.txt")
shardflow_target_options(bench_nn)
