#!/usr/bin/env bash
# Start the one-machine SLURM test cluster: one slurmctld and two slurmd nodes on this host.
#
# Environment (all optional):
#   SSIT_CLUSTER_DIR      state, logs and the rendered slurm.conf   (default: /tmp/ssit-cluster)
#   SSIT_CLUSTER_PORT     controller port; the nodes use the next two (default: 17817)
#   SSIT_CLUSTER_NODES    the two node names, space separated        (default: "ssit-node1 ssit-node2")
#   SSIT_CLUSTER_CPUS     CPUs each node declares                    (default: nproc)
#   SSIT_CLUSTER_TIMEOUT  seconds to wait for both nodes to be idle  (default: 60)
# Needs root (the daemons run as root and node names are added to /etc/hosts).
# Running it again while the cluster is up does nothing. Afterwards:
#   export SLURM_CONF=$SSIT_CLUSTER_DIR/slurm.conf
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${SSIT_CLUSTER_DIR:-/tmp/ssit-cluster}"
port="${SSIT_CLUSTER_PORT:-17817}"
read -r node1 node2 <<< "${SSIT_CLUSTER_NODES:-ssit-node1 ssit-node2}"
cpus="${SSIT_CLUSTER_CPUS:-$(nproc)}"
timeout="${SSIT_CLUSTER_TIMEOUT:-60}"

die() { echo "cluster-up: error: $*" >&2; exit 1; }

for binary in slurmctld slurmd sinfo sbatch srun scontrol; do
  command -v "$binary" > /dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$binary" > /dev/null \
    || die "'$binary' not found; install Debian's slurmctld, slurmd and slurm-client (22.05)"
done
export PATH="$PATH:/usr/sbin:/sbin"
[[ "$(id -u)" == 0 ]] || die "the test cluster runs its daemons as root; run this as root"
[[ -n "${node1:-}" && -n "${node2:-}" && "$node1" != "$node2" ]] \
  || die "SSIT_CLUSTER_NODES must hold two different node names"
[[ "$port" =~ ^[0-9]+$ ]] && (( port > 1024 && port < 65533 )) \
  || die "SSIT_CLUSTER_PORT must be a port number between 1025 and 65532, got '$port'"

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2> /dev/null; }

if alive "$dir/run/slurmctld.pid" && alive "$dir/run/slurmd-$node1.pid" \
   && alive "$dir/run/slurmd-$node2.pid"; then
  echo "cluster already up ($dir)"
  echo "export SLURM_CONF=$conf"
  exit 0
fi

# Node names must resolve on this host (srun and the DDP rendezvous use them).
for node in "$node1" "$node2"; do
  if ! getent hosts "$node" > /dev/null; then
    [[ -w /etc/hosts ]] || die "node name '$node' does not resolve and /etc/hosts is not writable"
    echo "127.0.0.1 $node  # ssit test cluster" >> /etc/hosts
  fi
done

mkdir -p "$dir/state" "$dir/spool/$node1" "$dir/spool/$node2" "$dir/run" "$dir/log"
host="$(hostname -s)"
memory_mb="$(awk '/MemTotal/ { print int($2 / 1024 / 2) }' /proc/meminfo)"
sed -e "s|@DIR@|$dir|g" -e "s|@HOSTNAME@|$host|g" -e "s|@CTLD_PORT@|$port|g" \
    -e "s|@NODE1@|$node1|g" -e "s|@NODE2@|$node2|g" \
    -e "s|@NODE1_PORT@|$((port + 1))|g" -e "s|@NODE2_PORT@|$((port + 2))|g" \
    -e "s|@CPUS@|$cpus|g" -e "s|@MEMORY_MB@|$memory_mb|g" \
    "$here/slurm.conf.in" > "$conf"

# Stop leftovers of an earlier, half-started cluster in this directory.
for pidfile in "$dir"/run/*.pid; do
  [[ -f "$pidfile" ]] || continue
  alive "$pidfile" && kill "$(cat "$pidfile")" 2> /dev/null || true
  rm -f "$pidfile"
done

# -c: start from a clean state (no jobs or node states from an earlier run).
slurmctld -c -f "$conf"
slurmd -f "$conf" -N "$node1"
slurmd -f "$conf" -N "$node2"

deadline=$((SECONDS + timeout))
while true; do
  states="$(sinfo -h -N -p debug -o '%N %t' 2> /dev/null | sort -u || true)"
  idle="$(grep -c -E ' idle$' <<< "$states" || true)"
  (( idle >= 2 )) && break
  if (( SECONDS >= deadline )); then
    echo "cluster-up: node states after ${timeout}s: ${states:-controller not answering}" >&2
    tail -n 5 "$dir"/log/*.log >&2 || true
    die "the two nodes did not become idle within ${timeout}s (logs in $dir/log)"
  fi
  sleep 1
done

echo "cluster up: nodes $node1 $node2, controller port $port, state in $dir"
echo "export SLURM_CONF=$conf"
