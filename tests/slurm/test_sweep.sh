#!/usr/bin/env bash
# A scaling study end to end: `shardflow submit` builds and submits one job array per rank
# count, every array task completes, `shardflow report` writes the CSV, the statement and
# the PNG plots; the CSV's numbers are those of the run summaries; the 2-rank runs train
# the same model as the 1-rank run (losses equal to fp tolerance).
source "$(dirname "$0")/lib.sh"
require_slurm
w="$(work_dir sweep)"
deck="$SHARDFLOW_HOME/tests/slurm/tiny.toml"
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "installing gnuplot-nox for the report's plots"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null 2>&1; } ||
    skip "gnuplot-nox cannot be installed here (no package mirror?)"
fi

"$SHARDFLOW_BIN" submit "$deck" --sweep "$SHARDFLOW_HOME/tests/slurm/sweep_tiny.toml" --dir "$w/study" ||
  fail "shardflow submit failed"
[[ -f "$w/study/study.json" && -f "$w/study/study.csv" ]] || fail "submit did not record the study"
mapfile -t jobs < <("$PY" -c "import json,sys; [print(c['job_id']) for c in json.load(open(sys.argv[1]))['configs']]" "$w/study/study.json")
((${#jobs[@]} == 3)) || fail "study.json records ${#jobs[@]} jobs, expected 3"
for j in "${jobs[@]}"; do
  [[ "$j" =~ ^[0-9]+_[0-9]+$ ]] || fail "job id '$j' is not ARRAYJOB_TASK"
done
for j in "${jobs[@]}"; do
  state="$(wait_job "$j" 150)"
  if [[ "$state" != COMPLETED ]]; then
    show_output "$w"/study/logs/*.out
    fail "array task $j ended $state"
  fi
done
echo "all ${#jobs[@]} array tasks completed"

"$SHARDFLOW_BIN" report "$w/study" || fail "shardflow report failed"
for f in report.csv report.txt throughput.png efficiency.png breakdown.png report.png; do
  [[ -s "$w/study/$f" ]] || fail "report did not write $f"
done
for f in throughput efficiency breakdown report; do
  [[ "$(head -c 8 "$w/study/$f.png" | od -An -tx1 | tr -d ' \n')" == 89504e470d0a1a0a ]] || fail "$f.png is not a PNG"
done
grep -q "strong-scaling efficiency of n2-data2 at 2 ranks" "$w/study/report.txt" || fail "report.txt states no efficiency"

"$PY" "$SHARDFLOW_HOME/tests/slurm/check_report.py" "$w/study" 5 n1-data1 n2-data2 n2-fsdp2 ||
  fail "the report does not match the run records"
echo "PASS: study of ${#jobs[@]} configurations submitted, completed and reported"
