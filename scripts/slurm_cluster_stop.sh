#!/usr/bin/env bash
# Stop what scripts/slurm_cluster_start.sh started (per its pid files and *.ours markers), nothing else.
set -uo pipefail
DIR="${LITBRAIN_SLURM_DIR:-/tmp/litbrain-slurm}"
[[ -d "$DIR" ]] || exit 0
export SLURM_CONF="$DIR/slurm.conf"
if [[ -f "$DIR/slurmctld.ours" ]] && command -v scancel >/dev/null; then
  timeout 10 scancel --user=root >/dev/null 2>&1 || true    # our jobs only live on our cluster
fi
stop() {  # name pidfile
  local marker="$DIR/$1.ours" pidfile="$2" pid
  [[ -f "$marker" ]] || return 0
  if [[ -f "$pidfile" ]] && pid="$(cat "$pidfile")" && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$marker"
}
stop slurmd "$DIR/slurmd.pid"
stop slurmctld "$DIR/slurmctld.pid"
stop munged "$DIR/munge/munged.pid"
echo "slurm_cluster_stop: stopped the daemons started by slurm_cluster_start.sh ($DIR)" >&2
