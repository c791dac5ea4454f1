# `shardflow eval` on a mixture-of-experts checkpoint: train 4 steps of an MoE model on 2
# ranks (expert = 2), then eval the checkpoint on 1 and on 3 ranks: both give the same
# finite loss below the untrained model's ln(256) = 5.55.
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
include(${CMAKE_CURRENT_LIST_DIR}/cli_run.cmake)
run(${MPIEXEC} -n 2 ${APP} train ${DECK} --quiet --set train.steps=4 checkpoint.every=4 model.layers=2 model.hidden=64
    model.ffn=172 train.global_batch=8 model.experts=4 model.top_k=2 model.moe_every=1 mesh.data=1 mesh.expert=2
    checkpoint.dir=${WORK}/run)
run(${MPIEXEC} -n 1 ${APP} eval --resume ${WORK}/run --tokens ${CORPUS} --summary ${WORK}/eval1.json --batch 5)
run(${MPIEXEC} -n 3 ${APP} eval --resume ${WORK}/run --tokens ${CORPUS} --summary ${WORK}/eval3.json)
file(READ ${WORK}/eval1.json j1)
file(READ ${WORK}/eval3.json j3)
string(JSON l1 GET "${j1}" loss)
string(JSON l3 GET "${j3}" loss)
string(JSON n1 GET "${j1}" sequences)
string(JSON n3 GET "${j3}" sequences)
if(NOT n1 EQUAL n3)
  message(FATAL_ERROR "eval: ${n1} sequences on 1 rank, ${n3} on 3")
endif()
if(NOT (l1 GREATER 0.5 AND l1 LESS 5.5))
  message(FATAL_ERROR "eval loss ${l1} on the MoE checkpoint is not between 0.5 and 5.5")
endif()
# equal to 6 significant digits (the ranks sum their sequences in another order)
execute_process(COMMAND ${PYTHON} -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(a-b)<=1e-6*a else 1)" ${l1} ${l3}
  RESULT_VARIABLE same)
if(NOT same EQUAL 0)
  message(FATAL_ERROR "eval loss ${l1} on 1 rank, ${l3} on 3 ranks")
endif()
message("eval on the MoE checkpoint: loss ${l1} on 1 and 3 ranks (${n1} sequences)")
