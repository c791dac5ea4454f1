# The step compiler (src/compile/): every rank of meshes up to 16,384 devices, without MPI.
shardflow_add_test(test_compile LABELS compile)
target_compile_definitions(test_compile PRIVATE SHARDFLOW_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
# `shardflow compile` on rank 12345 of a 16,384-device, 96-layer mesh, in one process.
add_test(NAME compile_cli_16384_devices
  COMMAND $<TARGET_FILE:shardflow_cli> compile ${PROJECT_SOURCE_DIR}/inputs/cluster_175b.toml
    --devices 16384 --rank 12345 --json)
set_tests_properties(compile_cli_16384_devices PROPERTIES LABELS "compile" TIMEOUT 120
  PASS_REGULAR_EXPRESSION "\"world\": 16384")
