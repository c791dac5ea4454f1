#!/bin/bash
# usage: simcases2.sh BIN OUTDIR [extra args]
B=$1; O=$2; shift 2
mkdir -p $O
I=/work/main/inputs
c=0
while read -r cl deck sets; do c=$((c+1)); $B simulate $I/$deck --cluster $cl --json --set $sets "$@" > $O/more$c.json 2>$O/more$c.err; done <<'CASES'
a100-80gb bench.toml mesh.pipeline=2 train.micro_batches=16 train.global_batch=16
a100-80gb bench.toml mesh.pipeline=4 model.layers=8 train.micro_batches=32 train.global_batch=32 strategy.virtual_stages=2
a100-80gb bench.toml mesh.data=2 mesh.pipeline=2 train.micro_batches=16 train.global_batch=32 strategy.zero_stage=2
a100-80gb bench.toml mesh.expert=2 mesh.pipeline=2 model.experts=4 model.top_k=2 model.moe_every=2 train.micro_batches=16 train.global_batch=32
a100-80gb llama_quickstart.toml mesh.context=2 mesh.pipeline=2 train.micro_batches=16 train.global_batch=32
/tmp/a100core.toml bench.toml mesh.data=2 mesh.pipeline=4 train.micro_batches=16 train.global_batch=32
/tmp/a100core.toml bench.toml mesh.tensor=2 mesh.pipeline=2 train.micro_batches=16 train.global_batch=16 strategy.sequence_parallel=true
a100-80gb bench.toml mesh.pipeline=4 train.micro_batches=16 train.global_batch=16 strategy.schedule="gpipe"
a100-80gb cluster_175b.toml mesh.data=2 mesh.tensor=8 mesh.pipeline=12 train.global_batch=192 train.micro_batches=96 strategy.recompute="selective" strategy.sequence_parallel=true train.precision="bf16"
a100-80gb cluster_175b.toml mesh.data=2 mesh.tensor=4 mesh.pipeline=24 train.global_batch=192 train.micro_batches=96 strategy.virtual_stages=2 strategy.zero_stage=2 train.precision="bf16"
h100-80gb cluster_175b.toml mesh.data=16 mesh.tensor=8 mesh.pipeline=8 train.global_batch=2048 train.micro_batches=128 strategy.recompute="full" train.precision="bf16"
a100-80gb bench.toml mesh.pipeline=3 model.layers=7 train.micro_batches=12 train.global_batch=12
CASES
