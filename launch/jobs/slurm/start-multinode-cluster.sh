#!/usr/bin/env bash
# Start a real multi-node SLURM cluster on this one Linux machine: every compute node
# is a network namespace with its own address on a bridge and its own hostname (a UTS
# namespace), running its own slurmd; one slurmctld and one munged serve them all.
#
#   bridge obsbr0 10.77.0.1/24 (this machine: slurmctld, sbatch, S3/Prometheus in tests)
#     ├─ veth ── netns obsnode1: eth0 10.77.0.11, hostname obsnode1, slurmd
#     └─ veth ── netns obsnode2: eth0 10.77.0.12, hostname obsnode2, slurmd
#
# Traffic stays on the bridge, between the namespaces and this machine. Inside a node,
# /etc/hosts is /etc/netns/<node>/hosts (bind-mounted in the node's own mount namespace),
# which names every node and the controller, so a job resolves its node list as on a
# real cluster; like a Debian machine's, it maps the node's own name to 127.0.1.1.
# It coexists with the one-node cluster (start-cluster.sh): its own controller port,
# state directory, slurm.conf and munged socket.
#
# Idempotent: run it again and it only creates/starts what is missing, restarting the
# daemons when the generated slurm.conf changed. It returns once every node is ready.
# Client commands need `export SLURM_CONF=<state>/slurm.conf` (printed at the end).
#
# Needs: root, iproute2 (ip netns, bridges, veth), unshare, slurm-wlm and munge.
#
# Settings (environment variables):
#   OBS_SLURM_MN_STATE      state, spool, logs, slurm.conf  (default /var/spool/obs-slurm-multinode)
#   OBS_SLURM_MN_NODES      number of nodes, 2..9            (default 2)
#   OBS_SLURM_MN_SUBNET     first three octets of the /24    (default 10.77.0)
#   OBS_SLURM_MN_BRIDGE     bridge name                      (default obsbr0)
#   OBS_SLURM_MN_PARTITION  partition name                   (default multi)
#   OBS_SLURM_MN_CPUS       CPUs every node offers           (default 4)
#   OBS_SLURM_MN_CTLD_PORT  slurmctld's port                 (default 6917)
#   OBS_SLURM_MN_WAIT_S     how long to wait for the nodes   (default 60)
#   OBS_SLURM_MN_SELF_LOOPBACK  1: a node's own name is 127.0.1.1 in its /etc/hosts,
#                           as on Debian machines (default 1; 0: its bridge address)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=multinode-common.sh
source "$HERE/multinode-common.sh"
PARTITION="${OBS_SLURM_MN_PARTITION:-multi}"
CPUS="${OBS_SLURM_MN_CPUS:-4}"
CTLD_PORT="${OBS_SLURM_MN_CTLD_PORT:-6917}"
SLURMD_PORT=6818  # every slurmd has its own address, so they all use the default port
WAIT_S="${OBS_SLURM_MN_WAIT_S:-60}"
SELF_LOOPBACK="${OBS_SLURM_MN_SELF_LOOPBACK:-1}"
CTLD_HOST="$(hostname -s)"

say() { echo "start-multinode-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = "0" ] || die "must run as root (namespaces, bridges, slurmd and munged need it)"
for bin in ip nsenter unshare munged munge unmunge slurmctld slurmd sinfo scontrol; do
    command -v "$bin" >/dev/null 2>&1 \
        || die "'$bin' not found: apt-get install iproute2 util-linux slurm-wlm munge"
done
case "$NODES" in [2-9]) ;; *) die "OBS_SLURM_MN_NODES must be 2..9, got '$NODES'" ;; esac
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- network: the bridge, one namespace per node, /etc/hosts of every node ----------------
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "creating bridge $BRIDGE ($BRIDGE_ADDR/24)"
    ip link add "$BRIDGE" type bridge
fi
case "$(ip -4 -o addr show dev "$BRIDGE")" in
    *" $BRIDGE_ADDR/"*) ;;
    *) ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE" ;;
esac
ip link set "$BRIDGE" up

HOSTS_FILE="$(mktemp)"
NEW_CONF="$(mktemp)"
trap 'rm -f "$HOSTS_FILE" "$NEW_CONF"' EXIT
hosts_of() { # hosts_of I: /etc/hosts of node I
    echo "127.0.0.1 localhost"
    # As Debian's installer writes it: the machine's own name is 127.0.1.1. This is
    # what makes jobs on real clusters pick a loopback rendezvous address or bind
    # gloo to loopback; the test cluster keeps it so the jobs must cope (0 turns it off).
    [ "$SELF_LOOPBACK" = 1 ] && echo "127.0.1.1 $(node_name "$1")"
    echo "$BRIDGE_ADDR $CTLD_HOST"
    for j in $(seq "$NODES"); do
        [ "$SELF_LOOPBACK" = 1 ] && [ "$j" = "$1" ] && continue
        echo "$(node_addr "$j") $(node_name "$j")"
    done
}

for i in $(seq "$NODES"); do
    node="$(node_name "$i")"
    host_veth="$(node_veth "$i")"
    if [ ! -e "/run/netns/$node" ]; then
        say "creating network namespace $node ($(node_addr "$i"))"
        ip netns add "$node"
    fi
    if ! ip link show "$host_veth" >/dev/null 2>&1; then
        ip link add "$host_veth" type veth peer name "$host_veth-n"
        ip link set "$host_veth-n" netns "$node"
        ip -n "$node" link set "$host_veth-n" name eth0
        ip -n "$node" addr add "$(node_addr "$i")/24" dev eth0
    fi
    ip link set "$host_veth" master "$BRIDGE"
    ip link set "$host_veth" up
    ip -n "$node" link set lo up
    ip -n "$node" link set eth0 up
    mkdir -p "/etc/netns/$node"
    hosts_of "$i" >"$HOSTS_FILE"
    if ! cmp -s "$HOSTS_FILE" "/etc/netns/$node/hosts"; then
        install -m 0644 "$HOSTS_FILE" "/etc/netns/$node/hosts"
        # A running slurmd keeps the old file bind-mounted: restart it below.
        stop_pidfile "slurmd on $node (hosts changed)" "$STATE/slurmd-$node.pid"
    fi
done

# --- munge: our own munged, its socket under the state directory --------------------------
MUNGE_KEY=/etc/munge/munge.key
if [ ! -s "$MUNGE_KEY" ]; then
    say "creating munge key"
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
fi
mkdir -p "$STATE" "$STATE/log" "$STATE/slurmctld"
chmod 0755 "$STATE"
install -d -o munge -g munge -m 0755 "$MUNGE_DIR"
munge_ok() { munge -S "$MUNGE_SOCKET" -n 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }
if ! munge_ok; then
    say "starting munged (socket $MUNGE_SOCKET)"
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
        --seed-file="$MUNGE_DIR/munged.seed" --log-file="$MUNGE_DIR/munged.log" \
        --key-file="$MUNGE_KEY"
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munged does not answer (see $MUNGE_DIR/munged.log)"
fi

# --- slurm.conf: the template, then one line per node and the partition ---------------------
NODE_LIST="$(for i in $(seq "$NODES"); do node_name "$i"; done | paste -sd, -)"
MEMORY="$(awk '/MemTotal/ {print int($2 / 1024 / 4)}' /proc/meminfo)"
{
    sed -e "s|@CLUSTER@|obsmulti|g" -e "s|@CTLD_HOST@|$CTLD_HOST|g" \
        -e "s|@BRIDGE_ADDR@|$BRIDGE_ADDR|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" \
        -e "s|@STATE@|$STATE|g" -e "s|@CPUS@|$CPUS|g" "$HERE/slurm-multinode.conf.template"
    for i in $(seq "$NODES"); do
        echo "NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") NodeHostname=$(node_name "$i")" \
            "CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1" \
            "RealMemory=$MEMORY State=UNKNOWN"
    done
    echo "PartitionName=$PARTITION Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP" \
        "OverSubscribe=NO"
} >"$NEW_CONF"

CHANGED=0
if ! cmp -s "$NEW_CONF" "$CONF"; then
    say "writing $CONF"
    install -m 0644 "$NEW_CONF" "$CONF"
    CHANGED=1
fi
if [ "$CHANGED" = 1 ]; then
    for i in $(seq "$NODES"); do
        stop_pidfile "slurmd on $(node_name "$i")" "$STATE/slurmd-$(node_name "$i").pid"
    done
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
fi

# --- daemons: slurmctld here, one slurmd inside every node ------------------------------------
export SLURM_CONF="$CONF"
if ! alive "$STATE/slurmctld.pid"; then
    say "starting slurmctld on $BRIDGE_ADDR:$CTLD_PORT"
    slurmctld -f "$CONF"
fi
for i in $(seq "$NODES"); do
    node="$(node_name "$i")"
    if ! alive "$STATE/slurmd-$node.pid"; then
        say "starting slurmd on $node ($(node_addr "$i"))"
        mkdir -p "$STATE/slurmd-$node"
        # Into the node's network namespace, with a mount namespace of its own (where
        # /etc/hosts is the node's) and a UTS namespace (its hostname). Not `ip netns
        # exec`: it remounts /sys, which hides /sys/fs/cgroup, and slurmd needs it.
        # slurmd forks into the background and keeps its namespaces alive.
        nsenter --net="/run/netns/$node" unshare --mount --uts sh -c \
            "mount --bind '/etc/netns/$node/hosts' /etc/hosts && hostname '$node' \
             && exec slurmd -f '$CONF' -N '$node'"
    fi
done

# --- wait until every node takes jobs ----------------------------------------------------------
deadline=$((SECONDS + WAIT_S))
resumed=0
while :; do
    states="$(sinfo -h -N -p "$PARTITION" -o '%N %t' 2>/dev/null || true)"
    ready="$(echo "$states" | grep -cE ' (idle|mix|mixed|alloc|allocated)$' || true)"
    [ "$ready" -ge "$NODES" ] && break
    if [ "$resumed" = 0 ] && grep -qE ' (down|drain|drng|fail)' <<<"$states"; then
        say "resuming nodes that are down/drained: $(echo "$states" | tr '\n' ' ')"
        scontrol update NodeName="$NODE_LIST" State=RESUME || true
        resumed=1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        die "nodes not ready after ${WAIT_S}s ($(echo "$states" | tr '\n' ' ')); logs in $STATE/log"
    fi
    sleep 0.5
done
say "ready: partition '$PARTITION', nodes $NODE_LIST, $CPUS CPUs each; logs in $STATE/log"
say "client commands: export SLURM_CONF=$CONF"
sinfo -p "$PARTITION"
