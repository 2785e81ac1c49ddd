"""Test support: a real multi-node SLURM cluster in network namespaces, and S3 it can reach.

``launch/jobs/slurm/start-multinode-cluster.sh`` makes every node a network namespace
of this machine with its own address on a bridge (``obsnode1`` … ``obsnode3`` at
``10.77.0.11`` … ``10.77.0.13``; the machine is ``10.77.0.1``), its own hostname and its
own slurmd; one slurmctld and one munged serve them. Three nodes, so that a two-node
job that is requeued can come back on another node set. The fixtures here start it,
point the SLURM client commands at it and tear it down (daemons, tasks, namespaces,
bridge) after the module, also when a test or the start itself failed.

Fixtures (module scope, for ``tests/test_slurm_multinode.py``):

* ``multinode_cluster``: the running cluster; ``SLURM_CONF`` names its slurm.conf
  while the module runs (and is restored after, so the one-node cluster's tests in
  the same session are untouched). Skips, saying why, only when not root, when a
  binary is absent or when this machine does not permit network namespaces and
  bridges; a cluster that should start but does not is a test *error*.
* ``bridge_s3_url``: moto's S3 server bound to the bridge address, which the tasks
  inside the node namespaces reach (loopback inside a node is the node's own).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from launch.jobs.spawn import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "launch" / "jobs" / "slurm"
START_SCRIPT = SCRIPTS / "start-multinode-cluster.sh"
STOP_SCRIPT = SCRIPTS / "stop-multinode-cluster.sh"
PARTITION = "multi"
# Three nodes for jobs of two: a requeued job can come back on another node set.
NODES = {"obsnode1": "10.77.0.11", "obsnode2": "10.77.0.12", "obsnode3": "10.77.0.13"}
BRIDGE = "obsbr0"
BRIDGE_ADDR = "10.77.0.1"
STATE = Path("/var/spool/obs-slurm-multinode")
BINARIES = (
    "ip", "nsenter", "unshare", "munged", "munge", "slurmctld", "slurmd", "sbatch", "srun",
    "scontrol", "scancel", "sinfo",
)  # fmt: skip


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")


def _script_env() -> dict[str, str]:
    env = dict(os.environ, OBS_SLURM_MN_STATE=str(STATE), OBS_SLURM_MN_PARTITION=PARTITION,
               OBS_SLURM_MN_NODES=str(len(NODES)))
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    return env


def _namespaces_permitted() -> str | None:
    """Why this machine refuses a network namespace or a bridge, or ``None``."""
    probe = f"obsprobe{os.getpid() % 100000}"
    tries = (
        (["ip", "netns", "add", probe], ["ip", "netns", "del", probe]),
        (["ip", "link", "add", probe, "type", "bridge"], ["ip", "link", "del", probe]),
    )
    for make, undo in tries:
        done = subprocess.run(make, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            return f"`{' '.join(make)}` is not permitted here: {done.stderr.strip()}"
        subprocess.run(undo, capture_output=True, timeout=30, check=False)
    return None


def multinode_skip_reason() -> str | None:
    """Why the namespace cluster cannot run here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "the multi-node test cluster needs root (network namespaces, slurmd, munged)"
    missing = [name for name in BINARIES if _which(name) is None]
    if missing:
        names = ", ".join(missing)
        return f"binaries absent ({names}): apt-get install iproute2 util-linux slurm-wlm munge"
    return _namespaces_permitted()


@dataclass(frozen=True)
class MultiNodeCluster:
    """The running namespace cluster.

    Attributes:
        partition: its one partition (every node).
        conf: its slurm.conf (``SLURM_CONF`` of the client commands).
        nodes: node name -> its address on the bridge.
        bridge_addr: this machine's address on the bridge (controller, S3, Prometheus).
        start_output: what the start script printed.
    """

    partition: str
    conf: Path
    nodes: dict[str, str]
    bridge_addr: str
    start_output: str


def _run_script(script: Path, timeout_s: float) -> str:
    """Run one of the cluster scripts; its output, or raise with it if it fails."""
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          timeout=timeout_s, env=_script_env())
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} failed (exit {done.returncode}):\n{output}")
    return output


def start_multinode_cluster(timeout_s: float = 120.0) -> MultiNodeCluster:
    """Run ``start-multinode-cluster.sh``; raise with its output if it fails."""
    output = _run_script(START_SCRIPT, timeout_s)
    return MultiNodeCluster(partition=PARTITION, conf=STATE / "slurm.conf", nodes=dict(NODES),
                            bridge_addr=BRIDGE_ADDR, start_output=output)


def stop_multinode_cluster(timeout_s: float = 120.0) -> str:
    """Run ``stop-multinode-cluster.sh`` (kills tasks, removes namespaces and bridge)."""
    return _run_script(STOP_SCRIPT, timeout_s)


@pytest.fixture(scope="module")
def multinode_cluster() -> Iterator[MultiNodeCluster]:
    """The namespace cluster for one test module; ``SLURM_CONF`` points at it meanwhile."""
    reason = multinode_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    previous = os.environ.get("SLURM_CONF")
    try:
        cluster = start_multinode_cluster()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        stop_multinode_cluster()


@pytest.fixture(scope="module")
def bridge_s3_url(multinode_cluster: MultiNodeCluster) -> Iterator[str]:
    """moto's S3 server on the bridge address: reachable from every node and from here."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = moto_server.ThreadedMotoServer(
        ip_address=multinode_cluster.bridge_addr, port=port, verbose=False
    )
    server.start()
    try:
        yield f"http://{multinode_cluster.bridge_addr}:{port}"
    finally:
        server.stop()


def fresh_bucket_name(prefix: str) -> str:
    """A bucket name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
