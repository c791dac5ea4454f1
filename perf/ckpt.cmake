# bench_ckpt: checkpoint save/restore vs raw POSIX write/read of the same bytes (checks its own results).
add_executable(bench_ckpt ${CMAKE_CURRENT_LIST_DIR}/bench_ckpt.cpp)
target_link_libraries(bench_ckpt PRIVATE shardflow)
shardflow_target_options(bench_ckpt)
if(SHARDFLOW_BUILD_TESTS)
  add_test(NAME perf_bench_ckpt_smoke_np_2
    COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 2 $<TARGET_FILE:bench_ckpt> --mib-per-rank 4 --tensors 3 --iters 1
            --dir ${CMAKE_CURRENT_BINARY_DIR}/bench_ckpt_smoke)
  set_tests_properties(perf_bench_ckpt_smoke_np_2 PROPERTIES LABELS "perf;mpi" PROCESSORS 2 TIMEOUT 120)
endif()
