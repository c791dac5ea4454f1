# Strategies, mesh manager, model description, input deck, planner and `shardflow plan`.
shardflow_add_test(test_weight_sharding)
shardflow_add_test(test_sharding_strategy)
shardflow_add_test(test_device_mesh_manager)
shardflow_add_test(test_model_description)
shardflow_add_test(test_deck)
target_compile_definitions(test_deck PRIVATE SHARDFLOW_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
