# Runs `shardflow train` on the quickstart deck for STEPS steps on 2 ranks and checks that
# the final loss (from --summary) is below MAX_LOSS and below the first step's loss.
file(REMOVE_RECURSE ${CKPT})
execute_process(COMMAND ${MPIEXEC} -n 2 ${APP} train ${DECK} --set train.steps=${STEPS} checkpoint.dir=${CKPT} --summary ${OUT}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "shardflow train failed (${rc}):\n${err}")
endif()
file(READ ${OUT} summary)
string(JSON final GET "${summary}" final_loss)
string(JSON first GET "${summary}" steps 0 loss)
message(STATUS "first loss ${first}, final loss ${final} after ${STEPS} steps (must be < ${MAX_LOSS})")
if(final GREATER_EQUAL ${MAX_LOSS} OR final GREATER_EQUAL first)
  message(FATAL_ERROR "the quickstart loss did not fall: first ${first}, final ${final}, bound ${MAX_LOSS}")
endif()
