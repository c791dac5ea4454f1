# Parallelism benchmark: the training step on every 2-rank mesh of inputs/bench.toml
# (step time, tokens/s, pipeline bubble, tensor-parallel bytes, memory vs the planner),
# each mesh checked against the one-rank losses (#wrong). Run: mpiexec -n 2 bench_par
add_executable(bench_par ${CMAKE_CURRENT_LIST_DIR}/bench_par.cpp)
target_link_libraries(bench_par PRIVATE shardflow)
shardflow_target_options(bench_par)
target_compile_definitions(bench_par PRIVATE SHARDFLOW_BENCH_DECK="${PROJECT_SOURCE_DIR}/inputs/bench.toml")
# Activation recomputation: step time of none / selective / full against the analytic extra
# FLOPs, activation bytes, losses bitwise equal. Run: mpiexec -n 2 bench_recompute --set mesh.data=2
add_executable(bench_recompute ${CMAKE_CURRENT_LIST_DIR}/bench_recompute.cpp)
target_link_libraries(bench_recompute PRIVATE shardflow)
shardflow_target_options(bench_recompute)
target_compile_definitions(bench_recompute PRIVATE SHARDFLOW_BENCH_DECK="${PROJECT_SOURCE_DIR}/inputs/bench.toml")
# bench_memory: each ZeRO stage's per-rank model state vs the ZeRO paper's formulas, and
# the measured allocation peak vs the compiled prediction. Run: mpiexec -n 4 bench_memory
add_executable(bench_memory ${CMAKE_CURRENT_LIST_DIR}/bench_memory.cpp)
target_link_libraries(bench_memory PRIVATE shardflow)
shardflow_target_options(bench_memory)
target_compile_definitions(bench_memory PRIVATE SHARDFLOW_BENCH_DECK="${PROJECT_SOURCE_DIR}/inputs/bench.toml")
# bench_context: context parallelism (ring attention) against one rank at the same sequence
# length: step time, activation bytes per rank, the share of ring messages hidden behind
# compute, losses against one rank (#wrong). Run: mpiexec -n 2 bench_context
add_executable(bench_context ${CMAKE_CURRENT_LIST_DIR}/bench_context.cpp)
target_link_libraries(bench_context PRIVATE shardflow)
shardflow_target_options(bench_context)
target_compile_definitions(bench_context PRIVATE SHARDFLOW_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
if(SHARDFLOW_BUILD_TESTS)
  add_test(NAME perf_bench_context_smoke_np_2
    COMMAND ${MPIEXEC_EXECUTABLE} -n 2 $<TARGET_FILE:bench_context> --set model.seq=128 --steps 2 --rounds 2)
  set_tests_properties(perf_bench_context_smoke_np_2 PROPERTIES LABELS "perf;mpi" TIMEOUT 300 PROCESSORS 2)
endif()
