# The checkpoint workflow through the command line, as a user runs it:
#  1. train 6 steps on 2 ranks (data = 2), checkpoint every 3 steps;
#  2. resume step 3 on 4 ranks with another mesh and ZeRO stage (data = 2 x fsdp = 2,
#     ZeRO-3): steps 4..6 must give the uninterrupted run's losses (1e-5 relative);
#     the same through `ckpt reshard` offline first: bitwise the same continuation;
#  3. eval the step-6 checkpoint on 1 and on 3 ranks: the same loss;
#  4. consolidate it and read the file with h5py: MODEL.md names, full shapes, f32, and
#     the step as an attribute.
set(A ${WORK}/run)
set(B ${WORK}/resumed)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
include(${CMAKE_CURRENT_LIST_DIR}/cli_run.cmake)
set(SET train.steps=6 checkpoint.every=3 model.layers=2 model.hidden=64 model.ffn=172 train.global_batch=8)
run(${MPIEXEC} -n 2 ${APP} train ${DECK} --quiet --set ${SET} checkpoint.dir=${A} --summary ${WORK}/full.json)
run(${MPIEXEC} -n 4 ${APP} train ${DECK} --quiet --set ${SET} checkpoint.dir=${B} mesh.data=2 mesh.fsdp=2
    strategy.zero_stage=3 strategy.fsdp_min_weight_size=64 --resume ${A}/step-00000003 --summary ${WORK}/resumed.json)
# offline reshard onto the 4-rank mesh, then resume from it: bitwise the same continuation
set(NEW mesh.data=2 mesh.fsdp=2 strategy.zero_stage=3 strategy.fsdp_min_weight_size=64)
run(${MPIEXEC} -n 4 ${APP} ckpt reshard ${A}/step-00000003 ${WORK}/resharded --set ${NEW})
run(${MPIEXEC} -n 2 ${APP} ckpt verify ${WORK}/resharded)
run(${MPIEXEC} -n 4 ${APP} train ${DECK} --quiet --set ${SET} checkpoint.dir=${WORK}/resumed2 ${NEW}
    --resume ${WORK}/resharded --summary ${WORK}/resumed2.json)
run(${MPIEXEC} -n 1 ${APP} eval --resume ${A} --tokens ${CORPUS} --summary ${WORK}/eval1.json)
run(${MPIEXEC} -n 3 ${APP} eval --resume ${A} --tokens ${CORPUS} --summary ${WORK}/eval3.json)
run(${APP} ckpt consolidate ${A} ${WORK}/model.h5)
run(${PYTHON} ${CHECKER} ${WORK})
