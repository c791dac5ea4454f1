#!/usr/bin/env bash
# Installs the Debian packages shardflow needs to build, test and run. Idempotent: when
# every package is present it only checks and returns (well under a second).
# Run as root (or with sudo available). Usage: scripts/setup.sh [--slurm]
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build pkg-config git
  mpich libmpich-dev libhdf5-mpich-dev hdf5-tools
  libtrilinos-kokkos-dev libtrilinos-kokkos-kernels-dev libopenblas-dev libdnnl-dev libtcmalloc-minimal4
  libgtest-dev libgmock-dev libbenchmark-dev
  libtomlplusplus-dev libcli11-dev nlohmann-json3-dev libfmt-dev libspdlog-dev
  python3 python3-numpy python3-h5py gnuplot-nox
)
if [[ "${1:-}" == "--slurm" ]]; then
  PKGS+=(slurm-wlm munge)
fi
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "setup: installing ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done" >&2
