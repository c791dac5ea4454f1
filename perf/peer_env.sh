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
# shellcheck source=perf/venv_lib.sh
source "$root/perf/venv_lib.sh"
ensure_venv "$venv" "peer-$(echo "$torch_req" | tr -c 'A-Za-z0-9.=' '_')" "$torch_req" numpy
