#!/bin/bash
# AMX Xeon: bf16 step of the bundled shardflow (old) against .gpu-bundle/shardflow_new (attention's products into dense scratch)
set -u
s=/tmp/sf; mkdir -p $s && tar -C $s -xJf .gpu-bundle/bundle.tar.xz
L=$s/lib:/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64
export PATH=$s/bin:$PATH
exec > $OUT/ab.log 2>&1
for b in old new; do
  bin=$s/bin/shardflow; [ $b = new ] && bin=.gpu-bundle/shardflow_new
  rm -rf /tmp/ck
  ONEDNN_VERBOSE=1 LD_LIBRARY_PATH=$L timeout 120 mpiexec -n 1 $bin train inputs/bench.toml --set train.steps=3 'train.precision="bf16"' checkpoint.dir=/tmp/ck --quiet 2>&1 | python3 .gpu-bundle/vsum.py $b
done > $OUT/verbose_train.txt
run() {  # label binary precision
  rm -rf /tmp/ck /tmp/tr_$1
  LD_LIBRARY_PATH=$L timeout 120 mpiexec -n 2 $2 train inputs/bench.toml --set mesh.data=2 train.steps=30 \
    "train.precision=\"$3\"" checkpoint.dir=/tmp/ck --summary /tmp/sf_$1.json --trace /tmp/tr_$1 --quiet 2>&1 | tail -2
}
for r in 1 2 3; do
  run old_$r $s/bin/shardflow bf16; run new_$r .gpu-bundle/shardflow_new bf16; run f32_$r $s/bin/shardflow f32
done
{ python3 - <<'PY'
import glob, json, os, statistics as S
for f in sorted(glob.glob("/tmp/sf_*.json")):
    d = json.load(open(f)); st = d["steps"][3:]
    m = lambda k: S.median(x[k] for x in st) * 1e3
    print(os.path.basename(f), "step %.1f compute %.1f wait %.1f ms loss %.6f" % (m("step_time_s"), m("compute_s"), m("comm_wait_s"), d["final_loss"]))
PY
  python3 .gpu-bundle/tasks.py /tmp/tr_old_1 /tmp/tr_new_1 /tmp/tr_f32_1 /tmp/tr_old_2 /tmp/tr_new_2 /tmp/tr_f32_2 /tmp/tr_old_3 /tmp/tr_new_3 /tmp/tr_f32_3; } > $OUT/ab.txt 2>&1
cat $OUT/ab.txt
