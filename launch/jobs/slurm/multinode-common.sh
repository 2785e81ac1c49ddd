# Shared by start-multinode-cluster.sh and stop-multinode-cluster.sh (sourced, not run):
# the names and addresses of the multi-node test cluster, from the same settings.
# shellcheck shell=bash
STATE="${OBS_SLURM_MN_STATE:-/var/spool/obs-slurm-multinode}"
CONF="$STATE/slurm.conf"
NODES="${OBS_SLURM_MN_NODES:-2}"
SUBNET="${OBS_SLURM_MN_SUBNET:-10.77.0}"
BRIDGE="${OBS_SLURM_MN_BRIDGE:-obsbr0}"
BRIDGE_ADDR="$SUBNET.1"
MUNGE_DIR="$STATE/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
export PATH="$PATH:/usr/sbin:/sbin"

node_name() { echo "obsnode$1"; }         # node i: its NodeName, hostname and netns
node_addr() { echo "$SUBNET.$((10 + $1))"; } # node i: its address on the bridge
node_veth() { echo "obsveth$1"; }         # node i: the bridge side of its veth pair

stop_pidfile() { # stop_pidfile WHAT PIDFILE: TERM, then KILL after 10 s
    local pid
    pid="$(cat "$2" 2>/dev/null || true)"
    # The daemon deletes its pid file as it exits, so the pid is read once.
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "multinode-cluster: stopping $1 (pid $pid)" >&2
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
}
