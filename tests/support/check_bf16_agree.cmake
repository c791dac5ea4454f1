# bf16 products: every rank of a job multiplies the same way (Trainer::Impl::agree_gemm16).
# Rank 0 asks for oneDNN's bf16 matmul (SHARDFLOW_GEMM_BF16=on), rank 1 refuses it (off): the
# job must run the sgemm path on both ranks, rank 0's header must say so, and its losses must
# equal a run with the matmul off everywhere, bit for bit. Both ranks on must differ from
# that (so the equality is not trivial). Skipped where the build cannot run the bf16 matmul.
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
include(${CMAKE_CURRENT_LIST_DIR}/cli_run.cmake)
execute_process(COMMAND ${CMAKE_COMMAND} -E env SHARDFLOW_GEMM_BF16=on ${APP} version RESULT_VARIABLE rc
                OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message("SKIPPED: the bf16 matmul cannot be used here: ${err}")
  return()
endif()
set(args train ${DECK} --set mesh.data=2 train.steps=4 "train.precision=\"bf16\"" model.layers=2)
run(${MPIEXEC} -n 2 -env SHARDFLOW_GEMM_BF16 off ${APP} ${args} checkpoint.dir=${WORK}/off --quiet
    --summary ${WORK}/off.json)
run(${MPIEXEC} -n 2 -env SHARDFLOW_GEMM_BF16 on ${APP} ${args} checkpoint.dir=${WORK}/on --quiet
    --summary ${WORK}/on.json)
execute_process(COMMAND ${MPIEXEC} -n 1 -env SHARDFLOW_GEMM_BF16 on ${APP} ${args} checkpoint.dir=${WORK}/mixed
                --summary ${WORK}/mixed.json : -n 1 -env SHARDFLOW_GEMM_BF16 off ${APP} ${args}
                checkpoint.dir=${WORK}/mixed --summary ${WORK}/mixed.json
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the mixed run failed (${rc}):\n${out}\n${err}")
endif()
if(NOT out MATCHES "NOT USED: another rank")
  message(FATAL_ERROR "rank 0's header does not say the bf16 matmul is off for the job:\n${out}")
endif()
foreach(r off on mixed)
  file(READ ${WORK}/${r}.json j)
  string(JSON loss_${r} GET "${j}" final_loss)
endforeach()
if(NOT loss_mixed STREQUAL loss_off)
  message(FATAL_ERROR "ranks that disagree on the bf16 matmul gave final loss ${loss_mixed}, the sgemm path "
                      "${loss_off}")
endif()
if(loss_on STREQUAL loss_off)
  message(FATAL_ERROR "the bf16 matmul gave the sgemm path's loss ${loss_off} bit for bit: it did not run")
endif()
message("bf16 products: off ${loss_off}, on ${loss_on}, rank 0 on and rank 1 off ${loss_mixed} (= off)")
