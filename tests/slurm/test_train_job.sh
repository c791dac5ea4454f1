#!/usr/bin/env bash
# A training job submitted with sbatch (batch/train.sbatch, 2 ranks through srun) completes,
# names its output and summary by job id, and its losses equal the same run under mpiexec.
source "$(dirname "$0")/lib.sh"
require_slurm
w="$(work_dir train_job)"
deck="$SHARDFLOW_HOME/tests/slurm/tiny.toml"

mpiexec -n 2 "$SHARDFLOW_BIN" train "$deck" --quiet --set "checkpoint.dir=$w/ckpt-ref" --summary "$w/ref.json" ||
  fail "the mpiexec reference run failed"

jid="$(sbatch --parsable --ntasks=2 --chdir="$w" --export=ALL,SHARDFLOW_RUN_DIR="$w" \
  "$SHARDFLOW_HOME/batch/train.sbatch" "$deck" --set "checkpoint.dir=$w/ckpt-job")" || fail "sbatch failed"
echo "submitted job $jid"
state="$(wait_job "$jid" 120)"
out="$w/shardflow-train-$jid.out"
show_output "$out"
[[ "$state" == COMPLETED ]] || fail "job $jid ended $state (exit $(job_field "$jid" ExitCode))"
[[ "$(job_field "$jid" ExitCode)" == "0:0" ]] || fail "job $jid exit code $(job_field "$jid" ExitCode)"
grep -q "srun --ntasks=2" "$out" || fail "the job did not launch its ranks with srun --ntasks=2"
summary="$w/summary-$jid.json"
[[ -f "$summary" ]] || fail "no summary named by the job id: $summary"
"$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); sys.exit(0 if s['world_size']==2 else 'world_size %s' % s['world_size'])" "$summary" ||
  fail "the job's summary does not come from 2 ranks"
n="$(compare_steps "$w/ref.json" "$summary")" || fail "the sbatch run's losses differ from the mpiexec run's"
echo "PASS: job $jid: $n steps, losses and gradient norms equal the mpiexec run's bitwise"
