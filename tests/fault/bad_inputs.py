"""Bad input is refused early, clearly, and without echoing what it should not (issue 15
items 5 and 7), and GPUs given to a CPU-only run are reported (item 8): each case must fail
within 10 s, before a training step, with a message naming the key or file and the value."""
import json
import os
import shutil

from common import args, check, finish, run, train_cmd

a = args()
ck = os.path.join(a.work, "ck")


def refused(what, cmd, *needles, env=None):
    rc, out, err, secs = run(cmd, env=env)
    ok = rc != 0 and "loss" not in out and secs < 10 and all(n in err for n in needles)
    check(ok, f"{what}: refused in {secs:.1f} s: {err.strip()[-220:]}")
    return err


# sizes that cannot fit at all: refused in O(1), before the model's per-layer records exist
refused("model.layers = 1e8", train_cmd(a, 2, "checkpoint.dir=" + ck, "model.layers=100000000"),
        "--set model.layers=100000000", "parameters need at least", "GiB per rank")
refused("model.hidden = 1e9", train_cmd(a, 2, "checkpoint.dir=" + ck, "model.hidden=1000000000"),
        "--set model.hidden=1000000000", "model.hidden = 1000000000")
refused("model.vocab = 1e11", train_cmd(a, 2, "checkpoint.dir=" + ck, "model.vocab=100000000000"),
        "--set model.vocab=100000000000", "model.vocab = 100000000000")
refused("model.seq longer than the corpus",
        train_cmd(a, 2, "checkpoint.dir=" + ck, "model.seq=1000000", "train.memory_limit_gib=1000000000"),
        "model.seq = 1000000 needs a corpus of at least", "corpus.txt' holds")
refused("train.lr = nan", train_cmd(a, 2, "checkpoint.dir=" + ck, "train.lr=nan"),
        "--set train.lr=nan: train.lr = nan is not a finite number")
# the Llama family and the context axis (issue 16)
refused("model.family = mistral", train_cmd(a, 2, "checkpoint.dir=" + ck, 'model.family="mistral"'),
        'model.family = "mistral" is not a model family (gpt, llama)')
refused("model.kv_heads not dividing the heads",
        train_cmd(a, 2, "checkpoint.dir=" + ck, 'model.family="llama"', "model.kv_heads=3"),
        "--set model.kv_heads=3: model.kv_heads = 3 does not divide model.heads = 4")
refused("model.kv_heads on the gpt", train_cmd(a, 2, "checkpoint.dir=" + ck, "model.kv_heads=2"),
        "model.kv_heads = 2 needs model.family")
refused("mesh.context not dividing the sequence",
        train_cmd(a, 2, "checkpoint.dir=" + ck, "mesh.data=1", "mesh.context=2", "model.seq=66"),
        "mesh.context = 2 splits each sequence into 2 x 2 chunks, which model.seq = 66 does not divide")

# a checkpoint to spoil
rc, out, err, _ = run(train_cmd(a, 2, "train.steps=2", "checkpoint.dir=" + ck))
check(rc == 0, f"a checkpoint to spoil was written ({err.strip()[-100:]})")
step_dir = os.path.join(ck, "step-00000002")
pointer = os.path.join(ck, "latest")
good = open(pointer).read()
resume = train_cmd(a, 2, "train.steps=4", "checkpoint.dir=" + ck, extra=["--resume", "latest"])
os.remove(pointer)
os.symlink("/etc/passwd", pointer)
err = refused("latest -> /etc/passwd", resume, "is a symbolic link")
check("root:" not in err, "nothing of /etc/passwd is echoed")
os.remove(pointer)
os.link("/etc/passwd", pointer) if os.stat("/etc/passwd").st_dev == os.stat(ck).st_dev else open(pointer, "w").write(
    "root:x:0:0")
err = refused("latest hard-linked to /etc/passwd (or holding its first line)", resume, "latest'")
os.remove(pointer)
with open(pointer, "wb") as f:
    f.write(b"\x01\x02\xffstep-\x1b[2J" + b"A" * 500)
err = refused("latest holding binary bytes", resume, "does not name a step directory")
check("\x1b" not in err and "\x01" not in err and "A" * 100 not in err, "the bytes are echoed printable and bounded")
with open(pointer, "w") as f:
    f.write(good)

# an edited manifest: a dtype change, a dropped tensor
manifest = os.path.join(step_dir, "manifest.json")
original = open(manifest).read()
for what, edit in (("a dtype changed", lambda m: m["tensors"][0].update(dtype="f64")),
                   ("a tensor dropped", lambda m: m["tensors"].pop(3))):
    m = json.loads(original)
    edit(m)
    with open(manifest, "w") as f:
        json.dump(m, f)
    refused(f"manifest with {what}", resume, "manifest.json: the manifest does not match its own checksum")
with open(manifest, "w") as f:
    f.write(original)
rc, out, err, _ = run(resume)
check(rc == 0 and "resumed from " + step_dir + " at step 2" in out,
      f"the repaired checkpoint resumes, and the resume line names the step directory restored ({rc})")

# `ckpt consolidate` onto existing paths (the checkpoint's own files, any file): refused,
# and nothing changes (issue 15 item 1)
before = {p: open(p, "rb").read() for p in (pointer, manifest, os.path.join(step_dir, "shard-0.h5"))}
other = os.path.join(a.work, "precious.txt")
with open(other, "w") as f:
    f.write("keep me")
for target in (pointer, manifest, os.path.join(step_dir, "shard-0.h5"), other):
    rc, out, err, secs = run([a.app, "ckpt", "consolidate", ck, target])
    check(rc != 0 and "exists" in err, f"consolidate onto {os.path.basename(target)} is refused: {err.strip()[-120:]}")
check(all(open(p, "rb").read() == b for p, b in before.items()) and open(other).read() == "keep me",
      "no file was touched")
rc, out, err, _ = run(resume)
check(rc == 0, "the checkpoint still resumes")

# GPUs given to a run that computes on the CPUs: said on stderr
env = dict(os.environ, SLURM_GPUS_ON_NODE="4", CUDA_VISIBLE_DEVICES="0,1,2,3")
rc, out, err, _ = run(train_cmd(a, 2, "train.steps=1", "checkpoint.dir=" + os.path.join(a.work, "gpu")), env=env)
check(rc == 0 and "warning: this job was given GPUs (SLURM_GPUS_ON_NODE=4, CUDA_VISIBLE_DEVICES=0,1,2,3)" in err
      and "stay idle" in err, f"idle GPUs are reported: {err.strip()[:200]}")
rc, out, err, _ = run(train_cmd(a, 2, "train.steps=1", "checkpoint.dir=" + os.path.join(a.work, "cpu")),
                      env={k: v for k, v in os.environ.items() if "GPU" not in k and k != "CUDA_VISIBLE_DEVICES"})
check(rc == 0 and "GPUs" not in err, "no warning without GPUs")
finish()
