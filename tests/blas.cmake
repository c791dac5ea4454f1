# BLAS kernel selection: feature detection, the choice, verification, and `shardflow version`
# run as a child with OPENBLAS_CORETYPE unset, set by the user, and with the testing hooks.
shardflow_add_test(test_blas LABELS blas TIMEOUT 120)
target_compile_definitions(test_blas PRIVATE SHARDFLOW_CLI_PATH="$<TARGET_FILE:shardflow_cli>")
add_dependencies(test_blas shardflow_cli)
