#!/usr/bin/env bash
# A batch job with a bad deck fails fast: non-zero exit state in scontrol, the deck error
# (naming the key) in the job's output file, well before any time limit.
source "$(dirname "$0")/lib.sh"
require_slurm
w="$(work_dir bad_deck)"
sed 's/^steps = 6$/stepz = 6/' "$SHARDFLOW_HOME/tests/slurm/tiny.toml" | sed "s#\.\./\.\./inputs#$SHARDFLOW_HOME/inputs#" >"$w/bad.toml"
grep -q '^stepz' "$w/bad.toml" || fail "could not make the bad deck"

t0=$SECONDS
jid="$(sbatch --parsable --ntasks=2 --chdir="$w" --time=00:05:00 --export=ALL,SHARDFLOW_RUN_DIR="$w" \
  "$SHARDFLOW_HOME/batch/train.sbatch" "$w/bad.toml")" || fail "sbatch failed"
state="$(wait_job "$jid" 60)"
elapsed=$((SECONDS - t0))
out="$w/shardflow-train-$jid.out"
show_output "$out"
echo "job $jid: state $state, exit $(job_field "$jid" ExitCode), ${elapsed}s"
[[ "$state" == FAILED ]] || fail "job $jid ended '$state', expected FAILED"
[[ "$(job_field "$jid" ExitCode)" != 0:0 ]] || fail "job $jid has exit code 0:0"
grep -q "shardflow: error" "$out" || fail "the error is not in the job's output $out"
grep -q "stepz" "$out" || fail "the error in $out does not name the bad key 'stepz'"
((elapsed < 45)) || fail "the bad job took ${elapsed}s to fail"
[[ ! -e "$w/summary-$jid.json" ]] || fail "a failed job wrote a summary"
echo "PASS: bad deck failed in ${elapsed}s with $(job_field "$jid" ExitCode), error in its output"
