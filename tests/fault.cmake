# The fault tests (issue 15): what users do and what goes wrong around a training run,
# done for real. Label `fault`; each script prints one line per check.
#   signal_exit_code   SIGTERM/SIGUSR1 to mpiexec and to the batch script: exit 99, 10/10
#   checkpoint_lock    two runs on one checkpoint.dir, a killed holder, a remote holder
#   full_disk          saves that fill a tmpfs: a clear error, no crash, the last commit kept
#   bad_inputs         oversized decks, bad `latest` pointers, an edited manifest, consolidate
#                      onto existing files, idle GPUs
function(shardflow_fault_test name np)
  add_test(NAME fault_${name}_np_${np}
    COMMAND ${SHARDFLOW_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/fault/${name}.py
      --app $<TARGET_FILE:shardflow_cli> --mpiexec ${MPIEXEC_EXECUTABLE}
      --deck ${PROJECT_SOURCE_DIR}/inputs/quickstart.toml --source ${PROJECT_SOURCE_DIR}
      --work ${CMAKE_CURRENT_BINARY_DIR}/fault_${name})
  set_tests_properties(fault_${name}_np_${np} PROPERTIES LABELS "fault;mpi" TIMEOUT 400 PROCESSORS ${np}
    SKIP_RETURN_CODE 77)
endfunction()
shardflow_fault_test(signal_exit_code 2)
shardflow_fault_test(checkpoint_lock 2)
shardflow_fault_test(full_disk 2)
shardflow_fault_test(bad_inputs 2)
