#!/usr/bin/env bash
# Start a real single-node SLURM cluster on loopback for the `slurm` tests (and for trying the
# sbatch templates in slurm/ locally). Idempotent: a cluster already up in the state dir is reused.
#
#   scripts/slurm_cluster_start.sh            # installs Debian's slurm + munge if missing, starts them
#   export SLURM_CONF=/tmp/litbrain-slurm/slurm.conf    # what sbatch/squeue/sinfo then need
#   scripts/slurm_cluster_stop.sh             # stops only what this script started (pid files)
#
# Env: LITBRAIN_SLURM_DIR (state dir, default /tmp/litbrain-slurm), LITBRAIN_SLURM_PORT (slurmctld
# port, default 6817; slurmd uses +1), LITBRAIN_SLURM_TIMEOUT (seconds to wait for the node, 60).
# Needs root (apt-get, daemons); no systemd: the daemons are started directly, not as services.
set -euo pipefail

DIR="${LITBRAIN_SLURM_DIR:-/tmp/litbrain-slurm}"
PORT="${LITBRAIN_SLURM_PORT:-6817}"
TIMEOUT="${LITBRAIN_SLURM_TIMEOUT:-60}"
CONF="$DIR/slurm.conf"
log() { echo "slurm_cluster_start: $*" >&2; }
die() { log "error: $*"; exit 1; }
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ "$(id -u)" == 0 ]] || die "needs root (installs packages and starts slurmctld/slurmd as root)"

# 1. Packages (policy-rc.d keeps their maintainer scripts from starting services; fine: we start them).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  log "installing slurmctld slurmd slurm-client munge (apt-get, --no-install-recommends)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >"${TMPDIR:-/tmp}/litbrain-slurm-apt.log" 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge \
         >"${TMPDIR:-/tmp}/litbrain-slurm-apt.log" 2>&1; } \
    || die "apt-get install failed; see ${TMPDIR:-/tmp}/litbrain-slurm-apt.log"
fi

mkdir -p "$DIR"/{state,spool,log,munge}
chown munge:munge "$DIR/munge" 2>/dev/null || true

# 2. munge: reuse a running munged (not ours, so never stopped by us), else start one as user munge.
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile /etc/munge/munge.key --force >/dev/null
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if echo | munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already running; reusing it"
else
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged --pid-file="$DIR/munge/munged.pid" || die "munged failed to start"
  for _ in $(seq 300); do echo | munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done  # 30 s: slow on a loaded machine
  echo | munge -n | unmunge >/dev/null || die "munged is not answering"
  touch "$DIR/munged.ours"
fi

# 3. slurm.conf: one node on loopback, the node line from `slurmd -C` (real CPUs/memory).
HOST="$(hostname -s)"
if ! alive "$DIR/slurmctld.pid" || ! alive "$DIR/slurmd.pid"; then
  NODE_LINE="$(slurmd -C | head -1)"              # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
  [[ "$NODE_LINE" == NodeName=* ]] || die "slurmd -C printed no node line: $NODE_LINE"
  cat >"$CONF" <<CONF
# Written by scripts/slurm_cluster_start.sh: a single-node test cluster on loopback.
ClusterName=litbrain
SlurmctldHost=${HOST}(127.0.0.1)
SlurmctldPort=${PORT}
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
${NODE_LINE} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
fi
export SLURM_CONF="$CONF"

# 4. Daemons (they daemonize and write their pid files; -c: clear old state, -f: our config).
if ! alive "$DIR/slurmctld.pid"; then
  /usr/sbin/slurmctld -c -f "$CONF" || die "slurmctld failed; see $DIR/log/slurmctld.log"
  touch "$DIR/slurmctld.ours"
fi
if ! alive "$DIR/slurmd.pid"; then
  /usr/sbin/slurmd -c -f "$CONF" || die "slurmd failed; see $DIR/log/slurmd.log"
  touch "$DIR/slurmd.ours"
fi

# 5. Wait for the node to be idle.
start=$SECONDS
until [[ "$(sinfo -h -N -o '%t' 2>/dev/null | head -1)" == idle* ]]; do
  if (( SECONDS - start > TIMEOUT )); then
    sinfo -N >&2 || true; tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    die "node not idle after ${TIMEOUT}s"
  fi
  sleep 0.5
done
log "cluster up in $((SECONDS - start))s after daemon start (SLURM_CONF=$CONF)"
echo "$CONF"
