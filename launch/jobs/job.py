"""What runs inside every task of a submitted job: environment, preemption, requeue.

:class:`DistributedJob` exports the torch.distributed environment (``MASTER_ADDR``,
``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) from submitit's job
environment, runs :meth:`DistributedJob.run` (which joins the process group itself),
and handles preemption and timeouts:

1. SLURM sends the preemption/timeout signal (``USR2``; submitit asks for it
   ``signal_delay_s`` before the time limit) to every task.
2. The signal only raises a flag. The training loop calls
   :func:`preemption_requested` once per step on every rank; the flags are
   all-reduced, so all ranks see ``True`` at the same step, save a checkpoint
   together and return.
3. Rank 0 writes a fresh copy of the job (its :meth:`~DistributedJob.checkpoint`)
   into submitit's pickle and requeues the job (``scontrol requeue``; locally the
   controller's requeue exit code). The requeued job resumes from the newest
   *complete* checkpoint in the store: the job object holds a config, never a
   checkpoint path, so nothing stale is baked into the pickle.
4. After ``max_requeues`` requeues the job gives up with a clear error.

A loop that never polls is not stuck: ``preempt_grace_s`` after the signal, the job
is requeued anyway and resumes from its newest periodic checkpoint.

Why not submitit's own handler: it checkpoints from a signal handler on rank 0 only,
but a distributed checkpoint is a collective every rank must enter at the same step.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import submitit
from submitit.core.utils import temporary_save_path
from submitit.helpers import DelayedSubmission
from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

if TYPE_CHECKING:
    from obs_dist.trainer import Trainer

log = logging.getLogger("obs.submit")


@dataclass(frozen=True)
class JobSettings:
    """What a running job needs to know about its launch (pickled with the job).

    Attributes:
        max_requeues: requeues after preemption/timeout before the job gives up.
        preempt_grace_s: seconds the training loop has, after the signal, to
            acknowledge it (poll :func:`preemption_requested`) before the job is
            requeued without a fresh checkpoint.
        master_port_base: lowest ``MASTER_PORT`` handed out.
        master_port_span: ports ``[base, base + span)`` are used, spread by job id.
    """

    max_requeues: int = 3
    preempt_grace_s: float = 60.0
    master_port_base: int = 15000
    master_port_span: int = 15000


@dataclass(frozen=True)
class DistributedEnv:
    """The torch.distributed environment exported for one task."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    job_id: str
    cluster: str
    restart_count: int
    hostname: str = ""
    node_addr: str = ""
    gloo_interface: str = ""


def master_port_for(job_id: str, restart_count: int, base: int, span: int) -> int:
    """A port in ``[base, base + span)`` derived from the job id.

    Every task of a job computes the same port without talking to the others;
    different jobs on the same first node get different ports, and a requeued job
    moves to a new one so it never races the previous attempt's socket.
    """
    digits = int("".join(ch for ch in job_id if ch.isdigit()) or "0")
    return base + (digits * 7919 + restart_count * 104729) % span


def _restart_count(requeues_seen: int, cluster: str) -> int:
    """Requeues so far: the larger of SLURM's own count and ours.

    SLURM also counts requeues nobody asked us for (an admin's ``scontrol requeue``,
    a node failure); the local executor keeps no count, so ours is the only one.
    """
    slurm_count = os.environ.get("SLURM_RESTART_COUNT", "0") if cluster == "slurm" else "0"
    return max(requeues_seen, int(slurm_count or 0))


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def _slurm_node_addr(node: str) -> str | None:
    """``NodeAddr`` of ``node`` as ``slurm.conf`` gives it (``scontrol show node``)."""
    try:
        done = subprocess.run(["scontrol", "show", "node", "-o", node],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"\bNodeAddr=(\S+)", done.stdout) if done.returncode == 0 else None
    return found.group(1) if found else None


def _master_addr(first_host: str, multi_node: bool = False) -> str:
    """An address every task can reach for ``first_host`` (IPv4 if it resolves).

    Many clusters map a machine's own name to a loopback address in ``/etc/hosts``
    (Debian's ``127.0.1.1``); on the first node that would hand the other nodes a
    rendezvous address they cannot reach. In a multi-node job a loopback answer
    is replaced by the node's ``NodeAddr`` from SLURM.
    """
    try:
        addr = socket.gethostbyname(first_host)
    except OSError:
        addr = first_host
    if multi_node and (addr == first_host or _is_loopback(addr)):
        node_addr = _slurm_node_addr(first_host)
        if node_addr is not None:
            try:
                return socket.gethostbyname(node_addr)
            except OSError:
                return node_addr
    return addr


def interface_of(addr: str) -> str | None:
    """The name of the network interface that holds IPv4 ``addr`` (Linux), or None."""
    import fcntl
    import struct

    siocgifaddr = 0x8915
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(probe.fileno(), siocgifaddr, request)
            except OSError:  # no IPv4 address on this interface
                continue
            if socket.inet_ntoa(answer[20:24]) == addr:
                return name
    finally:
        probe.close()
    return None


def node_address(peer: str) -> str:
    """This node's address on the route to ``peer`` (the rendezvous host).

    The address other nodes reach this one at: the source address the kernel
    picks to talk to ``peer`` (a UDP ``connect`` sends nothing). ``127.0.0.1``
    when ``peer`` is loopback or unreachable.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((peer, 9))
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def export_distributed_env(
    env: Any, settings: JobSettings, requeues_seen: int = 0
) -> DistributedEnv:
    """Set ``MASTER_ADDR/PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` from submitit.

    Also ``OBS_NODE_ADDR``: this node's address on the route to ``MASTER_ADDR``,
    where the other nodes reach it (``metrics.host = "node"`` binds it); and in a
    multi-node job, unless already set, ``GLOO_SOCKET_IFNAME``: the interface of
    that address, so gloo never binds a loopback address the hostname resolves to.

    Args:
        env: ``submitit.JobEnvironment()`` of this task.
        settings: port range.
        requeues_seen: requeues counted by the job itself (local executor).

    Returns:
        What was exported.
    """
    restarts = _restart_count(requeues_seen, env.cluster)
    hosts = list(env.hostnames) or [socket.gethostname()]
    multi_node = env.num_nodes > 1
    addr = "127.0.0.1" if env.cluster == "local" else _master_addr(hosts[0], multi_node)
    denv = DistributedEnv(
        rank=env.global_rank,
        local_rank=env.local_rank,
        world_size=env.num_tasks,
        local_world_size=max(1, env.num_tasks // max(1, env.num_nodes)),
        master_addr=addr,
        master_port=master_port_for(
            str(env.job_id), restarts, settings.master_port_base, settings.master_port_span
        ),
        job_id=str(env.job_id),
        cluster=env.cluster,
        restart_count=restarts,
        hostname=socket.gethostname(),
        node_addr=node_address(addr),
    )
    if multi_node and not os.environ.get("GLOO_SOCKET_IFNAME"):
        # gloo binds the address this host's name resolves to, which is loopback where
        # /etc/hosts maps the machine's own name to 127.0.1.1: the other nodes could
        # not connect. The interface of the node's address on the rendezvous route
        # is the one they reach.
        interface = interface_of(denv.node_addr)
        if interface is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    denv = dataclasses.replace(denv, gloo_interface=os.environ.get("GLOO_SOCKET_IFNAME", ""))
    os.environ.update(
        MASTER_ADDR=denv.master_addr,
        MASTER_PORT=str(denv.master_port),
        RANK=str(denv.rank),
        WORLD_SIZE=str(denv.world_size),
        LOCAL_RANK=str(denv.local_rank),
        LOCAL_WORLD_SIZE=str(denv.local_world_size),
        NODE_RANK=str(env.node),
        OBS_NODE_ADDR=denv.node_addr,
    )
    return denv


class PreemptionWatch:
    """Turns the preemption/timeout signal into a flag polled at step boundaries.

    Args:
        signum: the signal (submitit's ``USR2`` unless ``SUBMITIT_PREEMPT_SIGNAL``).
        grace_s: after the signal, how long the loop has to acknowledge it.
        on_ignored: called from a helper thread if the loop did not acknowledge
            within ``grace_s``.
    """

    def __init__(self, signum: int, grace_s: float, on_ignored: Any) -> None:
        self.signum = signum
        self.grace_s = grace_s
        self._on_ignored = on_ignored
        self._signalled = threading.Event()
        self._acknowledged = threading.Event()
        self._previous: Any = None
        self._timer: threading.Timer | None = None

    @property
    def signalled(self) -> bool:
        """This process received the signal."""
        return self._signalled.is_set()

    @property
    def acknowledged(self) -> bool:
        """The loop agreed (on all ranks) to stop for a requeue."""
        return self._acknowledged.is_set()

    def install(self) -> None:
        """Replace the current handler of ``signum`` (submitit's) with ours."""
        self._previous = signal.signal(self.signum, self._on_signal)

    def uninstall(self) -> None:
        """Restore the previous handler and stop the grace timer."""
        if self._timer is not None:
            self._timer.cancel()
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        if self._signalled.is_set():
            return
        log.warning("received %s: stopping at the next step boundary", signal.Signals(signum).name)
        self._signalled.set()
        self._timer = threading.Timer(self.grace_s, self._grace_expired)
        self._timer.daemon = True
        self._timer.start()

    def _grace_expired(self) -> None:
        if not self._acknowledged.is_set():
            self._on_ignored()

    def poll(self) -> bool:
        """Whether any rank was signalled; collective when a process group is up."""
        from obs_dist.engine.collectives import any_rank  # lazily: submitting needs no torch

        flag = any_rank(self._signalled.is_set())
        if flag:
            self._acknowledged.set()
        return flag


_ACTIVE_WATCH: PreemptionWatch | None = None


def _log_to_stderr() -> None:
    """Our own handler, so the training code's logging setup is left to it."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def preemption_requested() -> bool:
    """Whether the job must save a checkpoint and return now, to be requeued.

    Call it once per step (or every few steps) on *every* rank at the same step: it
    all-reduces the ranks' flags, so either all ranks get ``True`` or none. On
    ``True`` the loop saves a complete checkpoint (every rank that holds state
    takes part) and returns; :class:`DistributedJob` then requeues the job.
    Outside a submitted job it is always ``False``.
    """
    watch = _ACTIVE_WATCH
    return watch.poll() if watch is not None else False


def preemption_hook() -> Callable[[Trainer, dict[str, float]], None]:
    """A step hook that stops the run at a sync point once a preemption is requested.

    Every rank polls :func:`preemption_requested` after every step (a collective
    inside a submitted job; ``False`` and free elsewhere). Once every rank has
    seen ``True`` it asks the trainer to stop at the next sync point (at most
    ``sync.parallel_every`` windows away): a save there adds no early flush, so
    the resumed run follows exactly the trajectory of an uninterrupted one. The
    checkpoint that makes the stop resumable is written by the runner after
    ``fit`` returns.
    """
    requested = False

    def hook(trainer: Trainer, metrics: dict[str, float]) -> None:
        nonlocal requested
        # The poll is a collective: once every rank has seen True, none polls again.
        requested = requested or preemption_requested()
        if requested and trainer.at_sync_point:
            from obs_dist.engine.dist import is_rank_zero  # lazily: submitting needs no torch

            if is_rank_zero():
                log.warning("preemption requested: saving at step %d and stopping", trainer.step)
            trainer.stop_requested = True

    return hook


class RequeueLimitReached(RuntimeError):
    """The job was preempted or timed out more often than ``max_requeues`` allows."""


class DistributedJob:
    """A submitit-checkpointable job that runs :meth:`run` on every task.

    Subclasses implement :meth:`run`; it joins the process group from the
    exported environment, checkpoints to its store, resumes from the newest
    complete checkpoint there, and polls :func:`preemption_requested`.

    Args:
        settings: requeue policy and port range (``SubmitConfig.job_settings()``).
        requeues: requeues so far (set by :meth:`checkpoint`, not by callers).
    """

    def __init__(self, settings: JobSettings | None = None, requeues: int = 0) -> None:
        self.settings = settings or JobSettings()
        self.requeues = requeues

    def run(self) -> dict[str, Any]:
        """The work of one task; returns its final counters."""
        raise NotImplementedError

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """A fresh copy of this job to requeue (submitit's checkpoint protocol).

        The copy holds the same config and no checkpoint path: it resumes from
        whatever checkpoint is newest in the store when it starts.
        """
        fresh = copy.copy(self)
        fresh.requeues = self.requeues + 1
        return DelayedSubmission(fresh)

    def __call__(self) -> dict[str, Any]:
        global _ACTIVE_WATCH
        _log_to_stderr()
        try:
            env = submitit.JobEnvironment()
        except RuntimeError:  # called directly, not through an executor
            return self.run()
        denv = export_distributed_env(env, self.settings, self.requeues)
        log.info("task environment: %s", asdict(denv))
        watch = PreemptionWatch(
            signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"],
            self.settings.preempt_grace_s,
            on_ignored=lambda: self._requeue_unsaved(env),
        )
        watch.install()
        _ACTIVE_WATCH = watch
        try:
            result = self.run()
        finally:
            _ACTIVE_WATCH = None
            watch.uninstall()
        if not watch.acknowledged:
            return result
        log.info("checkpoint saved after the preemption/timeout signal; requeueing")
        self._barrier()
        self._requeue_saved(env)
        raise AssertionError("unreachable: _requeue_saved exits the process")

    # -- requeue machinery ------------------------------------------------------------

    def _check_requeue_limit(self, cluster: str) -> int:
        count = _restart_count(self.requeues, cluster)
        if count >= self.settings.max_requeues:
            raise RequeueLimitReached(
                f"job preempted or timed out after {count} requeue(s); max_requeues="
                f"{self.settings.max_requeues} reached, giving up. The newest complete "
                "checkpoint is in the store: submit again to continue from it."
            )
        return count

    def _requeue_saved(self, env: Any) -> None:
        """All ranks saved: rank 0 requeues; every process leaves."""
        count = self._check_requeue_limit(env.cluster)
        if env.global_rank == 0:
            self._store_fresh_copy(env)
            self._request_requeue(env, count)
        if env.cluster == "local":
            sys.exit(LOCAL_REQUEUE_RETURN_CODE)
        # On SLURM the requeue kills every task of the job; wait for that rather
        # than exit first and have the step torn down before rank 0 requeued.
        time.sleep(120)
        sys.exit(1)

    def _requeue_unsaved(self, env: Any) -> None:
        """Grace expired without the loop stopping: requeue from the last periodic save."""
        log.warning(
            "the training loop did not acknowledge the preemption signal within %.0f s; "
            "requeueing without a fresh checkpoint (resume from the newest periodic one)",
            self.settings.preempt_grace_s,
        )
        try:
            count = self._check_requeue_limit(env.cluster)
            if env.global_rank == 0:
                self._store_fresh_copy(env)
                self._request_requeue(env, count)
        except Exception as exc:  # a helper thread: report, never raise into nothing
            log.error("requeue after the grace period failed: %s", exc)
            return
        if env.cluster == "local":
            # The main thread may be stuck in a collective, so leave without unwinding;
            # on SLURM the requeue itself ends every task.
            logging.shutdown()
            os._exit(LOCAL_REQUEUE_RETURN_CODE)

    def _store_fresh_copy(self, env: Any) -> None:
        """Replace submitit's pickle with :meth:`checkpoint`'s fresh copy."""
        pickle_path = env.paths.submitted_pickle
        old = DelayedSubmission.load(pickle_path)
        fresh = self.checkpoint()
        fresh.set_timeout(old._timeout_min, old._timeout_countdown)
        with temporary_save_path(pickle_path) as tmp:
            fresh.dump(tmp)

    @staticmethod
    def _request_requeue(env: Any, count: int) -> None:
        if env.cluster != "slurm":
            log.info("requeue %d: restarting the local tasks", count + 1)
            return
        # Logged before the call: the requeue ends every task of the job, this one
        # included, often before a line written after it would reach the log.
        log.info("requeueing job %s (requeue %d)", env.job_id, count + 1)
        for handler in logging.getLogger().handlers:
            handler.flush()
        done = subprocess.run(
            ["scontrol", "requeue", str(env.job_id)], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"scontrol requeue {env.job_id} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}"
            )

    @staticmethod
    def _barrier() -> None:
        from obs_dist.engine.dist import barrier

        barrier()
