"""Mixed precision as a user runs it (issue 12 item 2), on the quickstart deck, 2 ranks:
  * 200 steps in bf16 and in f16 (dynamic loss scaling) end within 3% of the f32 final loss,
    with every loss finite;
  * checkpoints keep f32 master weights: a bf16 checkpoint resumes as f32 on another mesh
    exactly as on its own mesh, and an f32 checkpoint resumes as bf16 on another mesh as on
    its own (1e-5 and 1e-3 relative);
  * an f16 run resumed from its checkpoint continues bit for bit, loss scale included."""
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fault"))
import common  # noqa: E402

a = common.args()
NP = 2


def train(name, sets, steps, extra=(), ck=None, every=0):
    ck = ck or os.path.join(a.work, "ck-" + name)
    js = os.path.join(a.work, name + ".json")
    cmd = [a.mpiexec, "-n", str(NP), a.app, "train", a.deck, "--set", "train.steps=%d" % steps] + sets + [
        "checkpoint.dir=" + ck, "checkpoint.every=%d" % every, "--summary", js, "--quiet"] + list(extra)
    rc, out, err, _ = common.run(cmd, timeout=600)
    if rc != 0:
        common.check(False, f"{name}: train exited {rc}: {(out + err)[-600:]}")
        return None, ck
    with open(js) as f:
        return json.load(f), ck


def losses(s):
    return [st["loss"] for st in s["steps"]]


def close(name, got, want, rel):
    ok = len(got) == len(want) and all(abs(g - w) <= rel * abs(w) for g, w in zip(got, want))
    worst = max((abs(g - w) / abs(w) for g, w in zip(got, want)), default=float("nan"))
    common.check(ok, f"{name}: {len(got)} losses within {rel:g} relative (worst {worst:.2e})")


DP = ["mesh.data=2"]
F16 = 'train.precision="f16"'

# 1. 200 steps in each precision
final = {}
for p in ("f32", "bf16", "f16"):
    s, _ = train("quickstart-" + p, DP + ['train.precision="%s"' % p], 200)
    if s:
        final[p] = s["final_loss"]
        common.check(s["precision"] == p and all(math.isfinite(x) for x in losses(s)),
                     f"{p}: precision in the summary, every loss finite (final {s['final_loss']:.4f})")
        if p == "f16":
            common.check("loss_scale_final" in s and s["skipped_steps"] >= 0,
                         f"f16: loss scale {s.get('loss_scale_final')}, skipped steps {s.get('skipped_steps')}")
if "f32" in final:
    for p in ("bf16", "f16"):
        if p in final:
            rel = abs(final[p] - final["f32"]) / final["f32"]
            common.check(rel <= 0.03, f"{p} final loss {final[p]:.4f} within 3% of f32's {final['f32']:.4f} "
                                      f"({100 * rel:.2f}%)")

# 2. f32 master weights: bf16 -> f32 on another mesh, f32 -> bf16 on another mesh
FSDP = ["mesh.data=1", "mesh.fsdp=2", "strategy.zero_stage=3"]
TP = ["mesh.data=1", "mesh.tensor=2"]


def cross(src_prec, dst_prec, other, other_name, rel):
    """A checkpoint of a src_prec run resumed as dst_prec on dp2 and on another mesh."""
    src, ck = train(f"{src_prec}-source", DP + [f'train.precision="{src_prec}"'], 10, every=10)
    if not src:
        return
    step = os.path.join(ck, "step-00000010")
    dst = f'train.precision="{dst_prec}"'
    same, _ = train(f"{src_prec}-to-{dst_prec}-dp2", DP + [dst], 20, extra=["--resume", step],
                    ck=os.path.join(a.work, f"ck-{src_prec}-dp2"))
    moved, _ = train(f"{src_prec}-to-{dst_prec}-{other_name}", other + [dst], 20, extra=["--resume", step],
                     ck=os.path.join(a.work, f"ck-{src_prec}-{other_name}"))
    if same and moved:
        close(f"{src_prec} checkpoint resumed as {dst_prec} on {other_name} vs on dp2", losses(moved), losses(same), rel)


cross("bf16", "f32", FSDP, "fsdp2", 1e-5)
cross("f32", "bf16", TP, "tp2", 1e-3)

# 3. f16 resumes exactly: the loss scale's state is in the checkpoint (a small window makes
#    the scale change within the run, a large start makes it skip steps first)
F16RUN = DP + [F16, "train.loss_scale=1099511627776", "train.loss_scale_window=3"]
whole, _ = train("f16-whole", F16RUN, 30)
part, ck = train("f16-part", F16RUN, 15, every=15)
if whole and part:
    rest, _ = train("f16-rest", F16RUN, 30, extra=["--resume", "latest"], ck=ck)
    if rest:
        common.check(losses(part) + losses(rest) == losses(whole),
                     "f16 run resumed at step 15 gives the uninterrupted run's 30 losses bit for bit")
        common.check(rest["loss_scale_final"] == whole["loss_scale_final"] and
                     rest["skipped_steps"] == whole["skipped_steps"] and whole["skipped_steps"] > 0,
                     f"f16 loss scale {rest['loss_scale_final']} / {whole['loss_scale_final']}, skipped "
                     f"{rest['skipped_steps']} / {whole['skipped_steps']}")
common.finish()
