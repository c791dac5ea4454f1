#!/usr/bin/env python3
"""`shardflow calibrate` on two ranks writes a cluster file that `simulate --cluster FILE` reads:
the link measured between the ranks (not estimated), a positive f32 peak, a GEMM curve of
fractions in (0, 1] whose largest is 1, a bandwidth, an elementwise efficiency in (0, 1]
with the measured value beside it, the attention-dropout mask's cost per element, and a
simulated dp2 step of the bench deck that is positive, no longer than the same deck on one
rank of the same file, and shorter than the same step with attention dropout.

  calibrate_local.py --app shardflow --mpiexec mpiexec --deck inputs/bench.toml
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

p = argparse.ArgumentParser()
p.add_argument("--app", required=True)
p.add_argument("--mpiexec", default="mpiexec")
p.add_argument("--deck", required=True)
a = p.parse_args()

fails = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        fails.append(what)

with tempfile.TemporaryDirectory(prefix="shardflow-calibrate-") as d:
    f = os.path.join(d, "local.toml")
    subprocess.run([a.mpiexec, "-n", "2", a.app, "calibrate", "--quick", "--output", f], check=True,
                   stdout=subprocess.DEVNULL)
    text = open(f).read()
    check("ESTIMATED" not in text and "MPI ping-pong between ranks 0 and 1" in text, "the link is measured")
    peak = float(re.search(r"peak_tflops = \{ f32 = ([0-9.eE+-]+)", text).group(1))
    check(peak > 0, f"f32 peak {peak} TFLOP/s > 0")
    curve = [float(x) for x in re.findall(r"\[\d+, ([0-9.]+)\]", re.search(r"gemm_efficiency = (.*)", text).group(1))]
    check(len(curve) == 6 and all(0 < c <= 1 for c in curve) and max(curve) == 1.0, f"GEMM curve {curve}")
    bw = float(re.search(r"memory_bandwidth_gbs = ([0-9.]+)", text).group(1))
    check(bw > 0, f"bandwidth {bw} GB/s > 0")
    m = re.search(r"elementwise_efficiency = ([0-9.]+) .*measured ([0-9.]+)", text)
    check(m is not None and 0 < float(m.group(1)) <= 1 and float(m.group(1)) == min(1.0, round(float(m.group(2)), 4)),
          f"elementwise efficiency {m.group(1) if m else None} (measured {m.group(2) if m else None})")

    mask = re.search(r"dropout_mask_ns = ([0-9.]+)", text)
    check(mask is not None and 0 < float(mask.group(1)) < 1000, f"dropout mask {mask.group(1) if mask else None} ns per element")

    def sim(*sets):
        out = subprocess.run([a.app, "simulate", a.deck, "--cluster", f, "--json", "--set", *sets], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out)["step_time_s"]
    dp2, one = sim("mesh.data=2"), sim("mesh.data=1")
    check(0 < dp2 <= one, f"dp2 step {dp2:.4f} s, one rank {one:.4f} s")
    # attention dropout costs its measured mask on this file (and its two passes over P)
    drop = sim("mesh.data=2", "model.attention_dropout=0.1")
    check(drop > dp2, f"dp2 with attention dropout {drop:.4f} s > {dp2:.4f} s")
sys.exit(1 if fails else 0)
