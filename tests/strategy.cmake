# Strategies, mesh manager, model description, input deck, planner and `shardflow plan`.
shardflow_add_test(test_weight_sharding)
shardflow_add_test(test_sharding_strategy)
shardflow_add_test(test_device_mesh_manager)
shardflow_add_test(test_model_description)
shardflow_add_test(test_layout_plan_specs)
shardflow_add_test(test_deck)
target_compile_definitions(test_deck PRIVATE SHARDFLOW_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
shardflow_add_test(test_planner)
shardflow_add_test(test_strategy_mpi MPI)
# `shardflow plan` under mpiexec -n 2: bad decks fail on both ranks with the error printed
# once; the quickstart plan prints one JSON object.
add_test(NAME test_plan_cli_np_2
  COMMAND ${CMAKE_COMMAND} -DCLI=$<TARGET_FILE:shardflow_cli> -DMPIEXEC=${MPIEXEC_EXECUTABLE}
          -DWORK=${CMAKE_CURRENT_BINARY_DIR}/plan_cli -DSOURCE=${PROJECT_SOURCE_DIR}
          -P ${CMAKE_CURRENT_SOURCE_DIR}/strategy_scripts/check_plan_cli.cmake)
set_tests_properties(test_plan_cli_np_2 PROPERTIES LABELS "mpi" TIMEOUT 300 PROCESSORS 2)
