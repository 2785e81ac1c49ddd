#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this Debian machine: munged, slurmctld and
# slurmd, one partition (default "debug"), everything on loopback.
#
# Idempotent: run it again and it only (re)starts what is not running, and restarts
# the daemons when the generated slurm.conf changed. It returns once `sinfo` shows
# the node ready to run jobs.
#
# Needs: root, and the Debian packages slurm-wlm and munge
# (scripts/install-system-deps.sh installs them).
#
# Settings (environment variables):
#   OBS_SLURM_STATE      state, spool and log directory   (default /var/spool/obs-slurm)
#   OBS_SLURM_CONF       where slurm.conf is written       (default /etc/slurm/slurm.conf;
#                        elsewhere, export SLURM_CONF=<that path> for sbatch & co.)
#   OBS_SLURM_PARTITION  partition name                    (default debug)
#   OBS_SLURM_MIN_CPUS   CPUs the node offers at least     (default 4)
#   OBS_SLURM_WAIT_S     how long to wait for the node     (default 60)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${OBS_SLURM_STATE:-/var/spool/obs-slurm}"
CONF="${OBS_SLURM_CONF:-/etc/slurm/slurm.conf}"
PARTITION="${OBS_SLURM_PARTITION:-debug}"
MIN_CPUS="${OBS_SLURM_MIN_CPUS:-4}"
WAIT_S="${OBS_SLURM_WAIT_S:-60}"
HOST="$(hostname -s)"

say() { echo "start-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = "0" ] || die "must run as root (slurmd and munged need it)"
for bin in munged munge unmunge slurmctld slurmd sinfo scontrol; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] \
        || die "'$bin' not found: apt-get install slurm-wlm munge (scripts/install-system-deps.sh)"
done
export PATH="$PATH:/usr/sbin"

alive() { # alive PIDFILE: the process named in PIDFILE is running
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# --- munge: the authentication every slurm message carries -------------------------
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
if [ ! -s "$MUNGE_KEY" ]; then
    say "creating munge key"
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- munged
    mkdir -p "$STATE"
    touch "$STATE/munged.started-here"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# --- slurm.conf from the template -----------------------------------------------------
CPUS="$(nproc)"
[ "$CPUS" -ge "$MIN_CPUS" ] || CPUS="$MIN_CPUS"
MEMORY="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
[ -n "$MEMORY" ] || MEMORY="$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)"
NEW_CONF="$(mktemp)"
trap 'rm -f "$NEW_CONF"' EXIT
sed -e "s|@CLUSTER@|obs|g" -e "s|@HOST@|$HOST|g" -e "s|@STATE@|$STATE|g" \
    -e "s|@CPUS@|$CPUS|g" -e "s|@MEMORY@|$MEMORY|g" -e "s|@PARTITION@|$PARTITION|g" \
    "$HERE/slurm.conf.template" >"$NEW_CONF"

mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$STATE/log" "$(dirname "$CONF")"
CHANGED=0
if ! cmp -s "$NEW_CONF" "$CONF"; then
    say "writing $CONF"
    install -m 0644 "$NEW_CONF" "$CONF"
    CHANGED=1
fi
stop_daemon() { # stop_daemon NAME PIDFILE
    local pid
    pid="$(cat "$2" 2>/dev/null || true)"
    # The daemon deletes its pid file as it exits, so the pid is read once.
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        say "stopping $1 (config changed)"
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
}
if [ "$CHANGED" = 1 ]; then
    stop_daemon slurmd "$STATE/slurmd.pid"
    stop_daemon slurmctld "$STATE/slurmctld.pid"
fi

# --- daemons -----------------------------------------------------------------------------
if ! alive "$STATE/slurmctld.pid"; then
    say "starting slurmctld"
    slurmctld -f "$CONF"
fi
if ! alive "$STATE/slurmd.pid"; then
    say "starting slurmd"
    slurmd -f "$CONF"
fi

# --- wait until the node takes jobs --------------------------------------------------------
export SLURM_CONF="$CONF"
deadline=$((SECONDS + WAIT_S))
resumed=0
while :; do
    node_state="$(sinfo -h -N -n "$HOST" -p "$PARTITION" -o %t 2>/dev/null | head -n1 || true)"
    case "$node_state" in
        idle | mix | mixed | alloc | allocated) break ;;
        down* | drain* | drng* | fail*)
            if [ "$resumed" = 0 ]; then
                say "node is '$node_state': resuming it"
                scontrol update NodeName="$HOST" State=RESUME || true
                resumed=1
            fi
            ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        die "node $HOST not ready after ${WAIT_S}s (state '${node_state:-none}'); logs in $STATE/log"
    fi
    sleep 0.5
done
say "ready: partition '$PARTITION', node $HOST ($node_state), $CPUS CPUs; logs in $STATE/log"
sinfo -p "$PARTITION"
