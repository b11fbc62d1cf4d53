#!/usr/bin/env bash
# Stop the one-machine SLURM test cluster started by up.sh: cancel its jobs, stop its daemons.
# Reads the same SSIT_CLUSTER_DIR as up.sh (default: /tmp/ssit-cluster). Logs and state stay.
set -euo pipefail

dir="${SSIT_CLUSTER_DIR:-/tmp/ssit-cluster}"
export PATH="$PATH:/usr/sbin:/sbin"
if [[ ! -d "$dir/run" ]]; then
  echo "no cluster state in $dir; nothing to stop"
  exit 0
fi
export SLURM_CONF="$dir/slurm.conf"

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2> /dev/null; }

# Cancel running jobs first so that no job step outlives its slurmd.
if alive "$dir/run/slurmctld.pid" && command -v squeue > /dev/null; then
  jobs="$(squeue -h -o %A 2> /dev/null || true)"
  if [[ -n "$jobs" ]]; then
    # shellcheck disable=SC2086
    scancel $jobs 2> /dev/null || true
    for _ in $(seq 30); do
      [[ -z "$(squeue -h -o %A 2> /dev/null || true)" ]] && break
      sleep 1
    done
  fi
fi

for pidfile in "$dir"/run/slurmd-*.pid "$dir/run/slurmctld.pid"; do
  [[ -f "$pidfile" ]] || continue
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2> /dev/null; then
    kill "$pid"
    for _ in $(seq 50); do
      kill -0 "$pid" 2> /dev/null || break
      sleep 0.2
    done
    kill -0 "$pid" 2> /dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
done
echo "cluster down ($dir)"
