# Sizes that cannot fit are refused before anything is allocated (issue 15 item 5): the
# step's compiled buffers are counted against train.memory_limit_gib (else the node's
# available memory shared by its ranks), and the message names the largest part and keys.
# A model that cannot fit even fully sharded is refused earlier, in O(1) at the deck (before
# the layout plan's per-layer records exist); a corpus shorter than a sequence as well.
set(BASE ${MPIEXEC} -n 2 ${APP} train ${DECK} --set train.steps=2 checkpoint.dir=${WORK}/ck)
include(${CMAKE_CURRENT_LIST_DIR}/cli_run.cmake)
expect_refused("The largest part is activations" ${BASE} model.seq=100000)
expect_refused("model.seq = 1000000 needs a corpus of at least" ${BASE} model.seq=1000000)
expect_refused("The largest part is optimizer state" ${BASE} model.hidden=8192 model.heads=64)
expect_refused("parameters need at least .* GiB per rank even fully sharded" ${BASE} model.hidden=65536 model.heads=64)
expect_refused("The largest part is activations" ${BASE} train.memory_limit_gib=0.01)
# Full activation recomputation (issue 12) is named when activations are the largest part,
# and the refused configuration then trains under the same budget.
expect_refused("The largest part is activations: strategy.recompute = .full." ${BASE} train.memory_limit_gib=0.03)
file(REMOVE_RECURSE ${WORK}/ck_recompute)
run(${BASE} train.memory_limit_gib=0.03 strategy.recompute="full" checkpoint.dir=${WORK}/ck_recompute)
