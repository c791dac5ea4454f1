#!/bin/bash
# the AMX Xeon: bench_gemm (f32 and bf16 per product), then alternated rounds of shardflow DP
# f32 / bf16 / bf16 with the matmul off against PyTorch DDP eager f32 / autocast bf16
s=/tmp/sf; mkdir -p $s && tar -C $s -xJf .gpu-bundle/bundle.tar.xz
L=$s/lib:/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64
export PATH=$s/bin:$PATH
LD_LIBRARY_PATH=$L timeout 120 .gpu-bundle/bench_gemm 2>&1 | tee $OUT/bench_gemm.txt
for r in 3 4 5; do
  for k in f32 bf16 bf16off; do
    p=${k%off}; env=; [ $k = bf16off ] && env=SHARDFLOW_GEMM_BF16=off
    rm -rf /tmp/ck
    env $env LD_LIBRARY_PATH=$L timeout 120 mpiexec -n 2 $s/bin/shardflow train inputs/bench.toml --set mesh.data=2 train.steps=30 "train.precision=\"$p\"" checkpoint.dir=/tmp/ck --summary $OUT/sf_${k}_$r.json --quiet 2>&1 | tail -1
  done
  for p in f32 bf16; do
    timeout 120 python3 perf/torch_peer.py --deck inputs/bench.toml --nproc 2 --mode ddp --precision $p --steps 30 --warmup-steps 3 --summary $OUT/pt_${p}_$r.json --quiet 2>&1 | tail -1
  done
done
python3 - <<'PY'
import glob, json, os, statistics as S
out = os.environ["OUT"]
for f in sorted(glob.glob(out + "/*.json")):
    d = json.load(open(f)); st = d["steps"][3:]
    m = lambda k: S.median(x[k] for x in st) * 1e3 if k in st[0] else float("nan")
    print(os.path.basename(f), "step %.1f compute %.1f wait %.1f ms loss %.4f" % (m("step_time_s"), m("compute_s"), m("comm_wait_s"), d["final_loss"]))
PY
