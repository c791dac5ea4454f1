# Memory you can trust and a memory budget (issue 12 items 4-5), label `memory`:
#   prediction  measured vs predicted peak of `train` on 18 strategies, schedules,
#               recompute, precision and checkpoint modes and a resumed run; `plan --json` agrees
#   budget      refused before step 1 with a configuration that fits (which then trains
#               under the budget), and a resumed run stopped cleanly past it
function(shardflow_memory_test name)
  add_test(NAME memory_${name}_np_2
    COMMAND ${SHARDFLOW_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/memory/${name}.py
      --app $<TARGET_FILE:shardflow_cli> --mpiexec ${MPIEXEC_EXECUTABLE}
      --deck ${PROJECT_SOURCE_DIR}/inputs/quickstart.toml --source ${PROJECT_SOURCE_DIR}
      --work ${CMAKE_CURRENT_BINARY_DIR}/memory_${name})
  set_tests_properties(memory_${name}_np_2 PROPERTIES LABELS "memory;mpi" TIMEOUT 600 PROCESSORS 2)
endfunction()
shardflow_memory_test(prediction)
shardflow_memory_test(budget)
# precision: 200 steps of bf16 and f16 against f32, checkpoints across precisions and
# meshes, an f16 run resumed bit for bit with its loss scale (issue 12 item 2)
shardflow_memory_test(precision)
