# shellcheck shell=bash
# Helpers for the Slurm tests (tests/slurm.cmake): each test script sources this file.
# Environment from CTest: SLURM_CONF, SHARDFLOW_BIN, SHARDFLOW_HOME, SLURM_TEST_WORK.
set -uo pipefail
export PATH="$PATH:/usr/sbin"
# Bitwise comparisons need the same BLAS threading in the mpiexec reference as in the job
# (shardflow_job.sh gives each rank SLURM_CPUS_PER_TASK = 1 thread): OpenBLAS's threaded
# gemm rounds differently.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

skip() {
  echo "SKIP: $*"
  exit 77
}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# The test Slurm must be up (the slurm_start fixture); otherwise say why and skip.
require_slurm() {
  [[ $(id -u) -eq 0 ]] || skip "the Slurm tests need root to run the test Slurm (uid $(id -u))"
  command -v sbatch >/dev/null 2>&1 || skip "Slurm is not installed (the slurm_start fixture installs it)"
  [[ -f "${SLURM_CONF:-}" ]] || skip "no test Slurm configuration at '${SLURM_CONF:-}' (slurm_start did not run)"
  scontrol ping 2>/dev/null | grep -q UP || skip "the test Slurm is not running (slurm_start failed or was skipped)"
}

# A fresh work directory for this test.
work_dir() {
  local d="$SLURM_TEST_WORK/$1"
  rm -rf "$d"
  mkdir -p "$d"
  echo "$d"
}

PY=/usr/bin/python3
[[ -x "$PY" ]] || PY=python3

# job_field JOB FIELD: one field of `scontrol show job` (e.g. JobState, ExitCode, Restarts).
job_field() {
  scontrol show job -o "$1" 2>/dev/null | head -n1 | tr ' ' '\n' | sed -n "s/^$2=//p"
}

# wait_job JOB TIMEOUT_S: waits until the job has ended; prints its final state.
wait_job() {
  local job="$1" timeout="$2" state="" t0=$SECONDS
  while ((SECONDS - t0 < timeout)); do
    state="$(job_field "$job" JobState)"
    case "$state" in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
        echo "$state"
        return 0
        ;;
    esac
    sleep 0.5
  done
  echo "TIMEOUT_WAITING($state)"
  return 1
}

# show_output FILE...: the job outputs, for the test log.
show_output() {  # the last 80 lines of each file (a long run's step lines say little)
  for f in "$@"; do
    echo "---- $f ($(wc -l <"$f" 2>/dev/null || echo 0) lines; the last 80)"
    tail -n 80 "$f" 2>/dev/null || echo "(missing)"
  done
}

# compare_steps A.json B.json [FIRST_STEP]: every step of B (from FIRST_STEP on) has the
# same step number, loss and grad norm as the same step of A, bitwise; prints the count.
compare_steps() {
  "$PY" - "$@" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
ref = {s["step"]: s for s in a["steps"]}
got = [s for s in b["steps"] if s["step"] >= first]
if not got:
    sys.exit(f"{sys.argv[2]} has no steps from {first} on")
for s in got:
    r = ref.get(s["step"])
    if r is None:
        sys.exit(f"step {s['step']} of {sys.argv[2]} is not in {sys.argv[1]}")
    for k in ("loss", "grad_norm"):
        if s[k] != r[k]:
            sys.exit(f"step {s['step']}: {k} {s[k]!r} in {sys.argv[2]} != {r[k]!r} in {sys.argv[1]}")
if b["final_loss"] != a["final_loss"]:
    sys.exit(f"final_loss {b['final_loss']!r} != {a['final_loss']!r}")
print(len(got))
PY
}
