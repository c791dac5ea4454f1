#!/usr/bin/env bash
# Starts a single-node test Slurm (munged, slurmctld, slurmd) on this machine, as root.
#
#   scripts/slurm/start.sh [--install] [DIR]
#
# DIR (default $SHARDFLOW_SLURM_DIR or /tmp/shardflow-slurm) receives slurm.conf, the
# state and spool directories, the logs, the daemons' PID files and env.sh (source it to
# point sbatch/squeue/scontrol at this Slurm: it exports SLURM_CONF). --install first
# installs slurm-wlm and munge (scripts/setup.sh --slurm). Waits until the node is idle.
# scripts/slurm/stop.sh DIR stops exactly the daemons this script started, by their PIDs.
#
# Exit codes: 0 started (or already running from DIR), 77 cannot run here (not root, no
# Slurm installed and --install not given, or the install failed), 1 failure to start.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
install=0
if [[ "${1:-}" == "--install" ]]; then
  install=1
  shift
fi
dir="${1:-${SHARDFLOW_SLURM_DIR:-/tmp/shardflow-slurm}}"
cpus="${SHARDFLOW_SLURM_CPUS:-4}"
ctld_port="${SHARDFLOW_SLURMCTLD_PORT:-6817}"
slurmd_port="${SHARDFLOW_SLURMD_PORT:-6818}"

skip() {
  echo "slurm: SKIP: $*" >&2
  exit 77
}
fail() {
  echo "slurm: FAILED: $*" >&2
  for f in "$dir"/log/*.log; do
    [[ -f "$f" ]] && { echo "---- $f (tail)" >&2; tail -n 20 "$f" >&2; }
  done
  exit 1
}

[[ $(id -u) -eq 0 ]] || skip "the test Slurm needs root (slurmd runs jobs as their users); running as uid $(id -u)"
if ((install)); then
  "$here/../setup.sh" --slurm || skip "installing slurm-wlm and munge failed (no package mirror?)"
fi
for b in slurmctld slurmd munged sbatch scontrol sinfo; do
  command -v "$b" >/dev/null 2>&1 || [[ -x "/usr/sbin/$b" ]] ||
    skip "'$b' is not installed (apt-get install --no-install-recommends slurm-wlm munge, or pass --install)"
done
export PATH="$PATH:/usr/sbin"

mkdir -p "$dir"/{state,spool,log,jobs}
conf="$dir/slurm.conf"
cat >"$dir/env.sh" <<EOF
# source me: points the Slurm client commands at the test Slurm in $dir
export SLURM_CONF="$conf"
EOF
export SLURM_CONF="$conf"

# Already running from this directory (a second start is a no-op)?
if [[ -f "$dir/slurmctld.pid" ]] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null &&
  scontrol ping 2>/dev/null | grep -q UP; then
  echo "slurm: already running from $dir" >&2
  exit 0
fi

# ---- munge: reuse a working munged, otherwise start one as the munge user ---------------
if ! { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }; then
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1 || [[ -x /usr/sbin/mungekey ]]; then
      mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 || fail "mungekey could not create /etc/munge/munge.key"
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key && chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid || fail "munged did not start"
  for _ in $(seq 50); do
    [[ -s /run/munge/munged.pid ]] && break
    sleep 0.1
  done
  cp /run/munge/munged.pid "$dir/munged.pid"
  munge -n | unmunge >/dev/null || fail "munge does not authenticate (see /var/log/munge/munged.log)"
fi

# ---- slurm.conf -------------------------------------------------------------------------
host="$(hostname -s)"
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
cat >"$conf" <<EOF
# Single-node test Slurm for the shardflow suite (written by scripts/slurm/start.sh).
ClusterName=shardflow
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# job-step credentials expire after 5 s, so a requeued job restarts in ~12 s, not 120 s
AuthInfo=cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmi2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=2
DependencyParameters=kill_invalid_depend
# declare more CPUs than the machine has, so that 4 ranks fit on one node
SlurmdParameters=config_overrides
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

# ---- the daemons -----------------------------------------------------------------------
rm -f "$dir/slurmctld.pid" "$dir/slurmd.pid"
slurmctld -f "$conf" -c || fail "slurmctld did not start"
for _ in $(seq 100); do
  scontrol ping 2>/dev/null | grep -q UP && break
  sleep 0.1
done
scontrol ping 2>/dev/null | grep -q UP || fail "slurmctld does not answer scontrol ping"
slurmd -f "$conf" || fail "slurmd did not start"

# Wait until the node is idle (not down/unknown).
state=""
for _ in $(seq 150); do
  state="$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n1)"
  [[ "$state" == "idle" ]] && break
  sleep 0.2
done
[[ "$state" == "idle" ]] || fail "node $host did not become idle (state '$state')"
echo "slurm: up from $dir (node $host, $cpus CPUs, SLURM_CONF=$conf)" >&2
