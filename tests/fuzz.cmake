# Fuzzing the checkpoint reader (docs/fuzzing.md).
#
# Normal build: test_fuzz_replay replays every stored seed and regression input in
# tests/fuzz/ through the harness bodies (label `unit`).
add_executable(test_fuzz_replay fuzz/replay_main.cpp fuzz/fuzz_entry.cpp)
target_link_libraries(test_fuzz_replay PRIVATE shardflow)
target_include_directories(test_fuzz_replay PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
target_compile_definitions(test_fuzz_replay PRIVATE SHARDFLOW_FUZZ_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fuzz")
shardflow_target_options(test_fuzz_replay)
add_test(NAME test_fuzz_replay COMMAND test_fuzz_replay)
set_tests_properties(test_fuzz_replay PROPERTIES LABELS "unit;ckpt" TIMEOUT 120)

# Fuzz build (scripts/fuzz.sh: CC=clang CXX=clang++ -DSHARDFLOW_FUZZ=ON): the libFuzzer
# binaries fuzz_manifest and fuzz_checkpoint, over an instrumented copy of the sources the
# checkpoint reader needs (not the whole library: that keeps the build small).
option(SHARDFLOW_FUZZ "Build the libFuzzer harnesses (needs clang)" OFF)
if(SHARDFLOW_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "SHARDFLOW_FUZZ=ON needs clang (CXX=clang++), not ${CMAKE_CXX_COMPILER_ID}")
  endif()
  set(_fz_src ${PROJECT_SOURCE_DIR}/src)
  file(GLOB _fz_sources CONFIGURE_DEPENDS ${_fz_src}/ckpt/impl/*.cpp ${_fz_src}/core/impl/*.cpp
       ${_fz_src}/layout/impl/*.cpp)
  list(APPEND _fz_sources ${_fz_src}/mesh/impl/mesh_shape.cpp ${_fz_src}/kernels/impl/strided_box.cpp
       fuzz/fuzz_entry.cpp)
  set(_fz_flags -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1)
  add_library(shardflow_fuzz_lib STATIC ${_fz_sources})
  target_include_directories(shardflow_fuzz_lib PUBLIC ${_fz_src} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
  target_include_directories(shardflow_fuzz_lib SYSTEM PRIVATE ${HDF5_C_INCLUDE_DIRS})
  target_compile_options(shardflow_fuzz_lib PUBLIC ${_fz_flags} -fsanitize=fuzzer-no-link)
  target_link_libraries(shardflow_fuzz_lib PUBLIC MPI::MPI_CXX Kokkos::kokkos ${HDF5_C_LIBRARIES} fmt::fmt
    nlohmann_json::nlohmann_json ${CMAKE_DL_LIBS})
  foreach(h manifest checkpoint)
    add_executable(fuzz_${h} fuzz/libfuzzer_${h}.cpp)
    target_link_libraries(fuzz_${h} PRIVATE shardflow_fuzz_lib)
    target_link_options(fuzz_${h} PRIVATE -fsanitize=fuzzer,address,undefined)
  endforeach()
endif()
