#!/bin/bash
# shardflow DP (f32, bf16) against PyTorch DDP eager (f32, autocast bf16) on 2 ranks of the GPU machine's Xeon
s=/tmp/sf; mkdir -p $s && tar -C $s -xJf .gpu-bundle/bundle.tar.xz
L=$s/lib:/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64
export PATH=$s/bin:$PATH
lscpu | grep -E "Model name|^CPU\(s\)|Thread|Flags" | cut -c1-200
python3 -c "import torch; print('torch', torch.__version__, torch.backends.mkldnn.is_available())"
for r in 1 2; do
  for p in f32 bf16; do
    rm -rf /tmp/ck
    LD_LIBRARY_PATH=$L timeout 120 mpiexec -n 2 $s/bin/shardflow train inputs/bench.toml --set mesh.data=2 train.steps=30 "train.precision=\"$p\"" checkpoint.dir=/tmp/ck --summary $OUT/sf_${p}_$r.json --quiet 2>&1 | tail -3
    timeout 120 python3 perf/torch_peer.py --deck inputs/bench.toml --nproc 2 --mode ddp --precision $p --steps 30 --warmup-steps 3 --summary $OUT/pt_${p}_$r.json --quiet 2>&1 | tail -3
  done
done
python3 - <<'PY'
import glob, json, os, statistics as S
out = os.environ["OUT"]
def med(f):
    d = json.load(open(f)); st = d["steps"][3:]
    return S.median(x["step_time_s"] for x in st) * 1e3, d.get("final_loss"), d.get("peak_gflops_per_rank"), d.get("mfu")
for f in sorted(glob.glob(out + "/*.json")):
    try:
        print(os.path.basename(f), "median step %.1f ms  loss %s  peak %s  mfu %s" % med(f))
    except Exception as e:
        print(f, "unreadable", e)
PY
