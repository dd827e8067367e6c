#!/usr/bin/env bash
# A one-node Slurm cluster on this host, for envkit's Slurm backend and its tests (issue 13).
#
# Idempotent: run it again and it only starts what is not running. As root, on Debian bookworm (a container
# without systemd is fine: the daemons are started directly, not through init scripts).
#   - installs slurm-wlm (slurmctld, slurmd, sbatch/squeue/sacct/scancel) and munge from Debian's mirror;
#   - makes what a fresh machine lacks: the munge key, the spool/log/run folders, a node name that needs no DNS
#     (the node is addressed as 127.0.0.1, so the hostname need not be in /etc/hosts);
#   - writes /etc/slurm/slurm.conf for one node named after `hostname -s` (CPUs from nproc, RealMemory 90 % of
#     the real one); a changed config restarts the daemons;
#   - starts munged (as the munge user), slurmctld and slurmd, and waits (bounded) until `sinfo` shows the node idle.
# No accounting database: sacct answers "accounting storage is disabled"; envkit follows tasks with squeue and
# each task's own exit marker file. Finished jobs stay visible to squeue for MinJobAge seconds.
set -euo pipefail

WAIT_S=${SLURM_SETUP_WAIT_S:-60}
CONF=/etc/slurm/slurm.conf
LOG_DIR=/var/log/slurm

log() { echo "setup 20-slurm: $*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "run as root"; exit 1; }

# --- packages ------------------------------------------------------------------------------------------------------
if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurm-wlm munge
fi

# --- munge ---------------------------------------------------------------------------------------------------------
getent passwd munge >/dev/null || { log "the munge package did not create its user"; exit 1; }
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating the munge key"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

# A daemon runs when its pid file names a live process of that name (a stale file's pid may belong to another).
pid_alive() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

if ! pid_alive /run/munge/munged.pid munged; then
  log "starting munged"
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 1 20); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
munge -n </dev/null | unmunge >/dev/null || { log "munge does not answer; see /var/log/munge/munged.log"; exit 1; }

# --- slurm.conf ----------------------------------------------------------------------------------------------------
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"

NEW_CONF=$(mktemp)
trap 'rm -f "$NEW_CONF"' EXIT
cat >"$NEW_CONF" <<EOF
# Written by .ci/setup.d/20-slurm.sh (envkit): a one-node cluster on this host. Edits are overwritten.
ClusterName=envkit
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Start batch jobs at once (default: up to 3 s later) and re-run the scheduler as soon as a task ends.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Finished jobs stay in squeue --states=all for this long (no accounting database here).
MinJobAge=600
MaxArraySize=10001
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF

RESTART=0
if ! cmp -s "$NEW_CONF" "$CONF"; then
  log "writing $CONF (node $NODE, $CPUS CPUs, ${MEM_MB} MB)"
  install -m 0644 "$NEW_CONF" "$CONF"
  RESTART=1
fi

stop_daemon() {  # by its pid file only: never by name
  local pidfile=$1 name=$2
  if pid_alive "$pidfile" "$name"; then
    local pid; pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
}

if [[ $RESTART -eq 1 ]]; then
  stop_daemon /run/slurmd.pid slurmd
  stop_daemon /run/slurmctld.pid slurmctld
fi
if ! pid_alive /run/slurmctld.pid slurmctld; then
  log "starting slurmctld"
  /usr/sbin/slurmctld
fi
if ! pid_alive /run/slurmd.pid slurmd; then
  log "starting slurmd"
  /usr/sbin/slurmd
fi

# --- wait until the node takes jobs --------------------------------------------------------------------------------
deadline=$(( $(date +%s) + WAIT_S ))
state=""
while (( $(date +%s) < deadline )); do
  state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1 || true)
  case "$state" in
    idle|mixed|allocated) log "node $NODE is $state"; exit 0 ;;
    down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
log "node $NODE not idle after ${WAIT_S}s (state: ${state:-no answer}); see $LOG_DIR/slurmctld.log and slurmd.log"
exit 1
