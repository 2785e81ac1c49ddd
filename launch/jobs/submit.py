"""Submitting distributed jobs through submitit: SLURM on a cluster, or local processes.

:class:`SubmitConfig` says how many nodes and tasks, which partition, how long;
:func:`submit` makes one submitit executor and one job folder per run and returns a
:class:`SubmittedRun` (job id and the log files of every task). A refusal by
``sbatch`` (unknown partition, impossible resources) becomes a ``ValueError``
carrying sbatch's own message. :func:`wait_for_results` waits for a run without
SLURM accounting (``sacct``), which small clusters often lack. :class:`TrainingJob`
is what ``obs submit`` submits: the OBS training run.

What runs inside the tasks (environment, preemption, requeue) is in
:mod:`launch.jobs.job`; its public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, JobPaths

from launch.jobs.job import (
    DistributedEnv,
    DistributedJob,
    JobSettings,
    PreemptionWatch,
    RequeueLimitReached,
    export_distributed_env,
    master_port_for,
    preemption_hook,
    preemption_requested,
)

__all__ = [
    "EXECUTORS",
    "DistributedEnv",
    "DistributedJob",
    "JobSettings",
    "PreemptionWatch",
    "RequeueLimitReached",
    "SubmitConfig",
    "SubmittedRun",
    "TrainingJob",
    "export_distributed_env",
    "make_executor",
    "master_port_for",
    "new_run_folder",
    "preemption_hook",
    "preemption_requested",
    "scheduler_state",
    "slurm_job_fields",
    "submit",
    "wait_for_results",
]

EXECUTORS = ("slurm", "local")


# sbatch options that obs submit writes from its own flags (requeue and signal:
# the preemption protocol depends on them); a pass-through may not change them.
OWNED_SBATCH_OPTIONS = frozenset({
    "job_name", "nodes", "ntasks_per_node", "cpus_per_task", "time", "signal", "requeue",
    "partition", "mem", "gpus_per_node", "account", "qos", "constraint", "output", "error",
    "open_mode", "wckey",
})


@dataclass
class SubmitConfig:
    """How ``obs submit`` launches a run.

    Attributes:
        executor: ``slurm`` (sbatch + srun) or ``local`` (processes on this machine).
        folder: root under which each run gets its own job folder.
        job_name: SLURM job name and prefix of the run folder.
        nodes: number of nodes (``local``: must be 1).
        tasks_per_node: processes per node; the world size is ``nodes * tasks_per_node``.
        cpus_per_task: CPUs reserved per process.
        partition: SLURM partition; empty uses the cluster's default partition.
        time_min: time limit in minutes.
        mem_gb: memory per node in GB; 0 leaves the cluster default.
        mem: memory per node as SLURM writes it (``16G``, ``500M``); instead of ``mem_gb``.
        gpus_per_node: GPUs per node (``--gpus-per-node``); None asks for none.
        account: SLURM account to charge (empty: the user's default).
        qos: quality of service (empty: the partition's default).
        constraint: node features the job needs (``--constraint``, e.g. ``a100``).
        setup: shell lines run in the batch script before the tasks start
            (``module load …``, activating an environment).
        sbatch_options: further ``#SBATCH --key=value`` options, passed through
            as given (``{"exclusive": ""}`` writes a bare ``--exclusive``).
        max_requeues: requeues after preemption/timeout before giving up.
        signal_delay_s: the timeout signal comes this many seconds before the limit.
        preempt_grace_s: see :class:`JobSettings`.
        master_port_base: see :class:`JobSettings`.
    """

    executor: str = "slurm"
    folder: str = "runs/submit"
    job_name: str = "obs"
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    partition: str = ""
    time_min: int = 60
    mem_gb: float = 0.0
    mem: str = ""
    gpus_per_node: int | None = None
    account: str = ""
    qos: str = ""
    constraint: str = ""
    setup: list[str] = field(default_factory=list)
    sbatch_options: dict[str, str] = field(default_factory=dict)
    max_requeues: int = 3
    signal_delay_s: int = 120
    preempt_grace_s: float = 60.0
    master_port_base: int = 15000

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        for key in ("nodes", "tasks_per_node", "cpus_per_task", "time_min"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.executor == "local" and self.nodes != 1:
            raise ValueError(f"nodes must be 1 with the local executor, got {self.nodes}")
        if self.mem_gb < 0:
            raise ValueError(f"mem_gb must be >= 0 (0 = cluster default), got {self.mem_gb}")
        if self.mem and self.mem_gb:
            raise ValueError(f"give mem ({self.mem!r}) or mem_gb ({self.mem_gb}), not both")
        if self.mem and not re.fullmatch(r"\d+[KMGT]?", self.mem):
            raise ValueError(f"mem must look like 16G or 500M, got {self.mem!r}")
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        for key in self.sbatch_options:
            if key.replace("-", "_") in OWNED_SBATCH_OPTIONS:
                raise ValueError(f"sbatch option {key!r} is set by obs submit itself; use its "
                                 "own flag")
            if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
                raise ValueError(f"sbatch option {key!r} must be a long option name "
                                 "(letters, digits, '-')")
        if self.max_requeues < 0:
            raise ValueError(f"max_requeues must be >= 0, got {self.max_requeues}")
        if not 0 <= self.signal_delay_s < 60 * self.time_min:
            raise ValueError(
                f"signal_delay_s must be in [0, time_min * 60 = {60 * self.time_min}), got "
                f"{self.signal_delay_s}: the timeout signal must come before the time limit"
            )
        if self.preempt_grace_s <= 0:
            raise ValueError(f"preempt_grace_s must be > 0, got {self.preempt_grace_s}")
        if not 1024 <= self.master_port_base <= 65535 - 1000:
            raise ValueError(
                f"master_port_base must be in [1024, 64535], got {self.master_port_base}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.job_name):
            raise ValueError(f"job_name must be letters, digits, '_', '.', '-': {self.job_name!r}")

    def job_settings(self) -> JobSettings:
        """The part of this config the running job carries."""
        span = min(15000, 65535 - self.master_port_base)
        return JobSettings(
            max_requeues=self.max_requeues,
            preempt_grace_s=self.preempt_grace_s,
            master_port_base=self.master_port_base,
            master_port_span=span,
        )


@dataclass(frozen=True)
class SubmittedRun:
    """A submitted job: its id, its folder and the log files of every task."""

    job_id: str
    executor: str
    folder: Path
    stdout: list[Path]
    stderr: list[Path]
    job: Any = field(repr=False, compare=False)

    def describe(self) -> str:
        """Human-readable lines: job id, folder and per-task logs."""
        lines = [f"submitted job {self.job_id} ({self.executor})", f"job folder: {self.folder}"]
        for rank, (out, err) in enumerate(zip(self.stdout, self.stderr)):
            lines.append(f"task {rank}: stdout {out}")
            lines.append(f"task {rank}: stderr {err}")
        return "\n".join(lines)


def new_run_folder(root: str | Path, job_name: str) -> Path:
    """A fresh, unique job folder ``<root>/<job_name>-<time>-<random>`` (created)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(root).resolve() / f"{job_name}-{stamp}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def make_executor(cfg: SubmitConfig, folder: Path) -> submitit.Executor:
    """A submitit executor for ``cfg`` writing into ``folder``.

    Raises:
        ValueError: if ``slurm`` is asked for on a machine without SLURM tools.
    """
    if cfg.executor == "local":
        local = submitit.LocalExecutor(folder=folder)
        local.update_parameters(
            nodes=1,
            tasks_per_node=cfg.tasks_per_node,
            timeout_min=cfg.time_min,
            signal_delay_s=cfg.signal_delay_s,
        )
        return local
    try:
        slurm = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg.max_requeues)
    except RuntimeError as exc:  # submitit's "Could not detect srun"
        raise ValueError(
            f"executor 'slurm' needs the SLURM client tools (srun, sbatch): {exc}; "
            "use executor 'local' to run on this machine"
        ) from exc
    extra: dict[str, Any] = {"requeue": True}  # scontrol requeue needs a requeueable job
    # submitit writes "--key=value", and a bare "--key" for True
    extra.update({k.replace("-", "_"): (v if v != "" else True)
                  for k, v in cfg.sbatch_options.items()})
    params: dict[str, Any] = {
        "job_name": cfg.job_name,
        "nodes": cfg.nodes,
        "ntasks_per_node": cfg.tasks_per_node,
        "cpus_per_task": cfg.cpus_per_task,
        "time": cfg.time_min,
        "signal_delay_s": cfg.signal_delay_s,
        "additional_parameters": extra,
    }
    if cfg.partition:
        params["partition"] = cfg.partition
    if cfg.mem_gb > 0:
        params["mem"] = f"{max(1, round(cfg.mem_gb * 1024))}M"
    if cfg.mem:
        params["mem"] = cfg.mem
    if cfg.gpus_per_node is not None:
        params["gpus_per_node"] = cfg.gpus_per_node
    for key in ("account", "qos", "constraint"):
        if getattr(cfg, key):
            params[key] = getattr(cfg, key)
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    slurm.update_parameters(**params)
    return slurm


def submit(job: DistributedJob, cfg: SubmitConfig) -> SubmittedRun:
    """Submit ``job`` as one run: a new job folder, an executor, one job.

    Args:
        job: the callable every task runs (a :class:`DistributedJob`).
        cfg: resources and requeue policy.

    Returns:
        The job id, folder and log paths.

    Raises:
        ValueError: if the scheduler refuses the job; the message includes what
            ``sbatch`` said (e.g. an unknown partition, impossible resources).
    """
    folder = new_run_folder(cfg.folder, cfg.job_name)
    try:
        executor = make_executor(cfg, folder)
    except ValueError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    chatter = io.StringIO()  # submitit echoes sbatch's stderr; it goes into our error instead
    try:
        with contextlib.redirect_stderr(chatter):
            sjob = executor.submit(job)
    except FailedJobError as exc:
        shutil.rmtree(folder, ignore_errors=True)  # nothing ran: leave no empty run folder
        what = f"{cfg.nodes} node(s) x {cfg.tasks_per_node} task(s) x {cfg.cpus_per_task} cpu(s)"
        where = f"partition {cfg.partition!r}" if cfg.partition else "the default partition"
        raise ValueError(
            f"sbatch refused the job ({what}, {where}, {cfg.time_min} min): {str(exc).strip()}"
        ) from exc
    sys.stderr.write(chatter.getvalue())
    ntasks = cfg.nodes * cfg.tasks_per_node
    paths = [JobPaths(folder, job_id=sjob.job_id, task_id=rank) for rank in range(ntasks)]
    return SubmittedRun(
        job_id=str(sjob.job_id),
        executor=cfg.executor,
        folder=folder,
        stdout=[p.stdout for p in paths],
        stderr=[p.stderr for p in paths],
        job=sjob,
    )


# States after which a job produces nothing more (SLURM's, then the local executor's).
# fmt: off
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED", "FINISHED", "INTERRUPTED", "GONE",
})
# fmt: on


def slurm_job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (``JobState``, ``Restarts``, ``Reason`` …).

    Returns an empty dict once the controller has forgotten the job.
    """
    done = subprocess.run(
        ["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        return {}
    return dict(re.findall(r"(\w[\w:/]*)=(\S*)", done.stdout))


def scheduler_state(run: SubmittedRun) -> str:
    """The job's state as its scheduler reports it (``RUNNING``, ``PENDING``, ``COMPLETED`` …).

    ``GONE`` means SLURM no longer knows the job (purged after ``MinJobAge``).
    """
    if run.executor == "slurm":
        return slurm_job_fields(run.job_id).get("JobState", "GONE")
    return str(run.job.state)


def wait_for_results(run: SubmittedRun, timeout_s: float | None = None) -> list[Any]:
    """Wait until every task of ``run`` has a result, across requeues.

    Does not rely on ``sacct`` (submitit's default), which needs SLURM accounting.

    Args:
        run: a submitted run.
        timeout_s: give up after this long (``None``: wait as long as the job lives).

    Returns:
        The result of every task, in rank order.

    Raises:
        submitit.core.utils.FailedJobError: a task raised (its traceback is included).
        RuntimeError: the job ended without results (killed, cancelled).
        TimeoutError: ``timeout_s`` passed.
    """
    results = [
        JobPaths(run.folder, job_id=run.job_id, task_id=rank).result_pickle
        for rank in range(len(run.stdout))
    ]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    ended_at: float | None = None
    while True:
        if all(path.exists() for path in results):
            return list(run.job.results())
        state = scheduler_state(run)
        if (state.split() or ["UNKNOWN"])[0] in TERMINAL_STATES:
            # Result files can trail the scheduler's bookkeeping by a moment.
            ended_at = ended_at if ended_at is not None else time.monotonic()
            if time.monotonic() - ended_at > 10.0:
                raise RuntimeError(
                    f"job {run.job_id} ended ({state}) without results from every task; "
                    f"see {run.stderr[0]}"
                )
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {run.job_id} not finished after {timeout_s} s ({state})")
        time.sleep(0.5)


class TrainingJob(DistributedJob):
    """The OBS training run as a submitted job.

    Args:
        config_path: TOML config file (``None`` for defaults).
        overrides: ``--set`` style ``key.path=value`` overrides.
        settings: requeue policy and port range.
        requeues: requeues so far (set by :meth:`checkpoint`).
    """

    def __init__(
        self,
        config_path: str | None,
        overrides: list[str],
        settings: JobSettings | None = None,
        requeues: int = 0,
    ) -> None:
        super().__init__(settings, requeues)
        self.config_path = None if config_path is None else str(Path(config_path).resolve())
        self.overrides = list(overrides)

    def run(self) -> dict[str, Any]:
        """Train with ``resume="auto"``: the newest complete checkpoint in the store."""
        from launch.runner import run_training  # the lead's entry point; heavy imports

        return run_training(self.config_path, self.overrides, resume="auto")
