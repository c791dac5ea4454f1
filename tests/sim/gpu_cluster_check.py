"""perf/gpu_cluster.py against the committed H200 measurements: the cluster file it writes from
perf/measured/h200-2026-12-04/probe2.json and probe3.json has the bundled h200.toml's GEMM curve
line for line (the bundled curve is the measurement, not a hand edit), `shardflow simulate`
reads it, and it refuses a probe without graph-replayed products and a base whose peak differs."""
import argparse
import os
import re
import subprocess
import sys
import tempfile

p = argparse.ArgumentParser()
p.add_argument("--app", required=True)
p.add_argument("--root", required=True)
a = p.parse_args()
meas = os.path.join(a.root, "perf", "measured", "h200-2026-12-04")
script = os.path.join(a.root, "perf", "gpu_cluster.py")
work = tempfile.mkdtemp(prefix="shardflow-gpu-cluster-")
out = os.path.join(work, "h200-probe.toml")
fails = []


def run(args):
    return subprocess.run([sys.executable, script] + args, capture_output=True, text=True)


r = run(["--probe", os.path.join(meas, "probe2.json"), os.path.join(meas, "probe3.json"), "--base", "h200",
         "--name", "h200-probe", "--out", out])
if r.returncode != 0:
    sys.exit(f"gpu_cluster.py failed: {r.stderr}")
curve = lambda path: re.search(r"(?m)^gemm_efficiency\s*=.*$", open(path).read()).group(0)
bundled = curve(os.path.join(a.root, "inputs", "clusters", "h200.toml"))
if curve(out) != bundled:
    fails.append(f"the curve written from the probes differs from h200.toml's:\n  {curve(out)}\n  {bundled}")
s = subprocess.run([a.app, "simulate", os.path.join(a.root, "inputs", "bench.toml"), "--cluster", out, "--devices", "8",
                    "--json"], capture_output=True, text=True)
if s.returncode != 0 or '"cluster": "h200-probe"' not in s.stdout:
    fails.append(f"simulate did not read the written file: {s.stderr or s.stdout[:300]}")
r = run(["--probe", os.path.join(meas, "probe.json"), "--base", "h200", "--name", "x", "--out",
         os.path.join(work, "x.toml")])
if r.returncode == 0 or "graph_gemm" not in r.stderr:
    fails.append(f"a probe without graph_gemm was not refused by name: {r.stderr}")
r = run(["--probe", os.path.join(meas, "probe3.json"), "--base", "a100-80gb", "--name", "x", "--out",
         os.path.join(work, "x.toml")])
if r.returncode == 0 or "312" not in r.stderr:
    fails.append(f"a base with another bf16 peak was not refused with its value: {r.stderr}")
for f in fails:
    print("FAIL:", f)
print("gpu_cluster_check:", "ok" if not fails else f"{len(fails)} failure(s)")
sys.exit(1 if fails else 0)
