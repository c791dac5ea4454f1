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
# The host products' time (GemmTally around each step) sits inside the step's compute, and
# their rate against the measured peak is a rate a core can reach (0 < rate <= 1.5 x peak).
string(JSON prod GET "${summary}" steps 1 products_s)
string(JSON comp GET "${summary}" steps 1 compute_s)
string(JSON pvp GET "${summary}" products_vs_peak)
message(STATUS "step 2: products ${prod} s of compute ${comp} s; products at ${pvp} of the peak")
if(NOT prod GREATER 0 OR prod GREATER comp OR NOT pvp GREATER 0 OR pvp GREATER 1.5)
  message(FATAL_ERROR "implausible products in the summary: products_s ${prod}, compute_s ${comp}, products_vs_peak ${pvp}")
endif()
