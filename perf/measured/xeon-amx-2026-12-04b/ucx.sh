#!/bin/bash
# AMX Xeon: which UCX transport carries shardflow's DP all-reduces between 2 ranks, and what each costs
set -u
s=/tmp/sf; mkdir -p $s && tar -C $s -xJf .gpu-bundle/bundle.tar.xz
L=$s/lib:/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64
export PATH=$s/bin:$PATH
exec > $OUT/ucx.log 2>&1
df -h /dev/shm | tail -1; ulimit -a | grep -i "locked\|open"; cat /proc/sys/kernel/yama/ptrace_scope 2>&1
rm -rf /tmp/ck
UCX_LOG_LEVEL=info LD_LIBRARY_PATH=$L timeout 60 mpiexec -n 2 $s/bin/shardflow train inputs/bench.toml --set mesh.data=2 train.steps=3 checkpoint.dir=/tmp/ck --quiet 2>&1 | grep -i -E "ucx|transport|tls|ep_cfg" | sort | uniq -c | head -30
for r in 1 2; do
  for tls in default posix,self sysv,self cma,posix,self tcp,self; do
    rm -rf /tmp/ck
    e=X=1; [ $tls != default ] && e=UCX_TLS=$tls
    env $e LD_LIBRARY_PATH=$L timeout 60 mpiexec -n 2 $s/bin/shardflow train inputs/bench.toml --set mesh.data=2 train.steps=20 checkpoint.dir=/tmp/ck --summary /tmp/u.json --quiet > /tmp/u.log 2>&1
    echo "rc=$? $(tail -c 300 /tmp/u.log | tr '\n' ' ')" | grep -v "rc=0 $" | head -c 300
    python3 -c "
import json,statistics as S
d=json.load(open('/tmp/u.json')); st=d['steps'][3:]
print('round $r UCX_TLS=$tls', 'step %.1f compute %.1f wait %.1f ms' % tuple(S.median(x[k] for x in st)*1e3 for k in ('step_time_s','compute_s','comm_wait_s')))" 2>&1 | tail -1
    rm -f /tmp/u.json
  done
done
