"""A memory budget (issue 12 item 5), as a user meets it, on the quickstart deck on 2 ranks:
  1. train.memory_limit_gib below DP's predicted peak: refused before the first step on
     every rank, naming the largest part and a configuration that fits; that
     configuration then trains under the same budget, its measured peak below it.
  2. A resumed run whose async checkpoint snapshot passes the budget (the step itself
     fits, so it starts): it stops cleanly at the check after the step that saved, with the
     same kind of message; the checkpoint committed before is still `latest` and verifies."""
import json
import os
import re
import shlex
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fault"))
import common  # noqa: E402

a = common.args()
GIB = 1024.0 ** 3


def train(name, sets, extra=(), ck=None):
    ck = ck or os.path.join(a.work, "ck-" + name)
    js = os.path.join(a.work, name + ".json")
    cmd = [a.mpiexec, "-n", "2", a.app, "train", a.deck, "--set", "train.steps=3", "mesh.data=2"] + sets + [
        "checkpoint.dir=" + ck, "--summary", js, "--quiet"] + list(extra)
    rc, out, err, _ = common.run(cmd, timeout=300)
    summ = None
    if rc == 0:
        with open(js) as f:
            summ = json.load(f)
    return rc, out + err, summ, ck


# the DP step's predicted peak, from a run without a budget
rc, log, dp, _ = train("dp", [])
common.check(rc == 0, f"DP without a budget trains (rc {rc})")
if rc != 0:
    common.finish()
dp_peak = max(dp["memory_predicted_peak_bytes"])
limit = 0.75 * dp_peak / GIB  # DP does not fit, ZeRO + recompute will
rc, log, _, _ = train("dp_refused", ["train.memory_limit_gib=%.6f" % limit])
common.check(rc != 0, f"DP under memory_limit_gib {limit:.4f} (75% of its predicted peak) is refused (rc {rc})")
common.check("step needs" in log and "The largest part is" in log and "This would fit: --set" in log,
             "the refusal names the need, the largest part and a configuration that fits:\n    " +
             log.strip().splitlines()[-1][:600] if log.strip() else "no output")
common.check("step 1/" not in log, "no step ran")
m = re.search(r"This would fit: --set (.*?) \(predicted peak", log)
if m:
    fix = shlex.split(m.group(1))
    rc, log2, fit, _ = train("fits", ["train.memory_limit_gib=%.6f" % limit] + fix)
    common.check(rc == 0, f"the suggested configuration {fix} trains under the same budget (rc {rc}) {log2[-400:]}")
    if fit:
        meas = max(fit["memory_measured_peak_bytes"])
        common.check(0 < meas <= limit * GIB, f"its measured peak {meas} bytes is below the budget {limit * GIB:.0f} "
                                              f"(DP's predicted peak {dp_peak})")

# the "done when": ZeRO-3 + full recomputation + bf16 trains under the budget DP was
# refused at, its measured peak below it
Z3 = ["mesh.data=1", "mesh.fsdp=2", "strategy.zero_stage=3", 'strategy.recompute="full"', 'train.precision="bf16"']
rc, log3, z3, _ = train("zero3_full_bf16", ["train.memory_limit_gib=%.6f" % limit] + Z3)
common.check(rc == 0, f"ZeRO-3 + full recompute + bf16 trains under memory_limit_gib {limit:.4f} (rc {rc}) {log3[-400:]}")
if z3:
    meas = max(z3["memory_measured_peak_bytes"])
    common.check(0 < meas <= limit * GIB, f"ZeRO-3 + full recompute + bf16: measured peak {meas} bytes, budget "
                                          f"{limit * GIB:.0f}, DP's predicted peak {dp_peak}, DP's measured peak "
                                          f"{max(dp['memory_measured_peak_bytes'])}")

# 2. the step fits, an async save's snapshot of the state does not
rc, log, first, ck = train("first", [])
common.check(rc == 0 and common.latest(ck) is not None, f"a first run commits a checkpoint (rc {rc})")
before = common.latest(ck)
fresh = max(first["memory_predicted_peak_bytes"]) if first else 0
# the snapshot copies what a rank writes: about half its parameters and moments on dp2
state = (max(first["model_state_bytes"]) - first["memory_bytes_rank0"]["grads"]) if first else 0
limit2 = (fresh + 0.2 * state) / GIB
rc, log, _, _ = train("resumed", ["train.steps=8", "checkpoint.every=1", "checkpoint.async=true",
                                  "train.memory_limit_gib=%.6f" % limit2], extra=["--resume", "latest"], ck=ck)
common.check(rc != 0 and "allocations reached (measured)" in log,
             f"the resumed run with async saves stops cleanly past memory_limit_gib {limit2:.4f} (rc {rc}): " +
             (log.strip().splitlines()[-1][:400] if log.strip() else ""))
common.check(common.latest(ck) == before, f"`latest` still points to {before} ({common.latest(ck)})")
rc, out, err, _ = common.run([a.app, "ckpt", "verify", ck], timeout=120)
common.check(rc == 0, f"the committed checkpoint verifies (rc {rc}) {(out + err)[-300:]}")
common.finish()
