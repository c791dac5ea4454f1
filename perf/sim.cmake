# bench_sim_warm: `simulate`'s work timed inside one warm process (first call apart), as
# perf/bench_calculon.py times Calculon; every call must give the first call's step (#wrong).
# Run: bench_sim_warm DECK --cluster a100-80gb --repeat 20
add_executable(bench_sim_warm ${CMAKE_CURRENT_LIST_DIR}/bench_sim_warm.cpp)
target_link_libraries(bench_sim_warm PRIVATE shardflow)
shardflow_target_options(bench_sim_warm)
shardflow_link_allocator(bench_sim_warm)  # (the allocator the shardflow command runs with)
