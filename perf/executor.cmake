# bench_executor: graph::Executor overhead per empty task vs oneTBB flow_graph on the same
# DAGs in the same run. Built only when oneTBB is found (Debian: libtbb-dev; perf/bench_train.py
# installs it when missing). Run: build/perf/bench_executor
find_package(TBB QUIET CONFIG)
if(TBB_FOUND)
  add_executable(bench_executor ${CMAKE_CURRENT_LIST_DIR}/bench_executor.cpp)
  target_link_libraries(bench_executor PRIVATE shardflow TBB::tbb)
  shardflow_target_options(bench_executor)
  if(SHARDFLOW_BUILD_TESTS)
    # --scale 3: graphs of 6000 tasks, past the 4096 ids one summary word of the ready bitset covers
    add_test(NAME perf_bench_executor_smoke COMMAND bench_executor --reps 5 --scale 3)
    set_tests_properties(perf_bench_executor_smoke PROPERTIES LABELS "perf" TIMEOUT 120)
  endif()
else()
  message(STATUS "oneTBB not found: bench_executor (executor vs TBB flow_graph) is not built")
endif()
