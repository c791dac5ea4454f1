#!/usr/bin/env bash
# The preemption machinery of batch/train.sbatch, with a stand-in trainer that keeps the
# contract (tests/slurm/fake_train.sh): `scancel --signal=USR1 --batch` in mid-run → the
# batch shell forwards SIGUSR1 through srun to both ranks → they checkpoint and exit 99 →
# the job requeues itself → the requeued job (SLURM_RESTART_COUNT=1) passes --resume latest
# and runs exactly the remaining steps. And a plain `scancel` (SIGTERM to the same shell)
# also checkpoints (the ranks see SIGTERM from slurmstepd or the SIGUSR1 the shell forwards,
# whichever comes first), but leaves the job CANCELLED: no requeue.
source "$(dirname "$0")/lib.sh"
require_slurm
w="$(work_dir requeue)"
mkdir -p "$w/state"
jid="$(sbatch --parsable --ntasks=2 --chdir="$w" --time=00:05:00 \
  "--export=ALL,SHARDFLOW_RUN_DIR=$w,SHARDFLOW_BIN=$SHARDFLOW_HOME/tests/slurm/fake_train.sh,FAKE_STATE=$w/state,FAKE_STEPS=30" \
  "$SHARDFLOW_HOME/batch/train.sbatch" deck.toml --set a=b)" || fail "sbatch failed"
out="$w/shardflow-train-$jid.out"
t0=$SECONDS
until grep -q "^step 4/30" "$out" 2>/dev/null; do
  ((SECONDS - t0 < 30)) || { show_output "$out"; fail "job $jid made no progress"; }
  sleep 0.1
done
scancel --signal=USR1 --batch "$jid" || fail "scancel --signal=USR1 --batch failed"
t0=$SECONDS
while (($(job_field "$jid" Restarts) < 1)); do
  ((SECONDS - t0 < 30)) || { show_output "$out"; fail "job $jid was not requeued"; }
  sleep 0.2
done
state="$(wait_job "$jid" 90)"
show_output "$out"
[[ "$state" == COMPLETED ]] || fail "job $jid ended $state"
[[ "$(job_field "$jid" Restarts)" == 1 ]] || fail "job $jid restarted $(job_field "$jid" Restarts) times, expected 1"
ck="$(cat "$w/state/latest")"
((ck >= 4 && ck < 30)) || fail "checkpoint at step $ck"
grep -q "SIGUSR1: checkpoint at step $ck" "$out" || fail "the ranks did not see SIGUSR1"
grep -q "checkpointed after SIGUSR1; requeueing job $jid" "$out" || fail "the job did not requeue itself"
grep -q "restart 1" "$out" || fail "the requeued job did not see SLURM_RESTART_COUNT=1"
grep -q -- "--resume latest" "$out" || fail "the requeued job did not pass --resume latest"
"$PY" - "$w/summary-$jid.json" "$ck" <<'PY' || fail "the resumed run did not run exactly the remaining steps"
import json, sys
s, ck = json.load(open(sys.argv[1])), int(sys.argv[2])
got = [x["step"] for x in s["steps"]]
assert got == list(range(ck + 1, 31)), (ck, got)
assert s["world_size"] == 2
PY
echo "ok: job $jid checkpointed at step $ck on SIGUSR1, requeued itself and resumed for steps $((ck + 1))-30"

# ---- scancel: checkpoint, but stay cancelled --------------------------------------------
mkdir -p "$w/state2"
jid2="$(sbatch --parsable --ntasks=2 --chdir="$w" --time=00:05:00 \
  "--export=ALL,SHARDFLOW_RUN_DIR=$w,SHARDFLOW_BIN=$SHARDFLOW_HOME/tests/slurm/fake_train.sh,FAKE_STATE=$w/state2,FAKE_STEPS=30" \
  "$SHARDFLOW_HOME/batch/train.sbatch" deck.toml)" || fail "sbatch failed"
out2="$w/shardflow-train-$jid2.out"
t0=$SECONDS
until grep -q "^step 3/30" "$out2" 2>/dev/null; do
  ((SECONDS - t0 < 30)) || { show_output "$out2"; fail "job $jid2 made no progress"; }
  sleep 0.1
done
scancel "$jid2" || fail "scancel $jid2 failed"
state="$(wait_job "$jid2" 30)"
sleep 3  # a requeue would show at once as Restarts=1 and a pending job
show_output "$out2"
[[ "$(job_field "$jid2" JobState)" == CANCELLED ]] || fail "job $jid2 is $(job_field "$jid2" JobState) after scancel"
[[ "$(job_field "$jid2" Restarts)" == 0 ]] || fail "the cancelled job $jid2 was requeued"
grep -Eq "SIG(TERM|USR1): checkpoint at step" "$out2" || fail "the ranks did not checkpoint on scancel"
grep -q "checkpointed after SIGTERM (scancel, preemption or the time limit); not requeueing" "$out2" || fail "the job body did not see the cancellation"
echo "PASS: SIGUSR1 -> checkpoint, requeue, resume (job $jid); scancel -> checkpoint, stays cancelled (job $jid2, $state)"
