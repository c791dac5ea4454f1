# HDF5 sharded checkpoints. The tests also use HDF5 directly (to damage files on purpose
# and to read consolidated output), so they get its headers and library.
shardflow_add_test(test_ckpt_unit)
shardflow_add_test(test_ckpt MPI TIMEOUT 600)
target_include_directories(test_ckpt SYSTEM PRIVATE ${HDF5_C_INCLUDE_DIRS})
target_link_libraries(test_ckpt PRIVATE ${HDF5_C_LIBRARIES})
