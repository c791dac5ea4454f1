# Model math (src/nn, src/optim, src/data): kernels against finite differences and
# plain-loop references, sharded pieces against unsharded, the reference GPT, AdamW, the
# data loader and the initialiser (mesh independence at np 1, 2, 4).
shardflow_add_test(test_nn_kernels SOURCES nn/test_nn_kernels.cpp)
set_tests_properties(test_nn_kernels PROPERTIES ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
shardflow_add_test(test_nn_gpt SOURCES nn/test_nn_gpt.cpp)
set_tests_properties(test_nn_gpt PROPERTIES ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
shardflow_add_test(test_nn_llama SOURCES nn/test_nn_llama.cpp)
set_tests_properties(test_nn_llama PROPERTIES ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
shardflow_add_test(test_optim SOURCES nn/test_optim.cpp)
shardflow_add_test(test_nn_data MPI SOURCES nn/test_nn_data.cpp)
target_compile_definitions(test_nn_data PRIVATE SHARDFLOW_CORPUS_PATH="${PROJECT_SOURCE_DIR}/inputs/corpus.txt")
target_compile_definitions(test_nn_gpt PRIVATE SHARDFLOW_CORPUS_PATH="${PROJECT_SOURCE_DIR}/inputs/corpus.txt")
shardflow_add_test(test_nn_tensor_parallel MPI SOURCES nn/test_nn_tensor_parallel.cpp)
foreach(np IN LISTS SHARDFLOW_TEST_NPS)
  set_tests_properties(test_nn_tensor_parallel_np_${np} test_nn_data_np_${np} PROPERTIES ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
endforeach()
set_tests_properties(test_optim PROPERTIES ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
