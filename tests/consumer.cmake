# The installed, exported package works for a downstream project: install this build
# into a scratch prefix, configure tests/consumer against it, build and run it.
if(NOT SHARDFLOW_SANITIZE)  # the sanitizer runtime is not part of the exported link interface
add_test(NAME package_consumer
  COMMAND ${CMAKE_COMMAND}
    -DSRC_DIR=${CMAKE_CURRENT_SOURCE_DIR}/consumer
    -DBUILD_DIR=${CMAKE_BINARY_DIR}
    -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/consumer_work
    -DGENERATOR=${CMAKE_GENERATOR}
    -P ${CMAKE_CURRENT_SOURCE_DIR}/consumer/run_consumer.cmake)
set_tests_properties(package_consumer PROPERTIES LABELS "unit;package" TIMEOUT 600 RUN_SERIAL TRUE)
endif()
