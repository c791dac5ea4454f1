# Kokkos kernels and the 16-bit types.
shardflow_add_test(test_half)
shardflow_add_test(test_pack)
shardflow_add_test(test_elementwise)
