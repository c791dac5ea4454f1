#!/usr/bin/env bash
# `shardflow submit` and `shardflow report` without a Slurm: --dry-run prints valid job
# arrays and writes nothing; bad sweeps fail naming the file, line and value; a real submit
# through a stand-in sbatch records the job ids; running the written array scripts (as
# Slurm would, with SLURM_ARRAY_TASK_ID, but launching with mpiexec) trains every
# configuration; report turns the summaries into a CSV whose numbers check out.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PY=/usr/bin/python3
[[ -x "$PY" ]] || PY=python3
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
w="$SLURM_TEST_WORK/submit_local"
rm -rf "$w" && mkdir -p "$w"
deck="$SHARDFLOW_HOME/tests/slurm/tiny.toml"
sweep="$here/sweep_tiny.toml"

# ---- dry run --------------------------------------------------------------------------
out="$("$SHARDFLOW_BIN" submit "$deck" --sweep "$sweep" --dir "$w/dry" --dry-run)" || fail "dry run failed"
echo "$out"
[[ ! -e "$w/dry" ]] || fail "--dry-run wrote $w/dry"
[[ "$(grep -c '^# ===== ' <<<"$out")" == 2 ]] || fail "expected 2 job arrays (1 and 2 ranks)"
grep -q -- '--array=0-1$' <<<"$out" || fail "the 2-rank array does not have 2 tasks"
grep -q -- '--array=0-0$' <<<"$out" || fail "the 1-rank array does not have 1 task"
grep -q -- '--ntasks=2$' <<<"$out" || fail "no --ntasks=2"
grep -q -- '--signal=B:USR1@30$' <<<"$out" || fail "no preemption signal line"
grep -q -- "--set 'mesh.fsdp=2'" <<<"$out" || fail "the fsdp configuration is missing"
grep -q -- "--set 'train.steps=5'" <<<"$out" || fail "study.steps is not passed"
awk -v base="$w/script" '/^# ===== /{n++; next} n {print > (base "." n)}' <<<"$out"
for f in "$w"/script.1 "$w"/script.2; do bash -n "$f" || fail "$f is not valid bash"; done

# ---- bad sweeps name the problem ------------------------------------------------------
expect_error() {  # expect_error NAME PATTERN: the sweep in $w/NAME.toml fails with PATTERN
  local msg
  if msg="$("$SHARDFLOW_BIN" submit "$deck" --sweep "$w/$1.toml" --dry-run 2>&1)"; then
    fail "sweep $1 was accepted"
  fi
  grep -Eq "$2" <<<"$msg" || fail "sweep $1: error '$msg' does not match '$2'"
  echo "ok: $1 -> $msg"
}
printf '[[config]]\nranks = 2\nmesh = { data = 4 }\n' >"$w/product.toml"
expect_error product "product.toml:1: the mesh data4 has 4 devices but the configuration has ranks = 2"
printf '[study]\nscaling = "sideways"\n[[config]]\nranks = 1\n' >"$w/scaling.toml"
expect_error scaling "scaling.toml:2: study.scaling = 'sideways' must be 'strong' or 'weak'"
printf '[[config]]\nranks = 1\nmesh = { model = 1 }\n' >"$w/axis.toml"
expect_error axis "axis.toml:3: mesh axis 'model' is not one of"
printf '[[config]]\nranks = 3\n' >"$w/batch.toml"
expect_error batch "configuration 'n3-data3'.*global_batch"
printf '[[config]]\nranks = 1\nset = ["train.stepz=3"]\n' >"$w/key.toml"
expect_error key "stepz"

# ---- weak scaling scales the global batch per data-parallel rank -----------------------
printf '[study]\nscaling = "weak"\n[sweep]\nranks = [1, 2, 4]\n' >"$w/weak.toml"
out="$("$SHARDFLOW_BIN" submit "$deck" --sweep "$w/weak.toml" --dry-run)" || fail "weak dry run failed"
for gb in 8 16 32; do grep -q -- "--set 'train.global_batch=$gb'" <<<"$out" || fail "weak: no global_batch=$gb"; done

# ---- submit through a stand-in sbatch, run the array tasks locally, report -------------
cat >"$w/fake-sbatch" <<FAKE
#!/usr/bin/env bash
# records the script and answers like sbatch --parsable
n=\$(ls "$w"/submitted.* 2>/dev/null | wc -l)
cp "\${@: -1}" "$w/submitted.\$n"
echo "\$((7000 + n))"
FAKE
chmod +x "$w/fake-sbatch"
"$SHARDFLOW_BIN" submit "$deck" --sweep "$sweep" --dir "$w/study" --sbatch "$w/fake-sbatch" || fail "submit failed"
mapfile -t tasks < <("$PY" -c "
import json,sys
for c in json.load(open(sys.argv[1]))['configs']: print(c['job_id'], c['ranks'], c['script'])" "$w/study/study.json")
((${#tasks[@]} == 3)) || fail "study.json has ${#tasks[@]} configurations"
grep -q "^n2-fsdp2,2,0,fsdp2,8,5,7001_1," "$w/study/study.csv" || fail "study.csv lacks n2-fsdp2: $(cat "$w/study/study.csv")"
for t in "${tasks[@]}"; do
  read -r id ranks script <<<"$t"
  [[ "$id" =~ ^700[01]_[01]$ ]] || fail "job id $id"
  echo "running array task $id ($ranks ranks) of $script"
  env SLURM_ARRAY_JOB_ID="${id%_*}" SLURM_ARRAY_TASK_ID="${id#*_}" SLURM_JOB_ID="9${id%_*}${id#*_}" \
    SLURM_NTASKS="$ranks" SHARDFLOW_LAUNCHER=mpiexec bash "$script" >"$w/task-$id.out" 2>&1 ||
    { cat "$w/task-$id.out"; fail "array task $id failed"; }
done
"$SHARDFLOW_BIN" report "$w/study" --no-plots || fail "report failed"
"$PY" "$here/check_report.py" "$w/study" 5 n1-data1 n2-data2 n2-fsdp2 || fail "the report does not match the records"
# --simulate: every configuration predicted beside its measurement, each family extended
"$SHARDFLOW_BIN" report "$w/study" --no-plots --simulate "$SHARDFLOW_HOME/inputs/clusters/a100-80gb.toml" \
  --extend 4,8 >"$w/report-sim.txt" || { cat "$w/report-sim.txt"; fail "report --simulate failed"; }
"$PY" - "$w/study/report.csv" <<'CHECK' || fail "report --simulate: the CSV lacks the predictions"
import csv, sys
rows = {r["name"]: r for r in csv.DictReader(open(sys.argv[1]))}
for n in ("n1-data1", "n2-data2", "n2-fsdp2"):
    r = rows[n]
    assert float(r["predicted_step_time_s"]) > 0 and float(r["predicted_tokens_per_s"]) > 0, n
    assert abs(float(r["predicted_over_measured"]) * float(r["median_step_time_s"]) - float(r["predicted_step_time_s"])) < 1e-9, n
for n in ("data@4", "data@8", "fsdp@4", "fsdp@8"):
    assert rows[n]["status"] == "predicted" and float(rows[n]["predicted_step_time_s"]) > 0, n
    assert int(rows[n]["ranks"]) == int(n.split("@")[1]), n
print("report --simulate: predictions for 3 configurations and 4 extensions")
CHECK
grep -q "predicted / measured" "$w/report-sim.txt" || fail "report --simulate: no predicted / measured in the statement"
echo "PASS"
