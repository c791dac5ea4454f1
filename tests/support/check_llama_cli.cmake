# The Llama quickstart through the CLI (issue 16): inputs/llama_quickstart.toml trains on 2
# ranks and its loss falls below MAX_LOSS (as the GPT quickstart's does); the checkpoint is
# consolidated and read with h5py (docs/model.md's names and shapes), evaluated by `shardflow
# eval`, and an independent NumPy implementation of docs/model.md's Llama computes the same
# loss from the consolidated file (check_llama_cli.py).
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
include(${CMAKE_CURRENT_LIST_DIR}/cli_run.cmake)
run(${MPIEXEC} -n 2 ${APP} train ${DECK} --set train.steps=${STEPS} checkpoint.dir=${WORK}/ck --summary ${WORK}/train.json --quiet)
run(${APP} ckpt consolidate ${WORK}/ck ${WORK}/model.h5)
# four sequences of S + 1 bytes from the corpus
file(READ ${CORPUS} text LIMIT 4000)
string(SUBSTRING "${text}" 1000 260 part)
file(WRITE ${WORK}/tokens.txt "${part}")
run(${MPIEXEC} -n 2 ${APP} eval --resume ${WORK}/ck --tokens ${WORK}/tokens.txt --summary ${WORK}/eval.json)
run(${PYTHON} ${CHECKER} ${WORK} ${MAX_LOSS})
