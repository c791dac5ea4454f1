# Sizes that cannot fit are refused before anything is allocated (issue 15 item 5): the
# step's compiled buffers are counted against train.memory_limit_gib (else the node's
# available memory shared by its ranks), and the message names the largest part and keys.
set(BASE ${MPIEXEC} -n 2 ${APP} train ${DECK} --set train.steps=2 checkpoint.dir=${WORK}/ck)
include(${CMAKE_CURRENT_LIST_DIR}/cli_run.cmake)
expect_refused("The largest part is activations" ${BASE} model.seq=1000000)
expect_refused("The largest part is optimizer state" ${BASE} model.hidden=65536 model.heads=64)
expect_refused("The largest part is activations" ${BASE} train.memory_limit_gib=0.01)
