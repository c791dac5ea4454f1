#!/bin/bash
# The AMX Xeon of the GPU machine: where shardflow's bf16 step loses against PyTorch's.
# 1 GEMMs: bench_gemm (shardflow's sgemm and bf16 matmul per product) and perf/gemm_peer.py (PyTorch's on the same products)
# 2 implementations: oneDNN verbose for both (which kernel runs each product)
# 3 the step: shardflow DP f32 / bf16 with per-task traces, with UCX's cma module and without; PyTorch DDP f32 / bf16
set -u
s=/tmp/sf; mkdir -p $s && tar -C $s -xJf .gpu-bundle/bundle.tar.xz
L=$s/lib:/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64
export PATH=$s/bin:$PATH
exec > $OUT/amx.log 2>&1
lscpu | grep -E "Model name|^CPU\(s\)|Thread|Flags" | cut -c1-400
python3 -c "import torch; print('torch', torch.__version__, torch.backends.mkldnn.is_available())"
ls $s/lib/ucx
LD_LIBRARY_PATH=$L timeout 120 .gpu-bundle/bench_gemm > $OUT/bench_gemm.txt 2>&1
timeout 180 python3 perf/gemm_peer.py --table $OUT/bench_gemm.txt --json-out $OUT/gemm_peer.json > $OUT/gemm_peer.txt 2>&1
{ ONEDNN_VERBOSE=1 LD_LIBRARY_PATH=$L timeout 120 .gpu-bundle/bench_gemm 2>&1 | python3 .gpu-bundle/vsum.py shardflow
  ONEDNN_VERBOSE=1 timeout 120 python3 perf/gemm_peer.py --table $OUT/bench_gemm.txt --samples 2 2>&1 | python3 .gpu-bundle/vsum.py torch; } > $OUT/verbose.txt
run() {  # label precision [env...]
  local l=$1 p=$2; shift 2
  rm -rf /tmp/ck /tmp/tr_$l
  env "$@" LD_LIBRARY_PATH=$L timeout 120 mpiexec -n 2 $s/bin/shardflow train inputs/bench.toml --set mesh.data=2 train.steps=30 \
    "train.precision=\"$p\"" checkpoint.dir=/tmp/ck --summary /tmp/sf_$l.json --trace /tmp/tr_$l --quiet 2>&1 | tail -2
}
for r in 1 2; do
  run f32_$r f32 X=1; run bf16_$r bf16 X=1
  run f32nocma_$r f32 UCX_TLS=^cma; run bf16nocma_$r bf16 UCX_TLS=^cma
  timeout 120 python3 perf/torch_peer.py --deck inputs/bench.toml --nproc 2 --mode ddp --precision f32 --steps 30 --warmup-steps 3 --summary /tmp/pt_f32_$r.json --quiet 2>&1 | tail -1
  timeout 120 python3 perf/torch_peer.py --deck inputs/bench.toml --nproc 2 --mode ddp --precision bf16 --steps 30 --warmup-steps 3 --summary /tmp/pt_bf16_$r.json --quiet 2>&1 | tail -1
done
{ python3 - <<'PY'
import glob, json, os, statistics as S
for f in sorted(glob.glob("/tmp/sf_*.json") + glob.glob("/tmp/pt_*.json")):
    d = json.load(open(f)); st = d["steps"][3:]
    m = lambda k: S.median(x[k] for x in st) * 1e3 if k in st[0] else float("nan")
    print(os.path.basename(f), "step %.1f compute %.1f wait %.1f ms loss %.4f" % (m("step_time_s"), m("compute_s"), m("comm_wait_s"), d["final_loss"]))
PY
  python3 .gpu-bundle/tasks.py /tmp/tr_f32_1 /tmp/tr_bf16_1 /tmp/tr_f32_2 /tmp/tr_bf16_2 /tmp/tr_f32nocma_1 /tmp/tr_bf16nocma_1; } > $OUT/train.txt 2>&1
cat $OUT/train.txt
