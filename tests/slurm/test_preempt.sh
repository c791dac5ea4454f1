#!/usr/bin/env bash
# Preemption: `scancel --signal=USR1 --batch` in mid-run → the ranks checkpoint and exit 99
# → the job requeues itself → the requeued job (SLURM_RESTART_COUNT=1) resumes from the
# latest checkpoint → every step after the resume, and the final loss, equal the
# uninterrupted run's bitwise (losses, gradient norms, and the final checkpoint's
# parameters and optimizer state).
# Needs `shardflow train --resume` and its signal contract (docs/slurm.md); skips without.
source "$(dirname "$0")/lib.sh"
require_slurm
"$SHARDFLOW_BIN" train --help 2>&1 | grep -q -- "--resume" ||
  skip "shardflow train has no --resume yet (checkpoint/restart is not on this branch); the preemption test needs it"
w="$(work_dir preempt)"
deck="$SHARDFLOW_HOME/tests/slurm/tiny.toml"
# enough steps (about 2 ms each here) that the run is still going when the signal comes:
# with 80 the job could finish between the poll that saw step 3 and the signal
steps=1500
common=(--set "train.steps=$steps" --set checkpoint.every=0)

mpiexec -n 2 "$SHARDFLOW_BIN" train "$deck" --quiet "${common[@]}" --set "checkpoint.dir=$w/ckpt-ref" \
  --summary "$w/ref.json" || fail "the uninterrupted reference run failed"

jid="$(sbatch --parsable --ntasks=2 --chdir="$w" --time=00:05:00 --export=ALL,SHARDFLOW_RUN_DIR="$w" \
  "$SHARDFLOW_HOME/batch/train.sbatch" "$deck" "${common[@]}" --set "checkpoint.dir=$w/ckpt-job")" ||
  fail "sbatch failed"
out="$w/shardflow-train-$jid.out"
# signal once the run is a few steps in
t0=$SECONDS
until grep -Eq "^step +[3-9]/$steps|^step +[1-9][0-9]/$steps" "$out" 2>/dev/null; do
  ((SECONDS - t0 < 60)) || { show_output "$out"; fail "job $jid made no progress in 60 s"; }
  [[ "$(job_field "$jid" JobState)" =~ ^(RUNNING|PENDING|CONFIGURING)$ ]] ||
    { show_output "$out"; fail "job $jid ended before the signal"; }
  sleep 0.2
done
scancel --signal=USR1 --batch "$jid" || fail "scancel --signal=USR1 --batch $jid failed"
echo "sent SIGUSR1 to job $jid's batch shell at $(grep -Ec '^step ' "$out") steps"
# the job requeues itself, restarts (Restarts=1) and completes
t0=$SECONDS
while (($(job_field "$jid" Restarts) < 1)); do
  ((SECONDS - t0 < 60)) || { show_output "$out"; fail "job $jid was not requeued"; }
  sleep 0.5
done
state="$(wait_job "$jid" 150)"
show_output "$out"
[[ "$state" == COMPLETED ]] || fail "job $jid ended $state after its restart"
grep -q "checkpointed after SIGUSR1; requeueing job $jid" "$out" || fail "the job did not checkpoint and requeue"
grep -q "restart 1" "$out" || fail "the requeued job did not see SLURM_RESTART_COUNT=1"
grep -q -- "--resume latest" "$out" || fail "the requeued job did not resume from latest"
summary="$w/summary-$jid.json"
[[ -f "$summary" ]] || fail "no summary $summary"
first="$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['steps'][0]['step'])" "$summary")"
((first > 1)) || fail "the resumed run started at step $first: it did not resume"
n="$(compare_steps "$w/ref.json" "$summary" "$first")" || fail "the resumed run differs from the uninterrupted run"
# the final parameters and AdamW moments: both final checkpoints, consolidated, bitwise equal
"$SHARDFLOW_BIN" ckpt consolidate "$w/ckpt-ref" "$w/ref.h5" >/dev/null || fail "cannot consolidate $w/ckpt-ref"
"$SHARDFLOW_BIN" ckpt consolidate "$w/ckpt-job" "$w/job.h5" >/dev/null || fail "cannot consolidate $w/ckpt-job"
"$PY" - "$w/ref.h5" "$w/job.h5" <<'PY' || fail "the final checkpoint of the preempted run differs from the uninterrupted run's"
import sys
import h5py
import numpy as np
with h5py.File(sys.argv[1], "r") as a, h5py.File(sys.argv[2], "r") as b:
    names = []
    a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    other = []
    b.visititems(lambda n, o: other.append(n) if isinstance(o, h5py.Dataset) else None)
    assert sorted(names) == sorted(other) and names, (len(names), len(other))
    assert a.attrs["step"] == b.attrs["step"], (a.attrs["step"], b.attrs["step"])
    for n in names:
        x, y = a[n][()], b[n][()]
        assert x.shape == y.shape and np.array_equal(x, y), "tensor %s differs (max |diff| %g)" % (n, np.max(np.abs(x - y)))
    print("%d tensors equal at step %d" % (len(names), a.attrs["step"]))
PY
echo "PASS: job $jid preempted, requeued, resumed at step $first; $n steps and the final parameters equal the uninterrupted run's bitwise"
