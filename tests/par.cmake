# Tensor, pipeline and composed parallelism in the training step vs one rank (np 1, 2, 4:
# each mesh case runs at its own rank count).
shardflow_add_test(test_train_parallel MPI TIMEOUT 900 LABELS train)
target_compile_definitions(test_train_parallel PRIVATE SHARDFLOW_CORPUS="${PROJECT_SOURCE_DIR}/inputs/corpus.txt")
# Checkpoints saved on tensor / sequence / pipeline / composed meshes restore on any other.
shardflow_add_test(test_train_resume_parallel MPI TIMEOUT 900 LABELS train)
target_compile_definitions(test_train_resume_parallel PRIVATE SHARDFLOW_CORPUS="${PROJECT_SOURCE_DIR}/inputs/corpus.txt")
# The MoE router rules, its backward against finite differences, and the row kernels.
shardflow_add_test(test_train_moe LABELS train)
