#!/bin/bash
# usage: dprun.sh label binary [set...]
l=$1; b=$2; shift 2
rm -rf /tmp/ck; mpiexec -n 2 $b train /work/main/inputs/bench.toml --set mesh.data=2 train.steps=30 checkpoint.dir=/tmp/ck "$@" --summary /tmp/dp.json --quiet; rm -rf /tmp/ck
python3 -c "
import json,statistics as S;d=json.load(open('/tmp/dp.json'));st=d['steps'][3:]
print('$l', *(round(S.median(x[k] for x in st)*1e3,1) for k in ('step_time_s','compute_s','comm_wait_s')), 'over', round(S.median(x['step_time_s']-x['compute_s'] for x in st)*1e3,2), 'loss', d['final_loss'])"
