#!/usr/bin/env bash
# A restart chain (batch/chain.sh) for a run longer than its time limit, with the stand-in
# trainer: link 0 gets the SIGUSR1 that Slurm sends ahead of the time limit
# (--signal=B:USR1@LEAD; here delivered at once with scancel --signal=USR1 --batch, since
# slurmctld checks time limits only every ~30 s), checkpoints and exits 0; link 1
# (--dependency=afterok) resumes from latest and finishes; link 2 sees the finished run and
# ends at once.
source "$(dirname "$0")/lib.sh"
require_slurm
w="$(work_dir chain)"
mkdir -p "$w/state"
export SHARDFLOW_RUN_DIR="$w" SHARDFLOW_BIN="$SHARDFLOW_HOME/tests/slurm/fake_train.sh" FAKE_STATE="$w/state"
export FAKE_STEPS=70 FAKE_STEP_S=0.1
mapfile -t jobs < <("$SHARDFLOW_HOME/batch/chain.sh" 3 --ntasks=2 --time=5 --chdir="$w" -- deck.toml)
((${#jobs[@]} == 3)) || fail "chain.sh printed ${#jobs[@]} job ids"
echo "chain: ${jobs[*]}"
[[ "$(job_field "${jobs[1]}" Dependency)" == "afterok:${jobs[0]}"* ]] || fail "link 1 does not depend on link 0: $(job_field "${jobs[1]}" Dependency)"
t0=$SECONDS
until grep -q "^step 4/70" "$w/shardflow-train-${jobs[0]}.out" 2>/dev/null; do
  ((SECONDS - t0 < 30)) || { show_output "$w/shardflow-train-${jobs[0]}.out"; fail "link 0 made no progress"; }
  sleep 0.1
done
scancel --signal=USR1 --batch "${jobs[0]}" || fail "scancel --signal=USR1 --batch failed"
for j in "${jobs[@]}"; do
  state="$(wait_job "$j" 120)"
  show_output "$w/shardflow-train-$j.out"
  [[ "$state" == COMPLETED ]] || fail "chain link $j ended $state"
done
grep -q "checkpointed after SIGUSR1; the next link of the chain resumes" "$w/shardflow-train-${jobs[0]}.out" ||
  fail "link 0 did not checkpoint and end on SIGUSR1"
ck="$(grep -o 'checkpoint at step [0-9]*' "$w/shardflow-train-${jobs[0]}.out" | grep -o '[0-9]*$')"
grep -q -- "--resume latest" "$w/shardflow-train-${jobs[1]}.out" || fail "link 1 did not resume"
"$PY" - "$w/summary-${jobs[1]}.json" "$ck" <<'PY' || fail "link 1 did not run exactly the remaining steps"
import json, sys
s, ck = json.load(open(sys.argv[1])), int(sys.argv[2])
assert [x["step"] for x in s["steps"]] == list(range(ck + 1, 71)), (ck, s["steps"])
PY
grep -q "finished before this link" "$w/shardflow-train-${jobs[2]}.out" || fail "link 2 did not see the finished run"
echo "PASS: chain ${jobs[*]}: link 0 stopped at step $ck by SIGUSR1, link 1 finished, link 2 had nothing to do"
