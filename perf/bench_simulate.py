#!/usr/bin/env python3
"""The simulator against real runs on this machine (issue 13 item 3): calibrates this machine
(`mpiexec -n 2 shardflow calibrate`), then, in paired rounds, trains the bench deck on 2 ranks
in several configurations and simulates the same decks with `--cluster` set to the calibrated
file. Reports each configuration's simulated step time against the measured median and fastest
step per round, and the same simulation on a quick calibration (`calibrate --quick`, about a
second) taken right before that run ("recal"): this VM's cores change speed by tens of percent
from one minute to the next, so a calibration made minutes earlier may have seen another
speed. The sgemm rate `train` measured at its start is printed beside it.

  python3 perf/bench_simulate.py [--app build/release/apps/shardflow] [--rounds 3] [--steps 12]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("--app", default=os.path.join(ROOT, "build", "release", "apps", "shardflow"))
p.add_argument("--deck", default=os.path.join(ROOT, "inputs", "bench.toml"))
p.add_argument("--mpiexec", default="mpiexec")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--steps", type=int, default=12)
a = p.parse_args()

CONFIGS = [
    ("dp2", ["mesh.data=2"]),
    ("pp2 1f1b m4", ["mesh.data=1", "mesh.pipeline=2", "train.micro_batches=4"]),
    ("tp2", ["mesh.data=1", "mesh.tensor=2"]),
    ("fsdp2 zero3", ["mesh.data=1", "mesh.fsdp=2", "strategy.zero_stage=3"]),
    ("dp2 full recompute", ["mesh.data=2", 'strategy.recompute="full"']),
    ("pp2 interleaved v2", ["mesh.data=1", "mesh.pipeline=2", "train.micro_batches=4", "strategy.virtual_stages=2"]),
    ("ep2 moe", ["mesh.data=1", "mesh.expert=2", "model.experts=4", "model.top_k=2", "model.moe_every=2"]),
    ("dp2 bf16", ["mesh.data=2", 'train.precision="bf16"']),
    ("dp2 attention dropout", ["mesh.data=2", "model.attention_dropout=0.1"]),
]
work = tempfile.mkdtemp(prefix="shardflow-bench-simulate-")
cluster = os.path.join(work, "local.toml")
subprocess.run([a.mpiexec, "-n", "2", a.app, "calibrate", "--output", cluster], check=True, capture_output=True)
peak = [l for l in open(cluster) if l.startswith("peak_tflops")][0].split("f32 = ")[1].split(",")[0]
print(f"# bench_simulate: {a.deck}, 2 ranks, {a.rounds} rounds x {a.steps} steps; calibrated sgemm peak "
      f"{float(peak) * 1e3:.1f} GFLOP/s ({cluster})")
print(f"# {'config':<20} {'round':>5} {'median_ms':>10} {'fastest_ms':>11} {'simulated_ms':>13} {'sim/median':>11} "
      f"{'sim/fastest':>12} {'train_sgemm_GF':>15} {'recal_ms':>12} {'recal/med':>11}")
ratios = {name: [] for name, _ in CONFIGS}
fastest = {name: [] for name, _ in CONFIGS}
phase = {name: [] for name, _ in CONFIGS}
for r in range(a.rounds):
    for name, sets in CONFIGS:
        ck = os.path.join(work, "ck")
        shutil.rmtree(ck, ignore_errors=True)
        js = os.path.join(work, "train.json")
        # a quick calibration right before the run: the VM's speed of this minute
        recal = os.path.join(work, "recal.toml")
        subprocess.run([a.mpiexec, "-n", "2", a.app, "calibrate", "--quick", "--output", recal], check=True,
                       capture_output=True)
        subprocess.run([a.mpiexec, "-n", "2", a.app, "train", a.deck, "--set", f"train.steps={a.steps}"] + sets +
                       [f"checkpoint.dir={ck}", "--quiet", "--summary", js], check=True, capture_output=True)
        t = json.load(open(js))
        def simulate(cl):
            out = subprocess.run([a.app, "simulate", a.deck, "--cluster", cl, "--json", "--set"] + sets,
                                 check=True, capture_output=True, text=True).stdout
            return json.loads(out)["step_time_s"]
        q, q2 = simulate(cluster), simulate(recal)
        m = t["median_step_time_s"]
        f = min(st["step_time_s"] for st in t["steps"][1:])  # the fastest step (the first one warms up)
        ratios[name].append(q / m)
        fastest[name].append(q / f)
        phase[name].append(q2 / m)
        print(f"  {name:<20} {r + 1:>5} {m * 1e3:10.1f} {f * 1e3:11.1f} {q * 1e3:13.1f} {q / m:11.3f} {q / f:12.3f} "
              f"{t['peak_gflops_per_rank']:15.1f} {q2 * 1e3:12.1f} {q2 / m:11.3f}", flush=True)
print("# median over rounds of sim/median step: " +
      ", ".join(f"{n} {statistics.median(v):.3f}" for n, v in ratios.items()))
print("# median over rounds of sim/fastest step: " +
      ", ".join(f"{n} {statistics.median(v):.3f}" for n, v in fastest.items()))
print("# median over rounds of recal sim/median step (calibrated right before the run): " +
      ", ".join(f"{n} {statistics.median(v):.3f}" for n, v in phase.items()))
shutil.rmtree(work, ignore_errors=True)
