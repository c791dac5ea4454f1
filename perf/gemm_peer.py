"""PyTorch's CPU matmul on the products of `bench_gemm`'s table, one thread: the GEMM side of the
PyTorch peer, product by product, beside shardflow's (bench_gemm's onednn sgemm and bf16 matmul
columns).

bench_gemm prints one row per product of one training step per rank (name, op, m, n, k, ldc,
count, then its GFLOP/s columns; tables from before session 17 have no ldc column). This script reads that table (`--table FILE`, or runs `--bench-gemm
PATH` itself), builds the same operands in their stored orientation (op NT: A [m, k], B [n, k];
NN: A [m, k], B [k, n]; TN: A [k, m], B [k, n]) and times, best of `--samples` alternating
samples of `count` calls each:
  - torch f32:   torch.matmul on f32 views (what DDP eager runs);
  - torch bf16:  the same on bf16 operands already converted (a product inside autocast whose
                 inputs are bf16 already);
  - torch bf16+cast: the f32 operands converted to bf16 inside the timed call, then the matmul
                 (autocast's cast of an f32 weight or activation, then the product): the
                 same work as bench_gemm's bf16 column, which rounds both operands in its call.
PyTorch's operands and outputs are dense: where bench_gemm's product writes into a window of a
wider C (its ldc column), PyTorch's eager attention instead multiplies every head of the
micro-batch in one batched call over the full S x S, so its attention rows here time a product
that PyTorch's step does not run one by one. It prints GFLOP/s per product, the step's products
summed as bench_gemm sums them (each product's count x its time), and the ratios to
bench_gemm's columns.

Run it in the PyTorch peer's venv (perf/peer_env.sh): $(perf/peer_env.sh) perf/gemm_peer.py
--bench-gemm build/release/perf/bench_gemm. ONEDNN_VERBOSE=1 in the environment makes both
libraries print the implementation of each product (oneDNN's verbose mode)."""
import argparse
import json
import os
import subprocess
import sys
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
src = p.add_mutually_exclusive_group(required=True)
src.add_argument("--table", help="bench_gemm's output, saved")
src.add_argument("--bench-gemm", help="run this bench_gemm binary and read its table")
p.add_argument("--samples", type=int, default=30)
p.add_argument("--json-out", default="")
a = p.parse_args()

if a.table:
    text = open(a.table).read()
else:
    proc = subprocess.run([a.bench_gemm], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.exit(f"gemm_peer: {a.bench_gemm} exited {proc.returncode}: {proc.stderr[-400:]}")
    text = proc.stdout
    print(text, end="")

rows = []
for line in text.splitlines():
    if line.startswith("#") or not line.strip():
        continue
    t = line.split()  # name (may hold spaces) op m n k [ldc] count openblas onednn policy dnnl/ob bf16 bf/dnnl
    ops = ("NN", "NT", "TN", "TT")
    if len(t) >= 13 and t[-12] in ops:
        at = -12  # with the ldc column (bench_gemm since session 17)
    elif len(t) >= 12 and t[-11] in ops:
        at = -11
    else:
        continue
    try:
        rows.append({"name": " ".join(t[:at]), "op": t[at], "m": int(t[at + 1]), "n": int(t[at + 2]),
                     "k": int(t[at + 3]), "count": int(t[-7]), "sf_sgemm": float(t[-5] if t[-4] == "onednn" else t[-6]),
                     "sf_bf16": float(t[-2])})
    except ValueError:
        continue
if not rows:
    sys.exit("gemm_peer: no product rows in bench_gemm's table (columns: name op m n k [ldc] count openblas onednn "
             "policy dnnl/ob bf16 bf/dnnl)")

import torch  # noqa: E402  (after the table: a missing table fails fast without loading torch)

torch.set_num_threads(1)
torch.manual_seed(0)
print(f"# gemm_peer: torch {torch.__version__}, one thread, mkldnn {torch.backends.mkldnn.is_available()}, "
      f"bf16 on cpu {getattr(torch.backends.mkldnn, 'is_bf16_supported', lambda: '?')()}; "
      f"best of {a.samples} alternating samples")


def operands(r, dtype):
    m, n, k = r["m"], r["n"], r["k"]
    if r["op"] == "NT":
        A, B = torch.randn(m, k), torch.randn(n, k)
    elif r["op"] == "NN":
        A, B = torch.randn(m, k), torch.randn(k, n)
    elif r["op"] == "TN":
        A, B = torch.randn(k, m), torch.randn(k, n)
    else:
        A, B = torch.randn(k, m), torch.randn(n, k)
    return A.to(dtype), B.to(dtype)


def product(op, A, B):
    if op == "NT":
        return torch.matmul(A, B.t())
    if op == "NN":
        return torch.matmul(A, B)
    if op == "TN":
        return torch.matmul(A.t(), B)
    return torch.matmul(A.t(), B.t())


results = []
for r in rows:
    A32, B32 = operands(r, torch.float32)
    A16, B16 = A32.to(torch.bfloat16), B32.to(torch.bfloat16)
    calls = {
        "f32": lambda: product(r["op"], A32, B32),
        "bf16": lambda: product(r["op"], A16, B16),
        "bf16_cast": lambda: product(r["op"], A32.to(torch.bfloat16), B32.to(torch.bfloat16)),
    }
    best = {kname: float("inf") for kname in calls}
    for f in calls.values():  # warm-up: oneDNN creates its primitives here
        for _ in range(3):
            f()
    for _ in range(a.samples):
        for kname, f in calls.items():
            t0 = time.perf_counter()
            for _ in range(r["count"]):
                f()
            best[kname] = min(best[kname], (time.perf_counter() - t0) / r["count"])
    flop = 2.0 * r["m"] * r["n"] * r["k"]
    res = dict(r)
    res.update({f"torch_{kname}_s": v for kname, v in best.items()})
    res.update({f"torch_{kname}": flop / v / 1e9 for kname, v in best.items()})
    results.append(res)

print("#product        op      m      n      k     x  sf sgemm  torch f32  sf bf16  torch bf16  torch bf16   sf bf16 /")
print("#                                                 GFLOP/s   GFLOP/s  GFLOP/s    (no cast)      +cast  torch +cast")
for r in results:
    print(f" {r['name']:<14} {r['op']:>3} {r['m']:>6} {r['n']:>6} {r['k']:>6} {r['count']:>5} {r['sf_sgemm']:>9.1f} "
          f"{r['torch_f32']:>10.1f} {r['sf_bf16']:>8.1f} {r['torch_bf16']:>12.1f} {r['torch_bf16_cast']:>10.1f} "
          f"{r['sf_bf16'] / r['torch_bf16_cast']:>12.2f}")


def step_ms(col):  # the step's products as bench_gemm sums them: count x time per product
    return sum(r["count"] * 2.0 * r["m"] * r["n"] * r["k"] / (r[col] * 1e9) for r in results) * 1e3


summary = {k: step_ms(k) for k in ("sf_sgemm", "torch_f32", "sf_bf16", "torch_bf16", "torch_bf16_cast")}
print("# one layer + head, summed: " + ", ".join(f"{k} {v:.3f} ms" for k, v in summary.items()))
print(f"# shardflow sgemm / torch f32 speed {summary['torch_f32'] / summary['sf_sgemm']:.3f}; "
      f"shardflow bf16 / torch bf16+cast speed {summary['torch_bf16_cast'] / summary['sf_bf16']:.3f}; "
      f"torch bf16 (no cast) / torch f32 {summary['torch_f32'] / summary['torch_bf16']:.3f}")
if a.json_out:
    with open(a.json_out, "w") as f:
        json.dump({"torch": torch.__version__, "rows": results, "step_ms": summary,
                   "cpu": os.uname().machine}, f, indent=2)
