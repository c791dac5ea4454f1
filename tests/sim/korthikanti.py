"""`shardflow simulate` against the published step times of Korthikanti et al. 2022, Table 5
(shared/calibration/korthikanti2022_table5.csv: Megatron-LM on Selene, DGX A100 80GB, fp16,
sequence 2048, vocabulary 51200, data parallel 1), on the bundled a100-80gb cluster model.

Each row becomes a deck: the row's heads, hidden and layers; ffn = 8·hidden/3 rounded to a
multiple of 64 (shardflow's MLP is SwiGLU, three matrices: 8/3·h keeps the GPT's 4h GeLU
MLP's parameters and FLOPs); mesh tensor × pipeline; strategy.virtual_stages = interleave;
train.micro_batches = global_batch / micro_batch; precision f16; recompute full (tensor
parallelism with all-reduce) or selective with sequence parallelism, as the paper's rows;
model.attention_dropout = 0.1 (--attention-dropout): the paper's models drop attention
probabilities (its Section 4.1 counts the dropout mask and output in the 5·a·s²·b bytes of
a layer's activations), as GPT-3 did with dropout 0.1.

Prints each row's simulated and published time and the error; exits 1 when the mean
absolute error exceeds --max-mean or one row exceeds --max-row (fractions)."""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

p = argparse.ArgumentParser()
p.add_argument("--app", required=True)
p.add_argument("--csv", required=True)
p.add_argument("--cluster", default="a100-80gb")
p.add_argument("--max-mean", type=float, default=1.0)
p.add_argument("--max-row", type=float, default=1.0)
p.add_argument("--json-out", default="")
p.add_argument("--attention-dropout", type=float, default=0.1)
p.add_argument("--out-dir", default="",
               help="write the decks here and keep them (default: a temporary directory, removed at the end)")
a = p.parse_args()

rows = []
with open(a.csv) as f:
    for r in csv.DictReader(line for line in f if not line.startswith("#")):
        rows.append(r)

tmp = None if a.out_dir else tempfile.TemporaryDirectory(prefix="shardflow-korthikanti-")
work = a.out_dir or tmp.name
os.makedirs(work, exist_ok=True)
out = []
errs = []
for r in rows:
    h = int(r["hidden"])
    ffn = int(round(8 * h / 3 / 64)) * 64
    sel = r["recompute"] == "selective"
    deck = f"""[mesh]
data = 1
tensor = {r['tp']}
pipeline = {r['pp']}
[model]
vocab = 51200
seq = 2048
hidden = {h}
heads = {r['heads']}
ffn = {ffn}
layers = {r['layers']}
attention_dropout = {a.attention_dropout}
[train]
steps = 1
global_batch = {r['global_batch']}
micro_batches = {int(r['global_batch']) // int(r['micro_batch'])}
precision = "f16"
[strategy]
activation_comm_dtype = "f16"
schedule = "1f1b"
virtual_stages = {r['interleave']}
recompute = "{r['recompute']}"
sequence_parallel = {"true" if sel else "false"}
"""
    path = os.path.join(work, f"{r['model']}_{r['recompute']}.toml")
    with open(path, "w") as f:
        f.write(deck)
    proc = subprocess.run([a.app, "simulate", path, "--cluster", a.cluster, "--json"], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        print(f"FAIL {r['model']} {r['recompute']}: simulate exited {proc.returncode}: {proc.stderr[-500:]}")
        sys.exit(1)
    s = json.loads(proc.stdout)
    pub = float(r["iteration_s"])
    err = s["step_time_s"] / pub - 1
    errs.append(abs(err))
    out.append({"model": r["model"], "recompute": r["recompute"], "gpus": int(r["gpus"]), "published_s": pub,
                "simulated_s": s["step_time_s"], "error": err, "mfu": s["mfu"], "bubble": s["bubble_fraction"],
                "fits": s["fits"], "peak_gib": s["memory_bytes_per_device"]["peak"] / 2**30,
                "compile_s": s["compile_s"], "simulate_s": s["simulate_s"]})
    print(f"{r['model']:>5} {r['recompute']:<9} {r['gpus']:>4} GPUs  published {pub:7.2f} s  simulated "
          f"{s['step_time_s']:7.2f} s  error {100 * err:+6.1f} %  MFU {s['mfu']:.3f}  bubble {s['bubble_fraction']:.3f}"
          f"  ({s['compile_s'] + s['simulate_s']:.2f} s)", flush=True)
mean = sum(errs) / len(errs)
print(f"mean |error| {100 * mean:.1f} %, max {100 * max(errs):.1f} % over {len(errs)} rows")
for mode in ("full", "selective"):
    e = [abs(o["error"]) for o in out if o["recompute"] == mode]
    if e:
        print(f"  {mode}: mean |error| {100 * sum(e) / len(e):.1f} %, max {100 * max(e):.1f} % over {len(e)} rows")
if a.json_out:
    with open(a.json_out, "w") as f:
        json.dump({"rows": out, "mean_abs_error": mean, "max_abs_error": max(errs)}, f, indent=2)
ok = mean <= a.max_mean and max(errs) <= a.max_row
print("all checks passed" if ok else f"FAIL: mean {mean:.3f} > {a.max_mean} or max {max(errs):.3f} > {a.max_row}")
sys.exit(0 if ok else 1)
