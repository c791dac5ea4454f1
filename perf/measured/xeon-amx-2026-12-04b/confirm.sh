#!/bin/bash
# AMX Xeon: shardflow DP f32 / bf16 (this build) against PyTorch DDP eager f32 / autocast bf16, 2 ranks, alternated rounds
set -u
s=/tmp/sf; mkdir -p $s && tar -C $s -xJf .gpu-bundle/bundle.tar.xz
L=$s/lib:/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64
export PATH=$s/bin:$PATH
exec > $OUT/confirm.log 2>&1
LD_LIBRARY_PATH=$L $s/bin/shardflow version
for r in 1 2 3; do
  for p in f32 bf16; do
    rm -rf /tmp/ck
    LD_LIBRARY_PATH=$L timeout 120 mpiexec -n 2 $s/bin/shardflow train inputs/bench.toml --set mesh.data=2 train.steps=30 "train.precision=\"$p\"" checkpoint.dir=/tmp/ck --summary /tmp/sf_${p}_$r.json --quiet 2>&1 | tail -1
    timeout 120 python3 perf/torch_peer.py --deck inputs/bench.toml --nproc 2 --mode ddp --precision $p --steps 30 --warmup-steps 3 --summary /tmp/pt_${p}_$r.json --quiet 2>&1 | tail -1
  done
done
python3 - <<'PY' | tee $OUT/confirm.txt
import glob, json, os, statistics as S
med = {}
for f in sorted(glob.glob("/tmp/sf_*.json") + glob.glob("/tmp/pt_*.json")):
    d = json.load(open(f)); st = d["steps"][3:]
    m = S.median(x["step_time_s"] for x in st) * 1e3
    med[os.path.basename(f)[:-5]] = m
    print(os.path.basename(f), "median step %.1f ms, final loss %.6f" % (m, d["final_loss"]))
for r in (1, 2, 3):
    g = lambda k: med.get(f"{k}_{r}", float("nan"))
    print(f"round {r}: sf f32 / pt f32 speed {g('pt_f32') / g('sf_f32'):.2f}, sf bf16 / pt bf16 {g('pt_bf16') / g('sf_bf16'):.2f}, "
          f"sf bf16 / sf f32 {g('sf_f32') / g('sf_bf16'):.2f}, pt bf16 / pt f32 {g('pt_f32') / g('pt_bf16'):.2f}")
PY
