#!/usr/bin/env bash
# Pack what a GPU machine needs to run shardflow's GPU checks (perf/gpu_check.sh) when it has
# CUDA's driver, a CUDA 13 runtime and NCCL 2.x but not Debian's MPICH, Kokkos, OpenBLAS,
# oneDNN and HDF5 that the build here links: the `shardflow` app, every test labelled `gpu`,
# MPICH's mpiexec, and each shared library they load except glibc's own, the CUDA driver,
# the CUDA runtime and NCCL (those come from the GPU machine, which must have them).
#
# Usage: perf/gpu_bundle.sh [BUILD_DIR] [OUT_DIR]      (defaults: build/release .gpu-bundle)
# The bundle is OUT_DIR/bundle.tar.xz plus OUT_DIR/gpu_check.sh and gpu_probe.py; the
# built tree must come from a configure with SHARDFLOW_ENABLE_CUDA and _NCCL on.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build/release}" && pwd)
out=${2:-$root/.gpu-bundle}
grep -q "^SHARDFLOW_ENABLE_NCCL:BOOL=ON" "$build/CMakeCache.txt" ||
  { echo "gpu_bundle: $build was configured without SHARDFLOW_ENABLE_NCCL=ON; nothing to check on a GPU" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/tests"
cp "$build/apps/shardflow" "$stage/bin/"
# the gpu-labelled tests, by the executable ctest runs for each
mapfile -t gpu_tests < <(cd "$build" && ctest -L gpu --show-only=json-v1 |
  python3 -c 'import json,sys; [print(c) for t in json.load(sys.stdin)["tests"] for c in t["command"] if "/tests/" in c]')
[ "${#gpu_tests[@]}" -gt 0 ] || { echo "gpu_bundle: ctest lists no test labelled gpu in $build" >&2; exit 1; }
for t in "${gpu_tests[@]}"; do cp "$t" "$stage/tests/"; done
mpiexec_real=$(readlink -f "$(command -v mpiexec)")
cp "$mpiexec_real" "$stage/bin/mpiexec"
[ -x /usr/bin/hydra_pmi_proxy ] && cp /usr/bin/hydra_pmi_proxy "$stage/bin/"

# shared libraries: everything ldd resolves, less glibc, the CUDA driver/runtime and NCCL
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libutil\.so|libnsl\.so|libcuda\.so|libcudart\.so|libnccl\.so)'
for f in "$stage"/bin/* "$stage"/tests/*; do
  { ldd "$f" || true; } | awk '/=> \//{print $1, $3}'
done | sort -u | while read -r name path; do
  [[ $name =~ $skip ]] && continue
  cp -L "$path" "$stage/lib/$name"
done
# UCX (MPICH's ch4:ucx) loads its transports as modules from ucx/ beside libucs at run time,
# which ldd does not see: without libuct_cma its large messages between ranks of one node
# go through shared-memory copies instead of single-copy CMA. (The InfiniBand modules need
# the machine's verbs libraries and are left out.)
ucs=$(ldd "$stage/bin/shardflow" | awk '/libucs\.so/{print $3; exit}')
cma=${ucs:+$(dirname "$(readlink -f "$ucs")")/ucx/libuct_cma.so.0}
if [ -n "$ucs" ] && [ -e "$cma" ]; then
  mkdir -p "$stage/lib/ucx"
  cp -L "$cma" "$stage/lib/ucx/"
  ln -s libuct_cma.so.0 "$stage/lib/ucx/libuct_cma.so"
elif [ -n "$ucs" ]; then
  echo "gpu_bundle: warning: no ucx/libuct_cma.so.0 beside $ucs; the bundle's MPI moves large messages without CMA" >&2
fi
mkdir -p "$out"
tar -C "$stage" -cf - bin lib tests | xz -T2 -6 >"$out/bundle.tar.xz"
cp "$root/perf/gpu_check.sh" "$root/perf/gpu_probe.py" "$root/perf/torch_peer.py" "$out/"
echo "gpu_bundle: $out/bundle.tar.xz ($(du -h "$out/bundle.tar.xz" | cut -f1)): ${#gpu_tests[@]} gpu test(s)," \
  "$(ls "$stage/lib" | wc -l) libraries"
