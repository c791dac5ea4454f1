#!/usr/bin/env bash
# Submits a restart chain for a run longer than the partition's time limit: N jobs of
# batch/train.sbatch, each starting when the previous one ended well (--dependency=afterok).
# Each link trains until its time limit is near, checkpoints on the SIGUSR1 Slurm sends
# (--signal=B:USR1@LEAD) and exits 0 instead of requeueing; the next link resumes from the
# latest checkpoint. The link that completes the run leaves a marker (RUN_DIR/chain-done),
# so that the links after it end at once. Prints the job ids, one a line.
#
#   batch/chain.sh N [sbatch options...] -- DECK [shardflow train options...]
#   e.g. batch/chain.sh 4 --ntasks=8 --time=04:00:00 -- inputs/bench.toml --set mesh.data=8
#
# Environment: as for train.sbatch (SHARDFLOW_HOME, SHARDFLOW_BIN, SHARDFLOW_RUN_DIR, ...).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -lt 3 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [sbatch options...] -- DECK [train options...]" >&2
  exit 2
fi
links="$1"
shift
sbatch_opts=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  sbatch_opts+=("$1")
  shift
done
[[ "${1:-}" == "--" ]] || { echo "$0: missing '--' before the deck" >&2; exit 2; }
shift
[[ $# -ge 1 ]] || { echo "$0: missing the deck after '--'" >&2; exit 2; }
run_dir="${SHARDFLOW_RUN_DIR:-$PWD}"
mkdir -p "$run_dir"
export SHARDFLOW_HOME="${SHARDFLOW_HOME:-$(dirname "$here")}"
export SHARDFLOW_RUN_DIR="$run_dir" SHARDFLOW_ON_SIGNAL=exit SHARDFLOW_CHAIN_DONE="$run_dir/chain-done"
rm -f "$SHARDFLOW_CHAIN_DONE"
prev=""
for ((i = 0; i < links; ++i)); do
  dep=()
  [[ -n "$prev" ]] && dep=(--dependency="afterok:$prev")
  prev="$(SHARDFLOW_CHAIN_INDEX=$i sbatch --parsable --no-requeue "${dep[@]}" "${sbatch_opts[@]}" \
    "$here/train.sbatch" "$@")"
  prev="${prev%%;*}"
  echo "$prev"
done
