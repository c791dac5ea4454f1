#!/usr/bin/env python3
"""Write a cluster file for `shardflow simulate` from a GPU measured by perf/gpu_probe.py: the
GPU analogue of `shardflow calibrate`, which measures only this host.

This takes the device's GEMM efficiency curve from the probe (the bf16 products replayed from
a CUDA graph, `graph_gemm`, as fractions of the peak the probe was given). A single GPU cannot
measure the node or the network, so everything else (peaks, capacity, bandwidth, devices per
node, links, collectives) comes from a base cluster file (--base, a bundled name or a path),
and the file says which is which.

  python3 perf/gpu_cluster.py --probe probe.json --base h200 --name my-h200 --out my-h200.toml
  shardflow simulate DECK --cluster my-h200.toml --devices 512

--probe takes several summaries (runs of the probe): each curve point is their mean. The
memory bandwidth and elementwise efficiency stay the base file's: the probe's streams (a copy,
an add) are not the step's kernels (docs/gpu.md).
"""
import argparse
import datetime
import json
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cluster_file(name_or_path, who):
    """A cluster file's path: the argument when it is a file, else the bundled
    inputs/clusters/NAME.toml; exits naming both when neither exists."""
    if os.path.exists(name_or_path):
        return name_or_path
    path = os.path.join(ROOT, "inputs", "clusters", name_or_path + ".toml")
    if not os.path.exists(path):
        sys.exit(f"{who}: no cluster file '{name_or_path}' (neither a path nor inputs/clusters/{name_or_path}.toml)")
    return path


def curve(probes):
    """[(n, mean fraction of peak)] over the probes' bf16 graph-replayed square products."""
    points = {}
    for p in probes:
        for g in p.get("graph_gemm", []):
            if g.get("dtype") == "bf16" and "batched" not in g:
                points.setdefault(g["n"], []).append(g["fraction_of_peak"])
    if not points:
        sys.exit("gpu_cluster: no bf16 graph_gemm points in the probe summaries (run gpu_probe.py with the "
                 "graph_gemm part)")
    out = []
    for n in sorted(points):
        f = statistics.mean(points[n])
        if not 0 < f <= 1:
            sys.exit(f"gpu_cluster: the measured fraction of peak at n = {n} is {f}: outside (0, 1]; was the "
                     "probe's --peak-bf16 the device's?")
        out.append((n, f))
    return out


def fmt(f):
    """Two significant digits (0.00026, 0.081, 0.79): the runs agree to about that."""
    return f"{f:.2g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", nargs="+", required=True, help="gpu_probe.py summary JSON(s) of one kind of GPU")
    ap.add_argument("--base", required=True, help="cluster file for what one GPU cannot measure (name or path)")
    ap.add_argument("--name", required=True, help="the new cluster's name")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    base = cluster_file(a.base, "gpu_cluster")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", a.name):
        sys.exit(f"gpu_cluster: --name '{a.name}' must be letters, digits, '.', '_' or '-'")
    probes = []
    for path in a.probe:
        with open(path) as f:
            probes.append(json.load(f))
    names = {p["info"].get("name", "?") for p in probes}
    if len(names) != 1:
        sys.exit(f"gpu_cluster: the probes measured different devices: {sorted(names)}")
    peaks = {p["peaks"]["bf16"] for p in probes}
    if len(peaks) != 1:
        sys.exit(f"gpu_cluster: the probes used different bf16 peaks: {sorted(peaks)}")
    pts = curve(probes)
    with open(base) as f:
        text = f.read()
    base_peak = re.search(r"(?m)^peak_tflops\s*=.*\bbf16\s*=\s*([0-9.]+)", text)
    if base_peak is None or abs(float(base_peak.group(1)) - peaks.pop()) > 1e-6:
        sys.exit(f"gpu_cluster: the probe's bf16 peak differs from {base}'s peak_tflops.bf16 "
                 f"({base_peak.group(1) if base_peak else 'missing'}): its fractions would not mean the same")
    when = datetime.date.today().isoformat()
    device = names.pop()
    new_curve = "gemm_efficiency = [" + ", ".join(f"[{n}, {fmt(f)}]" for n, f in pts) + "]"
    head = (f"# Written by perf/gpu_cluster.py on {when} from {len(probes)} gpu_probe.py run(s) on one {device}:\n"
            f"# gemm_efficiency measured (bf16 products replayed from a CUDA graph, the runs' mean);"
            f" everything else from {os.path.relpath(base, ROOT)}.\n")
    # the base's curve and the comment lines right above it (its source) give way to the measurement
    text, n = re.subn(r"(?m)^(#.*\n)*gemm_efficiency\s*=.*$", new_curve, text)
    if n != 1:
        sys.exit(f"gpu_cluster: {base} has {n} gemm_efficiency lines, expected 1")
    text, n = re.subn(r'(?m)^name\s*=\s*".*"', f'name = "{a.name}"', text)
    if n != 1:
        sys.exit(f"gpu_cluster: {base} has {n} name lines, expected 1")
    with open(a.out, "w") as f:
        f.write(head + text)
    print(f"gpu_cluster: wrote {a.out} ({device}, {len(pts)} curve points: "
          + ", ".join(f"{n}: {fmt(f)}" for n, f in pts) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
