# Parallelism benchmark: the training step on every 2-rank mesh of inputs/bench.toml
# (step time, tokens/s, pipeline bubble, tensor-parallel bytes, memory vs the planner),
# each mesh checked against the one-rank losses (#wrong). Run: mpiexec -n 2 bench_par
add_executable(bench_par ${CMAKE_CURRENT_LIST_DIR}/bench_par.cpp)
target_link_libraries(bench_par PRIVATE shardflow)
shardflow_target_options(bench_par)
target_compile_definitions(bench_par PRIVATE SHARDFLOW_BENCH_DECK="${PROJECT_SOURCE_DIR}/inputs/bench.toml")
