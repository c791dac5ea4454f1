#!/usr/bin/env bash
# The whole test suite on a fresh Debian bookworm machine (README command 2):
# installs what is missing, configures and builds the release preset, runs ctest.
# SHARDFLOW_PRESET=asan runs the sanitizer build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${SHARDFLOW_PRESET:-release}"
scripts/setup.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "$(nproc)"
ctest --preset "$preset" -j "$(nproc)" "$@"
