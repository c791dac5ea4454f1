# Communication layer, resharding and the xlstm-jax primitives.
shardflow_add_test(test_comm_mpi MPI LABELS comm)
shardflow_add_test(test_reshard MPI LABELS comm)
shardflow_add_test(test_xlstm MPI LABELS comm)
if(SHARDFLOW_ENABLE_NCCL)
  # One rank, one GPU; skips (GTEST_SKIP) where no GPU is visible.
  shardflow_add_test(test_comm_nccl MPI NP 1 LABELS gpu)
  set_tests_properties(test_comm_nccl_np_1 PROPERTIES SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
endif()
# comm::Control: the control-plane messages the checkpoints, verify and the CLI use.
shardflow_add_test(test_control MPI)
