#!/usr/bin/env bash
# Stop the multi-node test cluster of start-multinode-cluster.sh and remove its network:
# every job (scancel), every process inside the node namespaces (slurmd, job steps,
# tasks), slurmctld, its munged, then the namespaces, their veth pairs, the bridge and
# /etc/netns/<node>.
# Safe to run on a half-started or already stopped cluster. The state directory is kept
# (--purge deletes it too).
#
# Settings: OBS_SLURM_MN_STATE, OBS_SLURM_MN_NODES, OBS_SLURM_MN_SUBNET and
# OBS_SLURM_MN_BRIDGE as for start-multinode-cluster.sh.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=multinode-common.sh
source "$HERE/multinode-common.sh"
say() { echo "stop-multinode-cluster: $*" >&2; }
[ "$(id -u)" = "0" ] || { say "error: must run as root"; exit 1; }

# Cancel every job first. slurmctld keeps its state across a restart: a job left
# running (or still completing) would come back as a node failure and be requeued
# into the next cluster, holding its CPUs and talking to services long gone.
export SLURM_CONF="$CONF"
if [ -s "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
    jobs="$(timeout 30 squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 30 scancel $jobs 2>/dev/null || true
        for _ in $(seq 60); do
            [ -z "$(timeout 30 squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

for i in $(seq "$NODES"); do
    node="$(node_name "$i")"
    stop_pidfile "slurmd on $node" "$STATE/slurmd-$node.pid"
    if [ -e "/run/netns/$node" ]; then
        # Job steps and tasks outlive slurmd; only processes of this namespace are hit.
        pids="$(ip netns pids "$node" 2>/dev/null | tr '\n' ' ')"
        if [ -n "${pids// /}" ]; then
            say "killing what still runs on $node: $pids"
            # shellcheck disable=SC2086
            kill -9 $pids 2>/dev/null || true
        fi
        ip netns del "$node"
    fi
    ip link del "$(node_veth "$i")" 2>/dev/null || true
    rm -rf "/etc/netns/$node"
done
stop_pidfile slurmctld "$STATE/slurmctld.pid"
stop_pidfile munged "$MUNGE_DIR/munged.pid"
ip link del "$BRIDGE" 2>/dev/null || true
if [ "${1:-}" = "--purge" ]; then
    say "removing $STATE"
    rm -rf "$STATE"
fi
say "stopped"
