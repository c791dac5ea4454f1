# bench_pack: pack/unpack GB/s vs memcpy of the same bytes (checks its own results).
add_executable(bench_pack ${CMAKE_CURRENT_LIST_DIR}/bench_pack.cpp)
target_link_libraries(bench_pack PRIVATE shardflow)
shardflow_target_options(bench_pack)
if(SHARDFLOW_BUILD_TESTS)
  add_test(NAME perf_bench_pack_smoke
    COMMAND bench_pack --min-bytes 64K --max-bytes 1M --min-run 64 --max-run 4K --iters 3)
  add_test(NAME perf_bench_pack_smoke_bf16
    COMMAND bench_pack --min-bytes 64K --max-bytes 256K --min-run 64 --max-run 1K --iters 3 --cast bf16)
  set_tests_properties(perf_bench_pack_smoke perf_bench_pack_smoke_bf16 PROPERTIES LABELS "perf" TIMEOUT 120)
endif()
