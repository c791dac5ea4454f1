#!/usr/bin/env bash
# A stand-in for `shardflow train` that keeps its batch-job contract, to test the job
# machinery (signal forwarding, requeue, restart chains) apart from the trainer:
#   fake_train.sh train DECK [--set k=v ...] --summary FILE [--resume latest]
# Trains FAKE_STEPS (default 30) steps of FAKE_STEP_S (0.2) seconds; SIGUSR1 or SIGTERM:
# finish the step, "checkpoint" (rank 0 writes the step to $FAKE_STATE/latest), exit 99.
# --resume latest continues after the checkpointed step (fails when there is none). The
# summary lists the steps this process ran. Every rank runs; rank 0 writes the files.
set -u
rank="${SLURM_PROCID:-${PMI_RANK:-0}}"
steps="${FAKE_STEPS:-30}" dt="${FAKE_STEP_S:-0.2}" state="${FAKE_STATE:?FAKE_STATE must name a directory}"
summary="" resume=""
[[ "${1:-}" == train ]] || { echo "fake_train: expected 'train'" >&2; exit 2; }
shift 2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --summary) summary="$2"; shift 2 ;;
    --resume) resume="$2"; shift 2 ;;
    *) shift ;;
  esac
done
start=0
if [[ -n "$resume" ]]; then
  [[ -s "$state/latest" ]] || { echo "fake_train: --resume $resume: no checkpoint in $state" >&2; exit 1; }
  start="$(cat "$state/latest")"
fi
stop=""
trap 'stop=USR1' USR1
trap 'stop=TERM' TERM
done_steps=()
for ((s = start + 1; s <= steps; ++s)); do
  sleep "$dt" & wait $! 2>/dev/null || wait $! 2>/dev/null   # a trapped signal ends `wait` early
  done_steps+=("$s")
  ((rank == 0)) && echo "step $s/$steps"
  if [[ -n "$stop" ]]; then
    ((rank == 0)) && { echo "$s" >"$state/latest.tmp" && mv "$state/latest.tmp" "$state/latest"; echo "SIG$stop: checkpoint at step $s"; }
    exit 99
  fi
done
if ((rank == 0)) && [[ -n "$summary" ]]; then
  printf '{"world_size": %s, "steps": [%s], "final_loss": %s}\n' "${SLURM_NTASKS:-1}" \
    "$(for s in "${done_steps[@]}"; do printf '{"step": %d, "loss": %d}\n' "$s" "$((1000 - s))"; done | paste -sd,)" \
    "$((1000 - steps))" >"$summary"
fi
exit 0
