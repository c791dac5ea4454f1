# Kokkos kernels and the 16-bit types.
shardflow_add_test(test_half)
