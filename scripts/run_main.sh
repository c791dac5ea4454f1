#!/usr/bin/env bash
# The main job on a fresh Debian bookworm machine (README command 1): installs what is
# missing, builds the release preset, and trains the reference GPT on the bundled
# quickstart deck on 2 MPI ranks (extra arguments go to `shardflow train`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target shardflow_cli
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
rm -rf build/release/quickstart-checkpoints
exec mpiexec -n 2 build/release/apps/shardflow train inputs/quickstart.toml --summary build/release/quickstart_summary.json \
  --set checkpoint.dir=build/release/quickstart-checkpoints "$@"
