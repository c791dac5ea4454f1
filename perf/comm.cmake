# Communication benchmarks (nccl-tests manner): framework vs raw MPI on the same buffers.
add_executable(bench_comm ${CMAKE_CURRENT_LIST_DIR}/bench_comm.cpp)
target_link_libraries(bench_comm PRIVATE shardflow)
shardflow_target_options(bench_comm)
