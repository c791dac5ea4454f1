#!/usr/bin/env bash
# Stops the test Slurm that scripts/slurm/start.sh started from DIR: cancels its jobs, ends
# the job-step processes slurmd reports (scontrol listpids), then stops slurmd, slurmctld
# and (when start.sh started it) munged, each by the PID recorded in DIR. Never signals
# processes by name. Always exits 0 unless a daemon outlives SIGKILL.
#
#   scripts/slurm/stop.sh [DIR]       (default $SHARDFLOW_SLURM_DIR or /tmp/shardflow-slurm)
set -uo pipefail
dir="${1:-${SHARDFLOW_SLURM_DIR:-/tmp/shardflow-slurm}}"
export PATH="$PATH:/usr/sbin"
export SLURM_CONF="$dir/slurm.conf"

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# stop_pid NAME PID: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
  local name="$1" pid="$2"
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do
    alive "$pid" || { echo "slurm: stopped $name (pid $pid)" >&2; return 0; }
    sleep 0.1
  done
  echo "slurm: $name (pid $pid) ignored SIGTERM, sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null
  sleep 0.2
  ! alive "$pid"
}

pidof_file() { [[ -s "$1" ]] && cat "$1"; }
ctld="$(pidof_file "$dir/slurmctld.pid")"
slurmd_pid="$(pidof_file "$dir/slurmd.pid")"
munged="$(pidof_file "$dir/munged.pid")"
status=0

if alive "$ctld" && [[ -f "$SLURM_CONF" ]]; then
  # Job-step processes on the node, before their jobs go away.
  steps="$(timeout 10 scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}')"
  jobs="$(timeout 10 squeue -h -o %A 2>/dev/null)"
  if [[ -n "$jobs" ]]; then
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null
    for _ in $(seq 100); do
      [[ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ]] && break
      sleep 0.1
    done
  fi
  for p in $steps; do
    alive "$p" && { echo "slurm: ending leftover job process $p" >&2; kill -KILL "$p" 2>/dev/null; }
  done
fi
stop_pid slurmd "$slurmd_pid" || status=1
stop_pid slurmctld "$ctld" || status=1
stop_pid munged "$munged" || status=1
rm -f "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"
exit $status
