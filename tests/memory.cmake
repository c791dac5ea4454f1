# Memory you can trust (issue 12 item 4): measured vs predicted peak of `train` on 14
# strategies, schedules, recompute and checkpoint modes, and a resumed run (label `memory`).
find_program(SHARDFLOW_MEMORY_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(NOT SHARDFLOW_MEMORY_PYTHON)
  find_program(SHARDFLOW_MEMORY_PYTHON NAMES python3)
endif()
add_test(NAME memory_prediction_np_2
  COMMAND ${SHARDFLOW_MEMORY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/memory/prediction.py
    --app $<TARGET_FILE:shardflow_cli> --mpiexec ${MPIEXEC_EXECUTABLE}
    --deck ${PROJECT_SOURCE_DIR}/inputs/quickstart.toml --source ${PROJECT_SOURCE_DIR}
    --work ${CMAKE_CURRENT_BINARY_DIR}/memory_prediction)
set_tests_properties(memory_prediction_np_2 PROPERTIES LABELS "memory;mpi" TIMEOUT 600 PROCESSORS 2)
# A memory budget (issue 12 item 5): refused before step 1 with a configuration that fits
# (which then trains under the budget), and a resumed run stopped cleanly past it.
add_test(NAME memory_budget_np_2
  COMMAND ${SHARDFLOW_MEMORY_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/memory/budget.py
    --app $<TARGET_FILE:shardflow_cli> --mpiexec ${MPIEXEC_EXECUTABLE}
    --deck ${PROJECT_SOURCE_DIR}/inputs/quickstart.toml --source ${PROJECT_SOURCE_DIR}
    --work ${CMAKE_CURRENT_BINARY_DIR}/memory_budget)
set_tests_properties(memory_budget_np_2 PROPERTIES LABELS "memory;mpi" TIMEOUT 600 PROCESSORS 2)
