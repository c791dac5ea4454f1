#!/usr/bin/env bash
# Run shardflow's GPU checks on a machine with a CUDA GPU, from a bundle made by
# perf/gpu_bundle.sh (this script sits beside bundle.tar.xz): `shardflow version`, every test
# labelled gpu (one rank, under the bundled mpiexec), and perf/gpu_probe.py (GEMM and memory
# rates, one-GPU training steps of MODEL.md's model through PyTorch). The NCCL and the CUDA
# runtime come from this machine: NCCL_LIB / CUDART_LIB name their folders, else the CUDA
# toolkit's folder and PyTorch's nvidia-* wheels are searched.
#
# Usage: perf/gpu_check.sh OUT_DIR [--no-probe]
# Writes OUT_DIR/check.log, OUT_DIR/<test>.json (gtest), OUT_DIR/probe.json; exits non-zero
# when a gpu test failed (the probe's failure is logged, and also counts).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: gpu_check.sh OUT_DIR [--no-probe]}
probe=1
[ "${2:-}" = "--no-probe" ] && probe=0
mkdir -p "$out"
exec > >(tee "$out/check.log") 2>&1
stage=$(mktemp -d /tmp/shardflow-gpu.XXXXXX)
trap 'rm -rf "$stage"' EXIT
tar -C "$stage" -xJf "$here/bundle.tar.xz" || { echo "gpu_check: cannot unpack $here/bundle.tar.xz"; exit 2; }

find_lib() {  # find_lib SONAME DIR...: the first folder holding SONAME
  local so=$1
  shift
  for d in "$@"; do [ -e "$d/$so" ] && { echo "$d"; return 0; }; done
  local py
  py=$(python3 - "$so" 2>/dev/null <<'EOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for p in glob.glob(os.path.join(r, "nvidia", "*", "lib", sys.argv[1])):
        print(os.path.dirname(p)); sys.exit(0)
EOF
)
  [ -n "$py" ] && { echo "$py"; return 0; }
  return 1
}
nccl=${NCCL_LIB:-$(find_lib libnccl.so.2 /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu)} ||
  { echo "gpu_check: no libnccl.so.2 on this machine (set NCCL_LIB)"; exit 2; }
cudart=${CUDART_LIB:-$(find_lib libcudart.so.13 /usr/local/cuda/lib64 /usr/local/cuda/lib)} ||
  { echo "gpu_check: no libcudart.so.13 on this machine (set CUDART_LIB)"; exit 2; }
libpath="$stage/lib:$nccl:$cudart"
echo "gpu_check: NCCL from $nccl, CUDA runtime from $cudart"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
run() { env LD_LIBRARY_PATH="$libpath" PATH="$stage/bin:$PATH" "$@"; }
fails=0
run "$stage/bin/shardflow" version || { echo "gpu_check: shardflow version failed"; fails=$((fails + 1)); }
for t in "$stage"/tests/*; do
  name=$(basename "$t")
  echo "gpu_check: $name (mpiexec -n 1)"
  rm -f "$out/$name.json"
  start=$SECONDS
  run timeout 300 "$stage/bin/mpiexec" -n 1 -genv NCCL_DEBUG VERSION "$t" --gtest_output="json:$out/$name.json"
  rc=$?
  echo "gpu_check: $name exit $rc in $((SECONDS - start)) s"
  if [ $rc -ne 0 ] && [ ! -s "$out/$name.json" ]; then  # mpiexec itself failed: MPI's singleton start
    echo "gpu_check: $name again without mpiexec (singleton MPI)"
    run env NCCL_DEBUG=VERSION timeout 300 "$t" --gtest_output="json:$out/$name.json"
    rc=$?
    echo "gpu_check: $name (singleton) exit $rc"
  fi
  [ $rc -eq 0 ] || fails=$((fails + 1))
done

if [ $probe -eq 1 ]; then
  echo "gpu_check: gpu_probe.py"
  PYTHONUNBUFFERED=1 timeout 420 python3 "$here/gpu_probe.py" --summary "$out/probe.json" || {
    echo "gpu_check: gpu_probe.py failed"
    fails=$((fails + 1))
  }
fi
echo "gpu_check: $fails failure(s)"
[ $fails -eq 0 ]
