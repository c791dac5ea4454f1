shardflow_add_test(test_task_graph)
target_link_libraries(test_task_graph PRIVATE nlohmann_json::nlohmann_json)
shardflow_add_test(test_executor MPI)
# Pipeline schedules as pure functions (src/compile/schedule.hpp).
shardflow_add_test(test_schedule)
