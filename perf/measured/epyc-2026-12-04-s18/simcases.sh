#!/bin/bash
# usage: simcases.sh BIN OUTDIR [extra args]
B=$1; O=$2; shift 2
mkdir -p $O
d=$(ls -d /tmp/shardflow-korthikanti-* | tail -1)
for f in $d/*.toml; do n=$(basename $f .toml); $B simulate $f --cluster a100-80gb --json "$@" > $O/$n.json 2>$O/$n.err; done
I=/work/main/inputs
c=0
while read -r deck sets; do c=$((c+1)); $B simulate $I/$deck --cluster a100-80gb --json --set $sets "$@" > $O/case$c.json 2>$O/case$c.err; done <<'CASES'
bench.toml mesh.data=1 mesh.pipeline=2 train.micro_batches=4
bench.toml mesh.data=2 mesh.pipeline=2 train.micro_batches=8 train.global_batch=16
bench.toml mesh.data=1 mesh.pipeline=4 train.micro_batches=8 strategy.virtual_stages=1
bench.toml mesh.pipeline=2 train.micro_batches=4 strategy.virtual_stages=2
bench.toml mesh.pipeline=2 train.micro_batches=4 strategy.schedule="gpipe"
bench.toml mesh.data=2 mesh.pipeline=2 train.micro_batches=8 train.global_batch=16 strategy.zero_stage=3
bench.toml mesh.data=2 mesh.pipeline=2 train.micro_batches=8 train.global_batch=16 strategy.zero_stage=1 strategy.recompute="full"
bench.toml mesh.tensor=2 mesh.pipeline=2 train.micro_batches=8 train.global_batch=16 strategy.sequence_parallel=true strategy.recompute="selective"
cluster_175b.toml mesh.data=4 mesh.tensor=8 mesh.pipeline=16 train.global_batch=1536 train.micro_batches=96 strategy.virtual_stages=3 train.precision="bf16"
cluster_175b.toml mesh.data=8 mesh.tensor=8 mesh.pipeline=8 train.global_batch=512 train.micro_batches=64 strategy.zero_stage=1 train.precision="bf16"
cluster_175b.toml mesh.fsdp=16 mesh.tensor=4 mesh.pipeline=4 train.global_batch=256 train.micro_batches=16 strategy.zero_stage=3 strategy.recompute="full" train.precision="bf16"
llama_quickstart.toml mesh.context=2 mesh.pipeline=2 train.micro_batches=4
CASES
