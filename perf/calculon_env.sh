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
stamp="$venv/.shardflow-calculon-numpy-pandas-psutil"
if [[ ! -f "$stamp" ]]; then
  echo "calculon_env: creating $venv with numpy, pandas and psutil from PyPI (first use)" >&2
  python3 -m venv "$venv" >&2 || {
    if [[ $(id -u) -eq 0 ]]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >&2
      python3 -m venv "$venv" >&2
    else
      echo "calculon_env: python3 -m venv failed; install python3-venv" >&2; exit 1
    fi
  }
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q numpy pandas psutil >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
