"""Test support for the launch tests: a real one-node SLURM cluster, S3 on loopback, a job.

``tests/conftest.py`` registers it as a plugin. Fixtures:

* ``slurm_cluster`` (session): starts the cluster with ``launch/jobs/slurm/start-cluster.sh``
  (idempotent, so an already running cluster is reused). Skips, saying why, when
  not root or when the slurm/munge binaries are absent; a cluster that should start
  but does not is a test *error*, never a skip.
* ``s3_url`` (session): moto's S3 server on 127.0.0.1.

:class:`CountingJob` is a small distributed job that goes through exactly the
machinery the training job uses (:class:`launch.jobs.submit.DistributedJob`): it joins a
gloo group from the exported environment, all-reduces one number per step, saves a
checkpoint to S3 (every rank its part, then rank 0 a manifest), resumes from the
newest complete manifest, and polls :func:`launch.jobs.submit.preemption_requested`.
It logs every executed step, so tests can prove no step was lost or repeated.

The real training job: :func:`launch_training` submits :class:`launch.jobs.submit.TrainingJob`
(what ``obs submit`` submits) on a tiny deterministic config that checkpoints to S3;
:class:`TrainingScenario` waits for its checkpoints and loads the final one, which
:func:`assert_identical` compares with the ``training_reference`` fixture's (the same
job, uninterrupted, on the local executor). ``s3_job_env`` puts the dummy S3
credentials in the environment the job's tasks inherit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from launch.jobs.spawn import free_port
from launch.jobs.submit import (
    DistributedJob,
    JobSettings,
    SubmitConfig,
    SubmittedRun,
    TrainingJob,
    preemption_requested,
    slurm_job_fields,
    submit,
    wait_for_results,
)
from support.s3_server import credentials_in_env
from support.tree_compare import assert_identical  # noqa: F401  (support.assert_identical)

REPO = Path(__file__).resolve().parents[2]
START_SCRIPT = REPO / "launch" / "jobs" / "slurm" / "start-cluster.sh"
PARTITION = "debug"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo")
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# The job processes unpickle CountingJob; they cannot import this test module, so
# cloudpickle ships the class by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")


def cluster_skip_reason() -> str | None:
    """Why the real cluster cannot run here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (slurmd and munged run as root here)"
    missing = [name for name in BINARIES if _which(name) is None]
    if missing:
        names = ", ".join(missing)
        return f"SLURM/munge binaries absent ({names}): apt-get install slurm-wlm munge"
    return None


@dataclass(frozen=True)
class SlurmCluster:
    """The running one-node cluster."""

    partition: str
    start_output: str

    @staticmethod
    def job_fields(job_id: str) -> dict[str, str]:
        """``scontrol show job`` of ``job_id`` as a dict."""
        return slurm_job_fields(job_id)


def start_cluster(timeout_s: float = 120.0) -> SlurmCluster:
    """Run ``start-cluster.sh`` and return the cluster; raise with its output on failure."""
    env = dict(os.environ, OBS_SLURM_PARTITION=PARTITION)
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    done = subprocess.run(
        ["bash", str(START_SCRIPT)], capture_output=True, text=True, timeout=timeout_s, env=env
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"start-cluster.sh failed (exit {done.returncode}):\n{output}")
    return SlurmCluster(partition=PARTITION, start_output=output)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The real one-node cluster (started once per session; reused if already up)."""
    reason = cluster_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return start_cluster()


@pytest.fixture(scope="session")
def s3_url() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for the whole session."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_client(url: str) -> Any:
    """A boto3 S3 client of the test server."""
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", **CREDENTIALS)


def queued_jobs() -> str:
    """``squeue``'s job ids, one per line (what a refused submission must leave unchanged)."""
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def expected_total(total_steps: int, world_size: int) -> float:
    """The job's final accumulator: each step adds ``sum(rank + 1) * step``."""
    per_step = world_size * (world_size + 1) / 2
    return per_step * total_steps * (total_steps + 1) / 2


class CountingJob(DistributedJob):
    """A distributed job with S3 checkpoints, resumable, that counts its steps.

    Args:
        s3_url: endpoint of the S3 server.
        bucket: bucket of the checkpoints.
        prefix: key prefix of this run's checkpoints.
        progress_dir: shared directory for progress and executed-step logs.
        total_steps: steps of the whole run.
        step_s: sleep per step (so a test can interrupt mid-run).
        ckpt_every: periodic checkpoint interval in steps.
        poll: whether the loop polls ``preemption_requested`` (False exercises
            the grace-period fallback).
        settings: requeue policy.
        requeues: set by ``checkpoint()``.
    """

    def __init__(
        self,
        s3_url: str,
        bucket: str,
        prefix: str,
        progress_dir: str,
        total_steps: int = 30,
        step_s: float = 0.15,
        ckpt_every: int = 5,
        poll: bool = True,
        settings: JobSettings | None = None,
        requeues: int = 0,
    ) -> None:
        super().__init__(settings, requeues)
        self.s3_url, self.bucket, self.prefix = s3_url, bucket, prefix
        self.progress_dir = progress_dir
        self.total_steps, self.step_s, self.ckpt_every = total_steps, step_s, ckpt_every
        self.poll = poll

    def run(self) -> dict[str, Any]:
        import torch
        import torch.distributed as torch_dist

        from obs_dist.engine.dist import init_from_env

        init_from_env(torch.device("cpu"), timeout_s=60)
        rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
        s3 = s3_client(self.s3_url)
        state = self._resume(s3, rank)
        resumed_from = state["step"]
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) or self.requeues
        result: dict[str, Any] = {"preempted_at": None}
        for step in range(state["step"] + 1, self.total_steps + 1):
            value = torch.tensor([float((rank + 1) * step)], dtype=torch.float64)
            torch_dist.all_reduce(value)
            state["acc"] += value.item()
            state["history"].append(step)
            state["step"] = step
            self._record(rank, step, attempt)
            time.sleep(self.step_s)
            saved = step % self.ckpt_every == 0
            if saved:
                self._save(s3, rank, state)
            if self.poll and preemption_requested():
                if not saved:
                    self._save(s3, rank, state)
                result["preempted_at"] = step
                break
        else:
            if self.total_steps % self.ckpt_every:
                self._save(s3, rank, state)
            torch_dist.destroy_process_group()
        result.update(
            rank=rank,
            world_size=world,
            step=state["step"],
            acc=state["acc"],
            history=state["history"],
            resumed_from=resumed_from,
            attempt=attempt,
            master=f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        )
        return result

    # -- checkpoints: every rank writes its part, rank 0 the manifest, last ----------------

    def _key(self, step: int, name: str) -> str:
        return f"{self.prefix}/step_{step:06d}/{name}"

    def _save(self, s3: Any, rank: int, state: dict[str, Any]) -> None:
        import torch.distributed as torch_dist

        step = state["step"]
        body = json.dumps(state).encode()
        s3.put_object(Bucket=self.bucket, Key=self._key(step, f"rank{rank}.json"), Body=body)
        torch_dist.barrier()
        if rank == 0:
            manifest = json.dumps({"step": step}).encode()
            s3.put_object(Bucket=self.bucket, Key=self._key(step, "manifest.json"), Body=manifest)
        torch_dist.barrier()

    def _resume(self, s3: Any, rank: int) -> dict[str, Any]:
        """The newest complete checkpoint (one with a manifest), or a fresh state."""
        steps = []
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/"
        ):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/manifest.json"):
                    steps.append(int(obj["Key"].split("/")[-2].removeprefix("step_")))
        if not steps:
            return {"step": 0, "acc": 0.0, "history": []}
        key = self._key(max(steps), f"rank{rank}.json")
        return json.loads(s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    # -- progress for the test: where we are, and every executed step ---------------------

    def _record(self, rank: int, step: int, attempt: int) -> None:
        folder = Path(self.progress_dir)
        with (folder / f"executed-rank{rank}.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, "attempt": attempt}) + "\n")
        tmp = folder / f".progress-rank{rank}.tmp"
        tmp.write_text(json.dumps({"step": step, "attempt": attempt, "pid": os.getpid()}))
        tmp.replace(folder / f"progress-rank{rank}.json")


def read_progress(progress_dir: Path, rank: int) -> dict[str, Any] | None:
    """The newest progress record of ``rank``, if any."""
    path = progress_dir / f"progress-rank{rank}.json"
    return json.loads(path.read_text()) if path.exists() else None


def executed_steps(progress_dir: Path, rank: int) -> list[dict[str, Any]]:
    """Every step ``rank`` executed, across attempts, in order."""
    path = progress_dir / f"executed-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_step(progress_dir: Path, rank: int, step: int, timeout_s: float = 90.0) -> dict:
    """Block until ``rank`` has executed ``step`` (or later); return its progress record."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = read_progress(progress_dir, rank)
        if progress is not None and progress["step"] >= step:
            return progress
        time.sleep(0.1)
    raise TimeoutError(f"rank {rank} did not reach step {step} within {timeout_s} s")


# -- scenarios: jobs launched side by side, each interrupted by its own helper thread ----
#
# Starting a task costs seconds here (importing torch), so the tests launch all their
# jobs at once from a fixture and each test then waits for its own.

STEPS = 24


class Scenario:
    """One submitted run of :class:`CountingJob`, and an optional interruption.

    Args:
        run: the submitted run.
        progress: the job's progress directory.
        bucket: the job's checkpoint bucket.
        interrupt_at: once rank 0 has executed this step, call ``interrupt``.
        interrupt: what preempts the job (a signal, ``scontrol requeue`` …).
    """

    def __init__(
        self,
        run: SubmittedRun,
        progress: Path,
        bucket: str,
        interrupt_at: int | None = None,
        interrupt: Callable[[Scenario], None] | None = None,
    ) -> None:
        self.run, self.progress, self.bucket = run, progress, bucket
        self.interrupted_at: int | None = None
        self._interrupt_error: BaseException | None = None
        self._outcome: list[Any] | BaseException | None = None
        self._thread: threading.Thread | None = None
        if interrupt_at is not None and interrupt is not None:
            self._thread = threading.Thread(
                target=self._interrupt, args=(interrupt_at, interrupt), daemon=True
            )
            self._thread.start()

    def wait_until(self, step: int) -> int:
        """Block until rank 0 has executed ``step`` (or later); return its step."""
        return int(wait_for_step(self.progress, 0, step)["step"])

    def _interrupt(self, step: int, interrupt: Callable[[Scenario], None]) -> None:
        try:
            self.interrupted_at = self.wait_until(step)
            interrupt(self)
        except BaseException as exc:  # reported by results(), in the test's thread
            self._interrupt_error = exc

    def results(self, timeout_s: float = 150.0) -> list[Any]:
        """Every task's result (waits once; later calls return or raise the same)."""
        if self._outcome is None:
            try:
                self._outcome = wait_for_results(self.run, timeout_s=timeout_s)
            except BaseException as exc:
                self._outcome = exc
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._interrupt_error is not None:
            raise AssertionError(f"interrupting the job failed: {self._interrupt_error!r}")
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def manifests(self, s3_url: str) -> list[int]:
        """Steps of the complete checkpoints in the store, ascending."""
        listing = s3_client(s3_url).list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return sorted(
            int(o["Key"].split("/")[-2].removeprefix("step_"))
            for o in listing
            if o["Key"].endswith("/manifest.json")
        )


def launch(
    s3_url: str,
    folder: Path,
    cfg: SubmitConfig,
    interrupt_at: int | None = None,
    interrupt: Callable[[Scenario], None] | None = None,
    **job_kwargs: Any,
) -> Scenario:
    """Submit a 2-task :class:`CountingJob` of ``STEPS`` steps with a fresh bucket."""
    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3_client(s3_url).create_bucket(Bucket=bucket)
    progress = folder / "progress"
    progress.mkdir(parents=True)
    job_kwargs.setdefault("total_steps", STEPS)
    job = CountingJob(
        s3_url, bucket, "run", str(progress), settings=cfg.job_settings(), **job_kwargs
    )
    run = submit(job, cfg)
    return Scenario(run, progress, bucket, interrupt_at, interrupt)


def local_config(folder: Path, **overrides: Any) -> SubmitConfig:
    """A 2-task local-executor config writing job folders under ``folder``."""
    values: dict[str, Any] = dict(
        executor="local", folder=str(folder / "runs"), tasks_per_node=2, time_min=5
    )
    values.update(overrides)
    return SubmitConfig(**values)


@pytest.fixture(scope="session")
def reference_run(s3_url: str, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """The uninterrupted run, on the local executor (launched once, waited for lazily)."""
    folder = tmp_path_factory.mktemp("reference")
    return launch(s3_url, folder, local_config(folder), step_s=0.0)


# -- the real training job: TrainingJob (obs train) with checkpoints on S3 ---------------
#
# The tiny model of tests/test_checkpoint_resume.py; with scheduler.weight_cost = 0 two
# runs of the same config end in bit-identical states, so an interrupted run that lost or
# repeated a step cannot match the uninterrupted one.

TRAIN_STEPS = 200
TRAIN_CKPT_EVERY = 10
TRAIN_NODES, TRAIN_PARTITIONS = 96, 3
TRAIN_SETS = [
    f"state.nodes={TRAIN_NODES}", f"state.partitions={TRAIN_PARTITIONS}", "model.d_model=16",
    "model.writer.k_max=4", "model.writer.active=8", "model.writer.key_dim=16",
    "task.vocab=16", "task.seq_len=6", "task.pairs=2", "task.batch=2", "task.commit=true",
    "train.progress=false", "train.warmup=2", f"train.steps={TRAIN_STEPS}",
    f"checkpoint.every={TRAIN_CKPT_EVERY}", "scheduler.weight_cost=0.0",
    # OBS_TEST_SETS="state.layout=sharded" runs the same tests in another configuration.
    *os.environ.get("OBS_TEST_SETS", "").split(),
]  # fmt: skip


@pytest.fixture(scope="session")
def s3_job_env() -> Iterator[dict[str, str]]:
    """Dummy S3 credentials in this process's environment, which the job's tasks inherit.

    ``sbatch`` exports the submitter's environment (``--export=ALL``) and the local
    executor copies it, so boto3's default chain finds these in every task.
    """
    with credentials_in_env() as env:
        yield env


class TrainingScenario(Scenario):
    """One submitted :class:`~launch.jobs.submit.TrainingJob` with its S3 checkpoint store.

    Args:
        run: the submitted run.
        folder: this scenario's folder (``out_dir`` of the training run is in it).
        bucket: the checkpoint bucket; the store is ``s3://<bucket>/run``.
        s3_url: endpoint of the S3 server.
        interrupt_at: once a checkpoint at this step (or later) is complete, call
            ``interrupt``.
        interrupt: what preempts the job.
        interrupt_wait_s: how long to wait for the checkpoint at ``interrupt_at``
            (counted from the submission, so it includes the tasks' start).
    """

    def __init__(
        self,
        run: SubmittedRun,
        folder: Path,
        bucket: str,
        s3_url: str,
        interrupt_at: int | None = None,
        interrupt: Callable[[Scenario], None] | None = None,
        interrupt_wait_s: float = 120.0,
    ) -> None:
        self.interrupt_wait_s = interrupt_wait_s
        self.s3_url = s3_url
        self.url = f"s3://{bucket}/run"
        self.out_dir = folder / "out"
        super().__init__(run, folder, bucket, interrupt_at, interrupt)

    def store(self) -> Any:
        """The run's checkpoint store."""
        from obs_dist.storage import open_store

        return open_store(self.url, endpoint_url=self.s3_url)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints in the store (retention may drop old ones)."""
        from obs_dist.checkpoint.format import list_steps

        return list_steps(self.store())

    def wait_until(self, step: int, timeout_s: float | None = None) -> int:
        """Block until a complete checkpoint at ``step`` or later is in the store."""
        timeout_s = self.interrupt_wait_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            steps = self.checkpoint_steps()
            if steps and steps[-1] >= step:
                return steps[-1]
            time.sleep(0.1)
        raise TimeoutError(f"no checkpoint at step >= {step} within {timeout_s} s ({self.url})")

    def final_checkpoint(self, world: int = 2) -> dict[str, Any]:
        """The newest checkpoint: its step, the big state and every rank's saved tree."""
        from obs_dist.checkpoint.codec import decode_from_objects
        from obs_dist.checkpoint.format import load_state, read_manifest, read_rank
        from obs_dist.checkpoint.manager import register_engine_classes
        from obs_dist.model.state import BigState, StateConfig

        if world > 1:  # the DeepSpeed engine's optimizer state holds its LossScaler objects
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            import deepspeed  # noqa: F401

            register_engine_classes()
        store = self.store()
        manifest = read_manifest(store, self.checkpoint_steps()[-1])
        config = StateConfig(nodes=TRAIN_NODES, partitions=TRAIN_PARTITIONS)
        if manifest.state.get("layout") == "sharded":  # OBS_TEST_SETS=state.layout=sharded
            from obs_dist.checkpoint.shard_state import read_sharded_matrix

            matrix = read_sharded_matrix(store, manifest, config)
        else:
            state = BigState(config, init=False)
            load_state(store, manifest, state)
            matrix = state.matrix()
        ranks = []
        for rank in range(world):
            tree = decode_from_objects(*read_rank(store, manifest, rank), self.url)
            ranks.append({k: tree[k] for k in ("model", "slow", "trainer", "extra")})
        return {"step": manifest.step, "state": matrix, "ranks": ranks}


def launch_training(
    s3_url: str,
    folder: Path,
    cfg: SubmitConfig,
    interrupt_at: int | None = None,
    interrupt: Callable[[Scenario], None] | None = None,
    extra_sets: tuple[str, ...] = (),
    interrupt_wait_s: float = 120.0,
) -> TrainingScenario:
    """Submit the real :class:`TrainingJob` (``obs submit``'s job) with a fresh bucket.

    ``cfg`` says how many nodes and tasks (the one-node tests: 2 tasks);
    ``interrupt_wait_s`` is :class:`TrainingScenario`'s.
    """
    bucket = f"train-{uuid.uuid4().hex[:12]}"
    s3_client(s3_url).create_bucket(Bucket=bucket)
    sets = [*TRAIN_SETS, f"checkpoint.url=s3://{bucket}/run",
            f"checkpoint.endpoint_url={s3_url}", f"out_dir={folder / 'out'}", *extra_sets]
    run = submit(TrainingJob(None, sets, cfg.job_settings()), cfg)
    return TrainingScenario(run, folder, bucket, s3_url, interrupt_at, interrupt,
                            interrupt_wait_s)


@pytest.fixture(scope="session")
def training_reference(
    s3_url: str, s3_job_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> TrainingScenario:
    """The uninterrupted training run, on the local executor (waited for lazily)."""
    folder = tmp_path_factory.mktemp("training-reference")
    return launch_training(s3_url, folder, local_config(folder))
