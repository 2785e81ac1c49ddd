#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by start-cluster.sh: slurmd, slurmctld, and
# munged when start-cluster.sh was the one that started it. Jobs still running are
# killed with their node. The state directory is kept (pass --purge to delete it).
#
# Settings: OBS_SLURM_STATE as for start-cluster.sh (default /var/spool/obs-slurm).
set -euo pipefail

STATE="${OBS_SLURM_STATE:-/var/spool/obs-slurm}"
say() { echo "stop-cluster: $*" >&2; }
[ "$(id -u)" = "0" ] || { say "error: must run as root"; exit 1; }

stop_pidfile() { # stop_pidfile NAME PIDFILE
    local pid
    pid="$(cat "$2" 2>/dev/null || true)"
    # The daemon deletes its pid file as it exits, so the pid is read once.
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        say "stopping $1 (pid $pid)"
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

stop_pidfile slurmd "$STATE/slurmd.pid"
stop_pidfile slurmctld "$STATE/slurmctld.pid"
if [ -e "$STATE/munged.started-here" ]; then
    stop_pidfile munged /run/munge/munged.pid
    rm -f "$STATE/munged.started-here"
fi
if [ "${1:-}" = "--purge" ]; then
    say "removing $STATE"
    rm -rf "$STATE"
fi
say "stopped"
