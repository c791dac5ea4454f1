#!/bin/bash
# AMX Xeon: bench_gemm with the step's own attention products (causal blocks, windowed C), and PyTorch's matmul on them
s=/tmp/sf; mkdir -p $s && tar -C $s -xJf .gpu-bundle/bundle.tar.xz
L=$s/lib:/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64
LD_LIBRARY_PATH=$L timeout 120 .gpu-bundle/bench_gemm > $OUT/bench_gemm2.txt 2>&1
timeout 120 python3 perf/gemm_peer.py --table $OUT/bench_gemm2.txt > $OUT/gemm_peer2.txt 2>&1
cat $OUT/bench_gemm2.txt $OUT/gemm_peer2.txt
