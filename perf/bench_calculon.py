#!/usr/bin/env python3
"""`shardflow simulate` beside Calculon (Isaev et al., SC23), the analytical simulator users
would pick today, on the eight published step times of Korthikanti et al. 2022 Table 5
(tests/sim/korthikanti2022_table5.csv). Both run here, in the same session: Calculon from a
checkout of its public repository (never part of shardflow: clone it yourself,
`git clone https://github.com/calculon-ai/calculon`), with its own validation inputs for
this table (models/*.json, validation/seqsel/tab5/*.json, systems/a100_80g.json);
shardflow with the decks tests/sim/korthikanti.py builds and the bundled a100-80gb model.
Prints one table: each tool's predicted time, error and wall time per configuration.

  $(perf/calculon_env.sh) perf/bench_calculon.py --calculon DIR [--app build/release/apps/shardflow] [--repeat 3]
"""
import argparse
import csv
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("--calculon", required=True, help="a checkout of github.com/calculon-ai/calculon")
p.add_argument("--app", default=os.path.join(ROOT, "build", "release", "apps", "shardflow"))
p.add_argument("--csv", default=os.path.join(ROOT, "tests", "sim", "korthikanti2022_table5.csv"))
p.add_argument("--repeat", type=int, default=10,
               help="best wall time of this many runs per tool and row (each tool's calls reach their steady state)")
p.add_argument("--warm", default=os.path.join(ROOT, "build", "release", "perf", "bench_sim_warm"),
               help="perf/bench_sim_warm: simulate's work timed in one warm process, as Calculon is timed here")
p.add_argument("--attention-dropout", type=float, default=0.1,
               help="model.attention_dropout of the decks (tests/sim/korthikanti.py: the paper's models drop 0.1)")
a = p.parse_args()

sys.path.insert(0, a.calculon)
import calculon  # noqa: E402
from calculon.llm import Llm  # noqa: E402
from calculon.system import System  # noqa: E402

CALCULON_MODEL = {"22B": "megatron-22B", "175B": "gpt3-175B", "530B": "turing-530B", "1T": "megatron-1T"}
CALCULON_MODE = {"full": "full", "selective": "seqsel"}

rows = list(csv.DictReader(line for line in open(a.csv) if not line.startswith("#")))
syst = System(calculon.io.read_json_file(os.path.join(a.calculon, "systems", "a100_80g.json")))
logger = logging.getLogger("calculon")
tmp = tempfile.TemporaryDirectory(prefix="shardflow-calculon-")
work = tmp.name

# shardflow's decks: the same mapping as tests/sim/korthikanti.py
def deck(r):
    h = int(r["hidden"])
    sel = r["recompute"] == "selective"
    return (f"[mesh]\ndata = 1\ntensor = {r['tp']}\npipeline = {r['pp']}\n[model]\nvocab = 51200\nseq = 2048\n"
            f"hidden = {h}\nheads = {r['heads']}\nffn = {int(round(8 * h / 3 / 64)) * 64}\nlayers = {r['layers']}\n"
            f"attention_dropout = {a.attention_dropout}\n"
            f"[train]\nsteps = 1\nglobal_batch = {r['global_batch']}\n"
            f"micro_batches = {int(r['global_batch']) // int(r['micro_batch'])}\nprecision = \"f16\"\n"
            f"[strategy]\nactivation_comm_dtype = \"f16\"\nschedule = \"1f1b\"\nvirtual_stages = {r['interleave']}\nrecompute = \"{r['recompute']}\"\n"
            f"sequence_parallel = {'true' if sel else 'false'}\n")

print("# shardflow simulate (a100-80gb) and Calculon (systems/a100_80g.json) against Korthikanti et al. 2022 "
      f"Table 5; wall time: best of {a.repeat} runs per tool and row")
print("# shardflow_wall_s: the CLI's process; shardflow_in_s: its compile_s + simulate_s (a fresh process: first "
      "touch of heap and code);\n# shardflow_warm_s: sim::simulate with its layout plan, called again in one process "
      "(perf/bench_sim_warm), as Calculon's calls are timed, on every hardware thread (simulate's default) / on one")
print(f"# {'model':>5} {'recompute':<9} {'published_s':>11} {'shardflow_s':>11} {'error':>7} {'calculon_s':>10} "
      f"{'error':>7} {'shardflow_wall_s':>16} {'shardflow_in_s':>14} {'shardflow_warm_s':>16} {'warm_1_thread_s':>15} "
      f"{'calculon_wall_s':>15}")
errs = {"shardflow": [], "calculon": []}
modes = []
walls = {"shardflow": [], "calculon": []}
inproc = []
warm = []
warm1 = []
for r in rows:
    pub = float(r["iteration_s"])
    path = os.path.join(work, f"{r['model']}_{r['recompute']}.toml")
    open(path, "w").write(deck(r))
    best_sf, best_in, sf = 1e30, 1e30, None
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        out = subprocess.run([a.app, "simulate", path, "--cluster", "a100-80gb", "--json"], check=True,
                             capture_output=True, text=True).stdout
        best_sf = min(best_sf, time.perf_counter() - t0)
        js = json.loads(out)
        sf = js["step_time_s"]
        # inside the process, like Calculon's calls: compiling the stages and simulating them
        # (not the process start, MPI's singleton init, reading the deck and the cluster file)
        best_in = min(best_in, js["compile_s"] + js["simulate_s"])
    for threads, out in ((0, warm), (1, warm1)):  # every hardware thread (simulate's default), one
        wj = json.loads(subprocess.run([a.warm, path, "--cluster", "a100-80gb", "--repeat", str(a.repeat),
                                        "--threads", str(threads)], check=True, capture_output=True, text=True).stdout)
        if wj["wrong"] or wj["step_time_s"] != sf:
            sys.exit(f"bench_sim_warm on {path}: step {wj['step_time_s']} (CLI {sf}), {wj['wrong']} calls differ")
        out.append(wj["best_s"])
    m, mode = CALCULON_MODEL[r["model"]], CALCULON_MODE[r["recompute"]]
    app = Llm.Application(calculon.io.read_json_file(os.path.join(a.calculon, "models", f"{m}.json")))
    exe = Llm.Execution.from_json(
        calculon.io.read_json_file(os.path.join(a.calculon, "validation", "seqsel", "tab5", f"{m}_{mode}.json")))
    best_c, ca = 1e30, None
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        mt = Llm(app, logger)
        mt.compile(syst, exe)
        mt.run(syst)
        ca = mt.get_stats_json(False)["total_time"]
        best_c = min(best_c, time.perf_counter() - t0)
    e_sf, e_c = sf / pub - 1, ca / pub - 1
    errs["shardflow"].append(abs(e_sf))
    errs["calculon"].append(abs(e_c))
    modes.append(r["recompute"])
    walls["shardflow"].append(best_sf)
    walls["calculon"].append(best_c)
    inproc.append(best_in)
    print(f"  {r['model']:>5} {r['recompute']:<9} {pub:11.2f} {sf:11.2f} {100 * e_sf:+6.1f}% {ca:10.2f} "
          f"{100 * e_c:+6.1f}% {best_sf:16.3f} {best_in:14.4f} {warm[-1]:16.4f} {warm1[-1]:15.4f} {best_c:15.4f}", flush=True)
for tool in ("shardflow", "calculon"):
    e = errs[tool]
    print(f"# {tool}: mean |error| {100 * sum(e) / len(e):.1f} %, max {100 * max(e):.1f} %, "
          f"wall {sum(walls[tool]):.3f} s for the {len(e)} rows"
          + (f" ({sum(inproc):.3f} s compiling and simulating, {sum(warm):.4f} s warm)" if tool == "shardflow" else ""))
    for mode in ("full", "selective"):
        em = [x for x, md in zip(e, modes) if md == mode]
        if em:
            print(f"#   {mode}: mean |error| {100 * sum(em) / len(em):.1f} %, max {100 * max(em):.1f} %")
for label, ws in (("all hardware threads", warm), ("one thread", warm1)):
    faster = sum(1 for w, c in zip(ws, walls["calculon"]) if w <= c)
    print(f"# warm, in the process, {label}: shardflow at least as fast as Calculon on {faster} of {len(ws)} rows "
          f"({1e3 * sum(ws):.1f} ms against {1e3 * sum(walls['calculon']):.1f} ms); Calculon / shardflow per row: "
          + " ".join(f"{c / w:.2f}" for w, c in zip(ws, walls["calculon"])))
