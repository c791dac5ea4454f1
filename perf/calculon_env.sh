#!/usr/bin/env bash
# Creates (once) the Python virtual environment perf/bench_calculon.py runs Calculon in:
# numpy, pandas and psutil from PyPI (Calculon's imports). Never the system Python, never needed by
# the build or the test suite. Prints the venv's python on stdout.
#
# Usage: $(perf/calculon_env.sh) perf/bench_calculon.py --calculon DIR
# Env:   SHARDFLOW_CALCULON_VENV   where the venv lives (default: <repo>/perf/.venv-calculon)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SHARDFLOW_CALCULON_VENV:-$root/perf/.venv-calculon}
# shellcheck source=perf/venv_lib.sh
source "$root/perf/venv_lib.sh"
ensure_venv "$venv" calculon-numpy-pandas-psutil numpy pandas psutil
