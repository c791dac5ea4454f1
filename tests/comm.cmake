# Communication layer, resharding and the xlstm-jax primitives.
shardflow_add_test(test_comm_mpi MPI LABELS comm)
shardflow_add_test(test_reshard MPI LABELS comm)
shardflow_add_test(test_xlstm MPI LABELS comm)
