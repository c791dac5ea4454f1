# Slurm: batch scripts (batch/), `shardflow submit` / `shardflow report`, and a real
# single-node Slurm started by the suite. The `slurm` fixture installs slurm-wlm and munge
# (scripts/setup.sh --slurm), starts munged, slurmctld and slurmd as root
# (scripts/slurm/start.sh) and stops them by their recorded PIDs afterwards
# (scripts/slurm/stop.sh, run even when a test fails). Without root every test of the
# label skips (exit 77) with its reason. SHARDFLOW_SLURM_DIR holds the test Slurm's state.
set(SHARDFLOW_SLURM_DIR /tmp/shardflow-slurm CACHE PATH "State, spool and logs of the test Slurm")
set(_slurm_work ${CMAKE_CURRENT_BINARY_DIR}/slurm-work)
set(_slurm_env
  SLURM_CONF=${SHARDFLOW_SLURM_DIR}/slurm.conf
  SHARDFLOW_HOME=${PROJECT_SOURCE_DIR}
  SHARDFLOW_BIN=$<TARGET_FILE:shardflow_cli>
  SLURM_TEST_WORK=${_slurm_work}
  SHARDFLOW_CPU_BIND=none)  # the test Slurm has TaskPlugin=task/none: no binding

# Without Slurm: submit --dry-run, sweep errors, the written array scripts run locally
# under mpiexec, and report on their summaries.
add_test(NAME slurm_submit_report_local COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/slurm/test_submit_local.sh)
set_tests_properties(slurm_submit_report_local PROPERTIES LABELS "mpi;submit" TIMEOUT 300 PROCESSORS 2
  ENVIRONMENT "${_slurm_env}")

add_test(NAME slurm_start COMMAND ${PROJECT_SOURCE_DIR}/scripts/slurm/start.sh --install ${SHARDFLOW_SLURM_DIR})
set_tests_properties(slurm_start PROPERTIES LABELS slurm FIXTURES_SETUP slurm SKIP_RETURN_CODE 77 TIMEOUT 300)
add_test(NAME slurm_stop COMMAND ${PROJECT_SOURCE_DIR}/scripts/slurm/stop.sh ${SHARDFLOW_SLURM_DIR})
set_tests_properties(slurm_stop PROPERTIES LABELS slurm FIXTURES_CLEANUP slurm TIMEOUT 60)

foreach(t train_job sweep bad_deck requeue chain preempt)
  add_test(NAME slurm_${t} COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/slurm/test_${t}.sh)
  # RESOURCE_LOCK: one Slurm test at a time, they share the test Slurm's 4 CPUs
  set_tests_properties(slurm_${t} PROPERTIES LABELS slurm FIXTURES_REQUIRED slurm SKIP_RETURN_CODE 77
    TIMEOUT 240 RESOURCE_LOCK shardflow_slurm ENVIRONMENT "${_slurm_env}")
endforeach()
