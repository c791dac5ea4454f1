# Runs `shardflow plan` under `mpiexec -n 2` (cmake -P script; no MPI in the driver):
#  1. a bad deck: both ranks exit non-zero, no hang, the error naming file:line, key and
#     value is printed exactly once;
#  2. a deck whose mesh cannot shard its model: same, naming the numbers;
#  3. the quickstart deck with --json: exit 0, the plan printed once, valid fields.
# Variables: CLI, MPIEXEC, WORK, SOURCE.
file(MAKE_DIRECTORY "${WORK}")

function(run_plan out_rc out_text)
  execute_process(COMMAND "${MPIEXEC}" -n 2 "${CLI}" plan ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 90)
  set(${out_rc} "${rc}" PARENT_SCOPE)
  set(${out_text} "${out}${err}" PARENT_SCOPE)
endfunction()

function(expect_once text needle what)
  string(REGEX MATCHALL "shardflow: error" all "${text}")
  list(LENGTH all n)
  if(NOT n EQUAL 1)
    message(FATAL_ERROR "${what}: expected the error printed once, found ${n} times:\n${text}")
  endif()
  string(FIND "${text}" "${needle}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "${what}: expected '${needle}' in:\n${text}")
  endif()
  string(FIND "${text}" "error on rank" pos)
  if(NOT pos EQUAL -1)
    message(FATAL_ERROR "${what}: the failure was not collective:\n${text}")
  endif()
endfunction()

function(expect_failed rc text what)
  if(NOT rc MATCHES "^[0-9]+$")
    message(FATAL_ERROR "${what}: mpiexec did not finish (${rc}):\n${text}")
  endif()
  if(rc EQUAL 0)
    message(FATAL_ERROR "${what}: expected a non-zero exit code:\n${text}")
  endif()
endfunction()

# 1. heads do not divide hidden
file(WRITE "${WORK}/bad_heads.toml" "[mesh]\ndata = 2\n\n[model]\nhidden = 128\nheads = 5\n")
run_plan(rc text "${WORK}/bad_heads.toml")
expect_failed("${rc}" "${text}" "bad heads")
expect_once("${text}" "shardflow: error: ${WORK}/bad_heads.toml:6: model.heads = 5 does not divide model.hidden = 128"
            "bad heads")

# 1b. an unknown key and a wrong type
file(WRITE "${WORK}/bad_key.toml" "[train]\nsteps = 10\nlearning_rate = 0.1\n")
run_plan(rc text "${WORK}/bad_key.toml")
expect_failed("${rc}" "${text}" "unknown key")
expect_once("${text}" "${WORK}/bad_key.toml:3: unknown key 'train.learning_rate'" "unknown key")
run_plan(rc text "${SOURCE}/inputs/quickstart.toml" --set "model.hidden=wide")
expect_failed("${rc}" "${text}" "wrong type")
expect_once("${text}" "--set model.hidden=wide: model.hidden = wide has the wrong type: expected an integer" "wrong type")

# 2. more tensor devices than heads
file(WRITE "${WORK}/bad_mesh.toml" "[mesh]\ntensor = 8\n[train]\nglobal_batch = 8\n")
run_plan(rc text "${WORK}/bad_mesh.toml")
expect_failed("${rc}" "${text}" "bad mesh")
expect_once("${text}" "8 devices but only 4 heads" "bad mesh")

# 3. the quickstart plan, as JSON, printed once
run_plan(rc text "${SOURCE}/inputs/quickstart.toml" --json)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "quickstart plan failed (${rc}):\n${text}")
endif()
string(REGEX MATCHALL "\"recommended_mesh\"" all "${text}")
list(LENGTH all n)
if(NOT n EQUAL 1)
  message(FATAL_ERROR "quickstart plan: expected one JSON object, found ${n}:\n${text}")
endif()
string(JSON params GET "${text}" model parameters)
string(JSON data GET "${text}" mesh data)
string(JSON zero3 GET "${text}" memory_per_device 3 strategy)
if(NOT params EQUAL 865408 OR NOT data EQUAL 2 OR NOT zero3 STREQUAL "ZeRO-3")
  message(FATAL_ERROR "quickstart plan: parameters=${params} mesh.data=${data} row 3=${zero3}:\n${text}")
endif()
message(STATUS "shardflow plan CLI checks passed")
