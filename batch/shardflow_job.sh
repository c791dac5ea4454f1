# shellcheck shell=bash
# The body of every shardflow Slurm job (sourced by batch/train.sbatch and by the scripts
# `shardflow submit` writes): launches `shardflow train` with one rank per Slurm task,
# forwards the preemption signal, requeues or ends a checkpointed run, and resumes a
# requeued one. Needs bash; the functions below are its interface.
#
# Settings (environment; all optional):
#   SHARDFLOW_BIN          the shardflow binary (default: `shardflow` on PATH)
#   SHARDFLOW_RUN_DIR      where the summary goes (default: $SLURM_SUBMIT_DIR)
#   SHARDFLOW_LAUNCHER     srun (default) | mpiexec (MPICH's hydra inside the allocation)
#   SHARDFLOW_CPU_BIND     srun --cpu-bind value (default: cores; "none" turns it off)
#   SHARDFLOW_GPU_BIND     srun --gpu-bind value when the job has GPUs (default: closest)
#   SHARDFLOW_ON_SIGNAL    requeue (default): a checkpointed run requeues itself;
#                          exit: it exits 0 so that the next job of a restart chain starts
#   SHARDFLOW_RESUME       auto (default): resume from `latest` when the job was requeued
#                          (SLURM_RESTART_COUNT > 0) or is a later link of a chain
#                          (SHARDFLOW_CHAIN_INDEX > 0); always; never
#   SHARDFLOW_PEAK_GFLOPS  passed as --peak-gflops (the stated per-rank peak for MFU)
#
# The contract with `shardflow train` (apps/train.cpp): on SIGUSR1 or SIGTERM it finishes
# the current step, saves a checkpoint and exits with code 99 ("checkpointed, requeue me").
# Exit 0 means the run is complete; anything else is a failure and fails the job.
# SIGUSR1 (the --signal=B:USR1@LEAD warning, or scancel --signal=USR1 --batch) makes the job
# requeue itself after exit 99; SIGTERM (scancel, preemption) only checkpoints: a cancelled
# job stays cancelled, and a preempted one comes back when PreemptMode=REQUEUE says so.

SHARDFLOW_EXIT_CHECKPOINTED=99

# The tag that names this job's files: JOBID, or ARRAYJOBID_TASKID in a job array.
shardflow_job_tag() {
  if [[ -n "${SLURM_ARRAY_JOB_ID:-}" && -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  else
    echo "${SLURM_JOB_ID:-local$$}"
  fi
}

# MPICH, NCCL and thread settings for one rank per task; a value already set wins.
shardflow_job_env() {
  local cpus="${SLURM_CPUS_PER_TASK:-1}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$cpus}"
  export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$cpus}"
  export OMP_PROC_BIND="${OMP_PROC_BIND:-spread}" OMP_PLACES="${OMP_PLACES:-threads}"
  if [[ -n "${SLURM_GPUS_PER_TASK:-}${SLURM_GPUS_ON_NODE:-}" && "${SLURM_GPUS_ON_NODE:-0}" != "0" ]]; then
    # one rank per GPU: NCCL finds its peers through the MPI bootstrap; keep errors visible
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    export MPIR_CVAR_ENABLE_GPU="${MPIR_CVAR_ENABLE_GPU:-1}"
  else
    # CPU partition: MPICH need not probe for GPUs
    export MPIR_CVAR_ENABLE_GPU="${MPIR_CVAR_ENABLE_GPU:-0}"
  fi
}

# The launcher command (an array named by $1) for SLURM_NTASKS ranks.
shardflow_launcher() {
  local -n _cmd="$1"
  local ntasks="${SLURM_NTASKS:-1}"
  case "${SHARDFLOW_LAUNCHER:-srun}" in
    srun)
      # no --kill-on-bad-exit: exit 99 ("checkpointed") is non-zero, and the first rank to
      # exit must not kill the others while they finish their checkpoint; a rank that fails
      # alone aborts the job itself (MPI_Abort in apps/main.cpp)
      _cmd=(srun --ntasks="$ntasks" --kill-on-bad-exit=0)
      [[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && _cmd+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
      [[ "${SHARDFLOW_CPU_BIND:-cores}" != "none" ]] && _cmd+=(--cpu-bind="${SHARDFLOW_CPU_BIND:-cores}")
      if [[ "${SLURM_GPUS_ON_NODE:-0}" != "0" && -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
        _cmd+=(--gpu-bind="${SHARDFLOW_GPU_BIND:-closest}")
      fi
      ;;
    mpiexec)
      _cmd=(mpiexec -n "$ntasks")
      ;;
    *)
      echo "shardflow job: SHARDFLOW_LAUNCHER='${SHARDFLOW_LAUNCHER}' is not srun or mpiexec" >&2
      return 2
      ;;
  esac
}

# Whether this run resumes from the latest checkpoint (0 = yes).
shardflow_should_resume() {
  case "${SHARDFLOW_RESUME:-auto}" in
    always) return 0 ;;
    never) return 1 ;;
    auto) [[ "${SLURM_RESTART_COUNT:-0}" -gt 0 || "${SHARDFLOW_CHAIN_INDEX:-0}" -gt 0 ]] ;;
    *)
      echo "shardflow job: SHARDFLOW_RESUME='${SHARDFLOW_RESUME}' is not auto, always or never" >&2
      return 1
      ;;
  esac
}

_shardflow_step_pid=""
_shardflow_signalled=""
_shardflow_forward() {
  _shardflow_signalled="$1"
  echo "shardflow job: SIG$1 at $(date +%T): asking the ranks to checkpoint and stop" >&2
  # srun forwards SIGUSR1 to every task; the ranks finish their step and save
  [[ -n "$_shardflow_step_pid" ]] && kill -USR1 "$_shardflow_step_pid" 2>/dev/null
}

# shardflow_run_train DECK [train args...]: runs the job's training step; returns the job's
# exit code (the caller exits with it).
shardflow_run_train() {
  local deck="$1"
  shift
  local tag run_dir bin summary rc
  tag="$(shardflow_job_tag)"
  run_dir="${SHARDFLOW_RUN_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}"
  bin="${SHARDFLOW_BIN:-shardflow}"
  mkdir -p "$run_dir" || return 1
  summary="$run_dir/summary-$tag.json"
  if [[ -n "${SHARDFLOW_CHAIN_DONE:-}" && -e "$SHARDFLOW_CHAIN_DONE" ]]; then
    echo "shardflow job: the chain's run finished before this link ($SHARDFLOW_CHAIN_DONE); nothing to do"
    return 0
  fi
  shardflow_job_env
  local -a launch args
  shardflow_launcher launch || return 2
  args=("$bin" train "$deck" "$@" --summary "$summary")
  [[ -n "${SHARDFLOW_PEAK_GFLOPS:-}" ]] && args+=(--peak-gflops "$SHARDFLOW_PEAK_GFLOPS")
  if shardflow_should_resume; then
    args+=(--resume latest)
  fi
  echo "shardflow job: $tag on ${SLURM_JOB_NODELIST:-$(hostname)} (${SLURM_NTASKS:-1} ranks, restart ${SLURM_RESTART_COUNT:-0}, chain link ${SHARDFLOW_CHAIN_INDEX:-0})"
  echo "shardflow job: ${launch[*]} ${args[*]}"
  trap '_shardflow_forward USR1' USR1
  trap '_shardflow_forward TERM' TERM
  "${launch[@]}" "${args[@]}" &
  _shardflow_step_pid=$!
  # `wait` returns early (status > 128) when a trapped signal arrives; wait again until the
  # step has really ended, so that its exit code is the ranks' own.
  while true; do
    wait "$_shardflow_step_pid"
    rc=$?
    kill -0 "$_shardflow_step_pid" 2>/dev/null || break
  done
  trap - USR1 TERM
  _shardflow_step_pid=""
  if [[ $rc -eq $SHARDFLOW_EXIT_CHECKPOINTED ]]; then
    # SIGTERM comes from scancel, from preemption (where PreemptMode decides whether Slurm
    # requeues the job) or at the time limit itself: keep the checkpoint, let Slurm decide.
    # (`scontrol requeue` would even bring back a cancelled job.)
    if [[ "$_shardflow_signalled" == TERM ]]; then
      echo "shardflow job: checkpointed after SIGTERM (scancel, preemption or the time limit); not requeueing"
      return 0
    fi
    if [[ "${SHARDFLOW_ON_SIGNAL:-requeue}" == "requeue" && -n "${SLURM_JOB_ID:-}" ]]; then
      echo "shardflow job: checkpointed after SIG${_shardflow_signalled:-?}; requeueing job ${SLURM_JOB_ID}"
      scontrol requeue "${SLURM_JOB_ID}" || {
        echo "shardflow job: scontrol requeue ${SLURM_JOB_ID} failed" >&2
        return 1
      }
      return 0
    fi
    echo "shardflow job: checkpointed after SIG${_shardflow_signalled:-?}; the next link of the chain resumes"
    return 0
  fi
  if [[ $rc -ne 0 ]]; then
    echo "shardflow job: training failed with exit code $rc" >&2
    return "$rc"
  fi
  [[ -n "${SHARDFLOW_CHAIN_DONE:-}" ]] && : >"$SHARDFLOW_CHAIN_DONE"
  echo "shardflow job: done; summary $summary"
  return 0
}
