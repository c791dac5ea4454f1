"""Memory you can trust (issue 12 item 4): `shardflow train --summary` reports, per rank,
the framework's measured allocation peak (core/memory.hpp: every Kokkos allocation and the
checkpoint staging) and the compiled step's prediction (compile::predict_peak). For every
strategy, schedule, recompute mode, precision, checkpoint mode and model family below, on the quickstart deck, the
prediction is within 10% of the measurement on every rank."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fault"))
import common  # noqa: E402

a = common.args()
NP = 2
CASES = [
    ("dp2", ["mesh.data=2"]),
    ("dp2 zero1", ["mesh.data=2", "strategy.zero_stage=1"]),
    ("dp2 zero2 micro2", ["mesh.data=2", "strategy.zero_stage=2", "train.micro_batches=2"]),
    ("fsdp2 zero3 prefetch2", ["mesh.data=1", "mesh.fsdp=2", "strategy.zero_stage=3", "strategy.prefetch=2"]),
    ("tp2", ["mesh.data=1", "mesh.tensor=2"]),
    ("tp2 sp", ["mesh.data=1", "mesh.tensor=2", "strategy.sequence_parallel=true"]),
    ("pp2 1f1b m4", ["mesh.data=1", "mesh.pipeline=2", "train.micro_batches=4"]),
    ("pp2 gpipe m4", ["mesh.data=1", "mesh.pipeline=2", "strategy.schedule=\"gpipe\"", "train.micro_batches=4"]),
    ("pp2 interleaved v2 m4", ["mesh.data=1", "mesh.pipeline=2", "strategy.virtual_stages=2", "train.micro_batches=4"]),
    ("dp2 recompute full", ["mesh.data=2", "strategy.recompute=\"full\""]),
    ("dp2 recompute selective", ["mesh.data=2", "strategy.recompute=\"selective\""]),
    ("ep2 moe", ["mesh.data=1", "mesh.expert=2", "model.experts=4", "model.top_k=2", "model.moe_every=2"]),
    ("dp2 async checkpoint", ["mesh.data=2", "checkpoint.async=true"]),
    ("fsdp2 zero3 bf16 comm", ["mesh.data=1", "mesh.fsdp=2", "strategy.zero_stage=3", "strategy.gather_dtype=\"bf16\"",
                               "strategy.grad_scatter_dtype=\"bf16\""]),
    ("dp2 precision bf16", ["mesh.data=2", "train.precision=\"bf16\""]),
    ("pp2 1f1b m4 precision f16", ["mesh.data=1", "mesh.pipeline=2", "train.micro_batches=4", "train.precision=\"f16\""]),
    ("fsdp2 zero3 full recompute bf16", ["mesh.data=1", "mesh.fsdp=2", "strategy.zero_stage=3",
                                         "strategy.recompute=\"full\"", "train.precision=\"bf16\""]),
    ("tp2 sp selective bf16", ["mesh.data=1", "mesh.tensor=2", "strategy.sequence_parallel=true",
                               "strategy.recompute=\"selective\"", "train.precision=\"bf16\""]),
    ("tp2 bf16 activation comm", ["mesh.data=1", "mesh.tensor=2", "train.precision=\"bf16\"",
                                  "strategy.activation_comm_dtype=\"bf16\""]),
    ("pp2 1f1b m4 bf16 activation comm", ["mesh.data=1", "mesh.pipeline=2", "train.micro_batches=4",
                                         "train.precision=\"bf16\"", "strategy.activation_comm_dtype=\"bf16\""]),
    ("tp2 sp f16 activation comm", ["mesh.data=1", "mesh.tensor=2", "strategy.sequence_parallel=true",
                                    "train.precision=\"f16\"", "strategy.activation_comm_dtype=\"f16\""]),
    # the Llama family (issue 16): GQA split and replicated over tensor, context parallelism
    ("llama tp2 kv1", ["model.family=\"llama\"", "model.kv_heads=1", "mesh.data=1", "mesh.tensor=2"]),
    ("llama cp2", ["model.family=\"llama\"", "model.kv_heads=2", "mesh.data=1", "mesh.context=2"]),
    ("llama cp2 bf16 full recompute", ["model.family=\"llama\"", "model.kv_heads=2", "mesh.data=1", "mesh.context=2",
                                       "train.precision=\"bf16\"", "strategy.recompute=\"full\""]),
]


def summary(name, sets, extra=(), ck=None):
    ck = ck or os.path.join(a.work, "ck-" + name.replace(" ", "_"))
    js = os.path.join(a.work, name.replace(" ", "_") + ".json")
    cmd = [a.mpiexec, "-n", str(NP), a.app, "train", a.deck, "--set", "train.steps=3"] + sets + [
        "checkpoint.dir=" + ck, "--summary", js, "--quiet"] + list(extra)
    rc, out, err, _ = common.run(cmd, timeout=300)
    if rc != 0:
        common.check(False, f"{name}: train exited {rc}: {(out + err)[-600:]}")
        return None
    with open(js) as f:
        return json.load(f), ck


def compare(name, s):
    m, p = s["memory_measured_peak_bytes"], s["memory_predicted_peak_bytes"]
    ok = len(m) == NP and len(p) == NP and all(x > 0 for x in m) and all(abs(y / x - 1) <= 0.10 for x, y in zip(m, p))
    common.check(ok, f"{name}: measured {m}, predicted {p} (ratios "
                     f"{[round(y / x, 4) if x > 0 else None for x, y in zip(m, p)]})")


for name, sets in CASES:
    r = summary(name, sets)
    if r:
        compare(name, r[0])
        # `plan --json` predicts the same bytes for the deck's configured stage
        rc, out, err, _ = common.run([a.app, "plan", a.deck, "--set"] + sets + ["--json"], timeout=120)
        if rc != 0:
            common.check(False, f"{name}: plan exited {rc}: {(out + err)[-400:]}")
            continue
        conf = [m for m in json.loads(out)["memory_per_device"] if m["configured"]]
        want = r[0]["memory_predicted_peak_bytes"]
        got = conf[0].get("memory_predicted_peak_bytes") if conf else None
        # an async save's snapshot is the run's, not the plan's (which assumes sync saves)
        if "checkpoint.async=true" not in sets:
            common.check(got == want, f"{name}: plan --json memory_predicted_peak_bytes {got} == train's {want}")
# a resumed run stages the restored state on top of its buffers
r = summary("resume source", ["mesh.data=2"])
if r:
    r2 = summary("resumed", ["mesh.data=2", "train.steps=5"], extra=["--resume", "latest"], ck=r[1])
    if r2:
        compare("resumed dp2", r2[0])
common.finish()
