#!/usr/bin/env bash
# Creates (once) the Python virtual environment that holds the peers perf/ measures
# shardflow against: a current PyTorch from PyPI (torch.distributed over gloo, DDP,
# torch.compile with its C++ backend, FSDP2) and numpy. It never touches the system Python
# and is never needed by the build or the test suite. Prints the venv's python on stdout.
#
# Usage: perf/peer_env.sh            -> the venv's python (creating it on first use)
# Env:   SHARDFLOW_PEER_VENV          where the venv lives (default: <repo>/perf/.venv)
#        SHARDFLOW_PEER_TORCH         the torch requirement (default: torch==2.15.0)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SHARDFLOW_PEER_VENV:-$root/perf/.venv}
torch_req=${SHARDFLOW_PEER_TORCH:-torch==2.15.0}
stamp="$venv/.shardflow-peer-$(echo "$torch_req" | tr -c 'A-Za-z0-9.=' '_')"
if [[ ! -f "$stamp" ]]; then
  echo "peer_env: creating $venv with $torch_req from PyPI (first use; several GB)" >&2
  python3 -m venv "$venv" >&2 || {
    # Debian's python3 without python3-venv: install it (root) and retry.
    if [[ $(id -u) -eq 0 ]]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >&2
      python3 -m venv "$venv" >&2
    else
      echo "peer_env: python3 -m venv failed; install python3-venv" >&2; exit 1
    fi
  }
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q "$torch_req" numpy >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
