shardflow_add_test(test_train_equivalence MPI TIMEOUT 900)
target_compile_definitions(test_train_equivalence PRIVATE SHARDFLOW_CORPUS="${PROJECT_SOURCE_DIR}/inputs/corpus.txt")
# The quickstart deck trains and its loss falls below 2.9 within 200 steps (measured: 2.64) on 2 ranks.
add_test(NAME quickstart_loss_falls_np_2
  COMMAND ${CMAKE_COMMAND} -DMPIEXEC=${MPIEXEC_EXECUTABLE} -DAPP=$<TARGET_FILE:shardflow_cli>
    -DDECK=${PROJECT_SOURCE_DIR}/inputs/quickstart.toml -DSTEPS=200 -DMAX_LOSS=2.9
    -DOUT=${CMAKE_CURRENT_BINARY_DIR}/quickstart_summary.json -DCKPT=${CMAKE_CURRENT_BINARY_DIR}/quickstart_ckpt -P ${CMAKE_CURRENT_SOURCE_DIR}/support/check_quickstart.cmake)
set_tests_properties(quickstart_loss_falls_np_2 PROPERTIES LABELS "mpi;train" TIMEOUT 900 PROCESSORS 2)
shardflow_add_test(test_resume MPI TIMEOUT 900)
target_compile_definitions(test_resume PRIVATE SHARDFLOW_CORPUS="${PROJECT_SOURCE_DIR}/inputs/corpus.txt")
