# Async checkpoints confirm their commit when it lands, and the summary records the last
# committed step (issue 15 item 7: "writing in the background" was never followed up).
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
execute_process(COMMAND ${MPIEXEC} -n 2 ${APP} train ${DECK} --set train.steps=4 checkpoint.every=2
    checkpoint.async=true model.layers=1 checkpoint.dir=${WORK}/ck --summary ${WORK}/s.json
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "train failed (${rc}):\n${out}\n${err}")
endif()
foreach(step 00000002 00000004)
  if(NOT out MATCHES "step-${step} \\(writing in the background\\)")
    message(FATAL_ERROR "no background save of step-${step}:\n${out}")
  endif()
  if(NOT out MATCHES "step-${step} committed")
    message(FATAL_ERROR "the commit of step-${step} was never confirmed:\n${out}")
  endif()
endforeach()
file(READ ${WORK}/s.json j)
string(JSON last ERROR_VARIABLE jerr GET "${j}" last_committed_step)
if(NOT last STREQUAL "4")
  message(FATAL_ERROR "summary last_committed_step is '${last}' ${jerr}, want 4")
endif()
message("async saves confirmed: steps 2 and 4 committed, summary last_committed_step 4")
