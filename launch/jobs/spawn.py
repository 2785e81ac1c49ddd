"""Local multi-process launcher: N copies of an ``obs`` command on one machine.

``obs train --nproc N`` comes through here. Each child gets the environment
``torchrun`` would give it (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``) and an
equal share of the CPU cores (``OMP_NUM_THREADS``), so the very same
:func:`launch.runner.run_training` runs here, under ``torchrun`` and in SLURM
tasks. Rank 0's output passes through; the other ranks' standard output is
dropped (they print no results) and their standard error is kept.

If one rank fails, the others are stopped (they would wait forever in a
collective) and the launcher returns the failing rank's exit code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

LOOPBACK = "127.0.0.1"
STOP_GRACE_S = 10.0


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rank_env(rank: int, world: int, port: int, threads: int,
             base: dict[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed environment of one local rank."""
    env = dict(os.environ if base is None else base)
    env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": LOOPBACK,
                "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(threads)})
    return env


def threads_per_rank(world: int) -> int:
    """An equal share of this machine's cores among ``world`` local ranks (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(world, 1))


def _stop(procs: list[subprocess.Popen]) -> None:
    """Terminate the children still running (ours only, by pid), then kill stragglers."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in alive:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def spawn_local(command: Sequence[str], nproc: int, extra_env: dict[str, str] | None = None,
                timeout_s: float | None = None) -> int:
    """Run ``command`` as ``nproc`` local ranks and wait for all of them.

    Args:
        command: the argv of one rank (e.g. ``[python, -m, launch.cli, train, …]``).
        nproc: number of ranks (>= 1).
        extra_env: added to every rank's environment.
        timeout_s: stop everything after this long (None: no limit).

    Returns:
        0 when every rank succeeded, else the exit code of the first rank that failed
        (124 on timeout).

    Raises:
        ValueError: if ``nproc`` < 1 or the environment already describes a world.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--nproc cannot be used inside a launched world (WORLD_SIZE is set); "
                         "torchrun/SLURM already started the ranks")
    port = free_port()
    threads = threads_per_rank(nproc)
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(nproc):
            env = rank_env(rank, nproc, port, threads)
            env.update(extra_env or {})
            procs.append(subprocess.Popen(
                list(command), env=env,
                stdout=None if rank == 0 else subprocess.DEVNULL))
        start = time.monotonic()
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                print(f"obs: rank {rank} exited with code {code}; stopping the other ranks",
                      file=sys.stderr)
                _stop(procs)
                return int(code) if code is not None else 1
            if all(c == 0 for c in codes):
                return 0
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                print(f"obs: ranks still running after {timeout_s:.0f} s; stopping them",
                      file=sys.stderr)
                _stop(procs)
                return 124
            time.sleep(0.05)
    except KeyboardInterrupt:
        _stop(procs)
        return 130


def obs_command(args: Sequence[str]) -> list[str]:
    """The argv that runs ``obs <args>`` with this interpreter."""
    return [sys.executable, "-m", "launch.cli", *args]
