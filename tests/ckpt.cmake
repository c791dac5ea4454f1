# HDF5 sharded checkpoints. The tests also use HDF5 directly (to damage files on purpose
# and to read consolidated output), so they get its headers and library.
shardflow_add_test(test_ckpt_unit)
target_include_directories(test_ckpt_unit SYSTEM PRIVATE ${HDF5_C_INCLUDE_DIRS})  # it tests ckpt/impl internals
shardflow_add_test(test_ckpt MPI TIMEOUT 600)
target_include_directories(test_ckpt SYSTEM PRIVATE ${HDF5_C_INCLUDE_DIRS})
target_link_libraries(test_ckpt PRIVATE ${HDF5_C_LIBRARIES})

# kill -9 during saves (a child process saving in a loop)
add_executable(ckpt_crash_child ckpt_crash_child.cpp)
target_link_libraries(ckpt_crash_child PRIVATE shardflow)
target_include_directories(ckpt_crash_child PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
shardflow_target_options(ckpt_crash_child)
shardflow_add_test(test_ckpt_crash TIMEOUT 600)
target_include_directories(test_ckpt_crash PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_definitions(test_ckpt_crash PRIVATE SHARDFLOW_CKPT_CHILD="$<TARGET_FILE:ckpt_crash_child>")
add_dependencies(test_ckpt_crash ckpt_crash_child)

# the command line: save one checkpoint, then inspect / verify / consolidate it, h5dump the result
set(_ckpt_cli_dir ${CMAKE_CURRENT_BINARY_DIR}/ckpt_cli)
add_test(NAME ckpt_cli_setup COMMAND ${CMAKE_COMMAND} -E rm -rf ${_ckpt_cli_dir})
add_test(NAME ckpt_cli_save COMMAND ckpt_crash_child ${_ckpt_cli_dir} once 5)
add_test(NAME ckpt_cli_inspect COMMAND shardflow_cli ckpt inspect ${_ckpt_cli_dir})
add_test(NAME ckpt_cli_verify_np_2 COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 2 $<TARGET_FILE:shardflow_cli> ckpt verify ${_ckpt_cli_dir})
add_test(NAME ckpt_cli_consolidate COMMAND shardflow_cli ckpt consolidate ${_ckpt_cli_dir} ${_ckpt_cli_dir}/full.h5)
add_test(NAME ckpt_cli_h5dump COMMAND sh -c "h5dump -H ${_ckpt_cli_dir}/full.h5 | grep -q 'DATASET \"layers.0.mlp.down.weight\"'")
set_tests_properties(ckpt_cli_setup PROPERTIES FIXTURES_SETUP ckpt_cli_clean LABELS "unit")
set_tests_properties(ckpt_cli_save PROPERTIES FIXTURES_SETUP ckpt_cli_saved FIXTURES_REQUIRED ckpt_cli_clean LABELS "unit")
set_tests_properties(ckpt_cli_inspect PROPERTIES FIXTURES_REQUIRED ckpt_cli_saved LABELS "unit"
  PASS_REGULAR_EXPRESSION "step 5, .*format 3 \\(tiles stored whole\\).*final_norm.weight")
set_tests_properties(ckpt_cli_verify_np_2 PROPERTIES FIXTURES_REQUIRED ckpt_cli_saved LABELS "mpi" PROCESSORS 2
  PASS_REGULAR_EXPRESSION ": OK \\(3 tensors")
set_tests_properties(ckpt_cli_consolidate PROPERTIES FIXTURES_REQUIRED ckpt_cli_saved FIXTURES_SETUP ckpt_cli_full LABELS "unit")
set_tests_properties(ckpt_cli_h5dump PROPERTIES FIXTURES_REQUIRED ckpt_cli_full LABELS "unit")
# the shard files as docs/checkpoint.md tells a reader without shardflow (format 3 tiles:
# h5py, sizes, metadata CRC-32C by the documented stored-bytes formula)
add_test(NAME ckpt_cli_python_reader
  COMMAND ${SHARDFLOW_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/support/check_shard_files.py ${_ckpt_cli_dir} ${_ckpt_cli_dir}/full.h5)
set_tests_properties(ckpt_cli_python_reader PROPERTIES FIXTURES_REQUIRED "ckpt_cli_saved;ckpt_cli_full" LABELS "unit"
  PASS_REGULAR_EXPRESSION "padded tiles.*OK")

# ckpt reshard through the command line (train on 2 ranks, reshard onto 4, compare)
add_test(NAME ckpt_cli_reshard
  COMMAND ${CMAKE_COMMAND} -DMPIEXEC=${MPIEXEC_EXECUTABLE} -DAPP=$<TARGET_FILE:shardflow_cli>
    -DDECK=${PROJECT_SOURCE_DIR}/inputs/quickstart.toml -DWORK=${CMAKE_CURRENT_BINARY_DIR}/ckpt_reshard
    -P ${CMAKE_CURRENT_SOURCE_DIR}/ckpt/reshard_cli.cmake)
set_tests_properties(ckpt_cli_reshard PROPERTIES LABELS "mpi;ckpt" TIMEOUT 600 PROCESSORS 4)
