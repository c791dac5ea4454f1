#!/usr/bin/env python3
"""Set `shardflow simulate --devices 1` against one-GPU training steps measured by
perf/gpu_probe.py (its summary JSON), configuration by configuration.

For each measured step (configuration x attention x AdamW implementation) it prints the
simulated step time over the measured median, and the simulated peak memory against
torch.cuda.max_memory_allocated. Where the probe profiled a step, it also splits both sides:
the simulated GEMM time (the same cluster with unbounded memory bandwidth) and the rest,
against the profile's GEMM and attention kernels and everything else.

The measured step is PyTorch eager's program for MODEL.md's model (perf/torch_peer.py's Gpt
under autocast bf16), not shardflow's: shardflow's compute runs on the host. The simulator
predicts shardflow's compiled step on the cluster file's device; the comparison tells how far
that is from a real step of the same model on that device.

Usage: python3 perf/gpu_validate.py --probe perf/measured/h200-2026-12-04/probe3.json
           [--app build/release/apps/shardflow] [--cluster h200] [--max-ratio-error F]
Exits 1 when --max-ratio-error is given and a flash-attention (sdpa) configuration's
simulated / measured ratio is further than F from 1.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from gpu_cluster import cluster_file  # perf/, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def simulate(app, cluster, m, extra=()):
    cmd = [app, "simulate", os.path.join(ROOT, "inputs", "bench.toml"), "--cluster", cluster, "--devices", "1",
           "--json", "--set", f"model.vocab={m['vocab']}", f"model.seq={m['seq']}", f"model.hidden={m['hidden']}",
           f"model.heads={m['heads']}", f"model.ffn={m['ffn']}", f"model.layers={m['layers']}",
           f"train.global_batch={m['batch']}", "train.micro_batches=1", 'train.precision="bf16"', *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"gpu_validate: {' '.join(cmd)} failed:\n{p.stderr}")
    return json.loads(p.stdout)


def simulate_traced(app, cluster, m):
    """simulate(), and the simulated step's AdamW and gradient-norm tasks (from the same run's
    --trace), seconds."""
    with tempfile.NamedTemporaryFile(suffix=".json") as tr:
        s = simulate(app, cluster, m, ("--trace", tr.name))
        with open(tr.name) as f:
            ev = json.load(f)
    ev = ev["traceEvents"] if isinstance(ev, dict) else ev
    return s, sum(e["dur"] for e in ev if e.get("ph") == "X" and e["name"].split(".")[0] in ("adamw", "grad_norm")) / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", required=True, help="gpu_probe.py's summary JSON")
    ap.add_argument("--app", default=os.path.join(ROOT, "build", "release", "apps", "shardflow"))
    ap.add_argument("--cluster", default="h200")
    ap.add_argument("--max-ratio-error", type=float, default=0.0)
    ap.add_argument("--json-out", default="")
    a = ap.parse_args()
    with open(a.probe) as f:
        probe = json.load(f)
    if "train" not in probe:
        sys.exit(f"gpu_validate: {a.probe} has no train part")
    print(f"measured on {probe['info'].get('name', '?')} (torch {probe['info']['torch']}); "
          f"simulated on --cluster {a.cluster}")
    # the same cluster with unbounded memory bandwidth: what is left is the GEMM time
    with open(cluster_file(a.cluster, "gpu_validate")) as f:
        text = f.read()
    gemm_only = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    gemm_only.write(re.sub(r"memory_bandwidth_gbs\s*=\s*[0-9.]+", "memory_bandwidth_gbs = 1e12", text, count=1))
    gemm_only.close()
    try:
        return compare(a, probe, gemm_only.name)
    finally:
        os.unlink(gemm_only.name)


def compare(a, probe, gemm_only_path):
    sims, rows, bad = {}, [], []  # per model: (simulation, its AdamW + norm seconds, GEMM-only simulation)
    print(f"{'config':14s} {'attention':9s} {'adamw':7s} {'measured ms':>11s} {'simulated ms':>12s} {'sim/meas':>8s} "
          f"{'meas GiB':>8s} {'sim GiB':>8s}")
    for t in probe["train"]:
        m = t["model"]
        key = json.dumps(m, sort_keys=True)
        if key not in sims:
            sims[key] = (*simulate_traced(a.app, a.cluster, m), simulate(a.app, gemm_only_path, m))
        s = sims[key][0]
        ratio = s["step_time_s"] / t["median_step_time_s"]
        mem_meas = t["peak_memory_bytes"] / 2 ** 30
        mem_sim = s["memory_bytes_per_device"]["peak"] / 2 ** 30
        opt = t.get("optimizer", "foreach")
        print(f"{t['config']:14s} {t['attention']:9s} {opt:7s} {t['median_step_time_s'] * 1e3:11.1f} "
              f"{s['step_time_s'] * 1e3:12.1f} {ratio:8.3f} {mem_meas:8.1f} {mem_sim:8.1f}")
        rows.append({"config": t["config"], "attention": t["attention"], "optimizer": opt,
                     "measured_s": t["median_step_time_s"], "simulated_s": s["step_time_s"], "ratio": ratio,
                     "measured_peak_bytes": t["peak_memory_bytes"],
                     "simulated_peak_bytes": s["memory_bytes_per_device"]["peak"]})
        if a.max_ratio_error > 0 and t["attention"] == "sdpa" and abs(ratio - 1) > a.max_ratio_error:
            bad.append(f"{t['config']} {t['attention']} {opt}: {ratio:.3f}")
    for p in probe.get("profile", []):
        m = next(t["model"] for t in probe["train"] if t["config"] == p["config"])
        s, sim_opt, g = sims[json.dumps(m, sort_keys=True)]
        kinds = p["by_kind_s"]
        gemm = kinds.get("gemm", 0) + kinds.get("attention (flash)", 0)
        opt = kinds.get("optimizer / clip (multi-tensor)", 0)
        print(f"profile {p['config']} {p['attention']} {p.get('optimizer', 'foreach')}: GPU busy {p['busy_s'] * 1e3:.1f} ms:"
              f" GEMM + attention kernels {gemm * 1e3:.1f}, optimizer + clip {opt * 1e3:.1f}, the rest "
              f"{(p['kernel_sum_s'] - gemm - opt) * 1e3:.1f} ms; simulated: GEMM {g['step_time_s'] * 1e3:.1f}, "
              f"AdamW + gradient norm {sim_opt * 1e3:.1f}, the rest {(s['step_time_s'] - g['step_time_s'] - sim_opt) * 1e3:.1f} ms")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    if bad:
        print("gpu_validate: beyond", a.max_ratio_error, ":", "; ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
