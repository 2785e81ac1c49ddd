#!/usr/bin/env bash
# System packages the tests use: espeak-ng (spoken names for synthetic data),
# prometheus/promtool + prometheus-pushgateway (monitoring tests), slurm-wlm +
# munge (real SLURM clusters), iproute2 + util-linux (ip netns, bridges, nsenter,
# unshare: the multi-node cluster in network namespaces), ffmpeg libraries for
# PyAV's encoders are bundled in its wheel.
set -euo pipefail
if [ "$(id -u)" != "0" ]; then SUDO=sudo; else SUDO=""; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    espeak-ng prometheus prometheus-pushgateway slurm-wlm munge iproute2 util-linux make
