"""The subcommands that need no MPI (version, plan, simulate, report) run without MPI_Init in a
process of their own, and everything else still starts MPI. SHARDFLOW_TEST_FAIL_MPI_INIT makes
MPI_Init refuse: then those four must still work, `train` must fail naming the refusal,
`simulate --cluster local` must start MPI for its first-use calibration (and so fail the same
way), and so must simulate when a launcher says it is one of several ranks (PMI_SIZE=2).

usage: check_cli_without_mpi.py APP DECK WORKDIR"""
import os
import shutil
import subprocess
import sys
import time

app, deck, work = sys.argv[1:4]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
env = dict(os.environ, SHARDFLOW_TEST_FAIL_MPI_INIT="1", SHARDFLOW_CLUSTERS=work)
for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE", "JSM_NAMESPACE_SIZE",
          "SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS"):
    env.pop(v, None)
fails = []


def run(args, extra=None, expect_ok=True, expect_text=""):
    e = dict(env, **(extra or {}))
    t0 = time.perf_counter()
    p = subprocess.run([app] + args, env=e, capture_output=True, text=True, timeout=120)
    dt = time.perf_counter() - t0
    out = p.stdout + p.stderr
    # a failure is an exit code with a message, never a signal (a crash)
    ok = (p.returncode == 0 if expect_ok else p.returncode > 0) and expect_text in out
    print(f"{'ok  ' if ok else 'FAIL'} {dt * 1e3:7.1f} ms  rc {p.returncode}  {' '.join(args[:3])} "
          f"{extra or ''}", flush=True)
    if not ok:
        fails.append(f"{args} {extra}: rc {p.returncode}, expected {'0' if expect_ok else 'non-zero'}"
                     f"{' and ' + repr(expect_text) if expect_text else ''}:\n{out[-800:]}")
    return out


run(["version"], expect_text="shardflow ")
run(["--help"], expect_text="simulate")
run(["plan", deck], expect_text="")
run(["simulate", deck, "--cluster", "a100-80gb", "--devices", "8", "--json"], expect_text='"step_time_s"')
run(["simulate", deck, "--cluster", "a100-80gb", "--devices", "8", "--search", "--top", "2"],
    expect_text="configurations")
run(["report", os.path.join(work, "no-such-study")], expect_ok=False, expect_text="no-such-study")
# these need MPI, so the refusal shows
run(["train", deck, "--set", "train.steps=1", "checkpoint.dir=" + os.path.join(work, "ck")], expect_ok=False,
    expect_text="SHARDFLOW_TEST_FAIL_MPI_INIT")
run(["simulate", deck, "--cluster", "local"], expect_ok=False, expect_text="SHARDFLOW_TEST_FAIL_MPI_INIT")
for launcher in ({"PMI_SIZE": "2"}, {"OMPI_COMM_WORLD_SIZE": "4"}, {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}):
    run(["simulate", deck, "--cluster", "a100-80gb", "--devices", "8"], extra=launcher, expect_ok=False,
        expect_text="SHARDFLOW_TEST_FAIL_MPI_INIT")
# one rank of a launcher (mpiexec -n 1, srun -n 1) is alone: no MPI
for launcher in ({"PMI_SIZE": "1"}, {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1"}):
    run(["simulate", deck, "--cluster", "a100-80gb", "--devices", "8"], extra=launcher, expect_text="step")
for f in fails:
    print("FAIL:", f)
print("check_cli_without_mpi:", "ok" if not fails else f"{len(fails)} failure(s)")
sys.exit(1 if fails else 0)
