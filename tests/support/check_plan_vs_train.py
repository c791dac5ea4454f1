#!/usr/bin/env python3
"""`shardflow plan DECK --json` reports, for the deck's own configuration, exactly the per-rank
parameter, gradient, optimizer and activation bytes that `shardflow train --summary` reports
in memory_bytes_rank0 (issue 11; activations, with recomputation, issue 12). Usage: check_plan_vs_train.py MPIEXEC APP DECK WORKDIR"""
import json, os, shutil, subprocess, sys

mpiexec, app, deck, work = sys.argv[1:5]
shutil.rmtree(work, ignore_errors=True)  # a rerun starts afresh (train refuses a used checkpoint.dir)
os.makedirs(work)
CASES = [  # (ranks, overrides)
    (2, ["mesh.data=2"]),
    (2, ["mesh.data=2", "strategy.zero_stage=1"]),
    (2, ["mesh.data=2", "strategy.zero_stage=2"]),
    (2, ["mesh.data=2", "strategy.zero_stage=3"]),
    (2, ["mesh.data=1", "mesh.tensor=2"]),
    (2, ["mesh.data=1", "mesh.pipeline=2", "train.micro_batches=2"]),
    (2, ["mesh.data=1", "mesh.expert=2", "model.experts=4", "model.top_k=2", "model.moe_every=2"]),
    (4, ["mesh.data=2", "mesh.fsdp=2", "strategy.zero_stage=3"]),  # HSDP
    (4, ["mesh.data=2", "mesh.tensor=2", "strategy.zero_stage=2"]),
    (4, ["mesh.data=1", "mesh.fsdp=2", "mesh.pipeline=2", "strategy.zero_stage=3", "train.micro_batches=2"]),
    (2, ["mesh.data=2", "strategy.recompute=\"full\""]),
    (2, ["mesh.data=1", "mesh.tensor=2", "strategy.sequence_parallel=true", "strategy.recompute=\"selective\""]),
    (4, ["mesh.data=1", "mesh.pipeline=2", "mesh.tensor=2", "train.micro_batches=4", "strategy.recompute=\"full\""]),
]
bad = 0
for i, (n, sets) in enumerate(CASES):
    args = []
    for s in sets + ["train.steps=1", f"checkpoint.dir={os.path.join(work, 'ck%d' % i)}"]:
        args += ["--set", s]
    summary = os.path.join(work, f"summary{i}.json")
    subprocess.run([mpiexec, "-n", str(n), app, "train", deck, "--quiet", "--summary", summary] + args, check=True,
                   stdout=subprocess.DEVNULL)
    plan = json.loads(subprocess.run([app, "plan", deck, "--json"] + args, check=True, capture_output=True,
                                     text=True).stdout)
    got = json.load(open(summary))["memory_bytes_rank0"]
    rows = [r for r in plan["memory_per_device"] if r["configured"]]
    if len(rows) != 1:
        print(f"FAIL {sets}: {len(rows)} configured rows in plan --json")
        bad += 1
        continue
    row = rows[0]
    # plan --json field -> train --summary memory_bytes_rank0 field
    fields = {"params_bytes": "params", "grads_bytes": "grads", "optimizer_bytes": "optimizer",
              "activation_bytes": "activations"}
    diff = {k: (row[k], got[v]) for k, v in fields.items() if row[k] != got[v]}
    print(("ok  " if not diff else "FAIL"), " ".join(sets), {v: got[v] for v in fields.values()},
          diff if diff else "")
    bad += bool(diff)
print(f"{len(CASES) - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
