"""``obs submit`` on a real one-node SLURM cluster (slurmctld + slurmd + munge on loopback).

The cluster comes from ``launch/slurm/start-cluster.sh`` (see ``slurm_cluster.py``);
these tests skip, saying why, only where that cannot run (not root, or slurm-wlm and
munge not installed). The job is a 2-task gloo job that checkpoints to S3 (moto on
127.0.0.1) through the same ``DistributedJob`` machinery as the training job.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from launch import cli
from launch.submit import SubmitConfig, submit

# Rewritten asserts in the support module too, whichever name it is imported under.
pytest.register_assert_rewrite("tests.slurm_cluster", "slurm_cluster")
try:  # tests/ as a package, or (without tests/__init__.py) as a plain directory
    from tests import slurm_cluster as support
except ImportError:  # pragma: no cover - depends on how pytest was started
    import slurm_cluster as support  # type: ignore[no-redef]

pytest_plugins = [support.__name__]

STEPS = support.STEPS
Scenario = support.Scenario
SlurmCluster = support.SlurmCluster


def _slurm_config(folder: Path, **overrides: object) -> SubmitConfig:
    values: dict = dict(
        executor="slurm", folder=str(folder / "runs"), partition=support.PARTITION,
        tasks_per_node=2, time_min=5, max_requeues=2,
    )  # fmt: skip
    values.update(overrides)
    return SubmitConfig(**values)


def _preemption_signal(scenario: Scenario) -> None:
    """What SLURM sends on preemption or near the time limit: USR2 to every task."""
    subprocess.run(["scancel", "--signal=USR2", scenario.run.job_id], check=True, timeout=30)


def _hard_requeue(scenario: Scenario) -> None:
    """An operator's requeue: the tasks are killed with no chance to save."""
    subprocess.run(["scontrol", "requeue", scenario.run.job_id], check=True, timeout=30)


def _final_fields(job_id: str, timeout_s: float = 30.0) -> dict[str, str]:
    """``scontrol show job`` once the job left RUNNING (results are written just before)."""
    deadline = time.monotonic() + timeout_s
    fields = support.SlurmCluster.job_fields(job_id)
    while fields.get("JobState") in {"RUNNING", "COMPLETING"} and time.monotonic() < deadline:
        time.sleep(0.2)
        fields = support.SlurmCluster.job_fields(job_id)
    return fields


@pytest.fixture(scope="module")
def cluster_runs(
    slurm_cluster: SlurmCluster,
    s3_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    reference_run: Scenario,
) -> dict[str, Scenario]:
    """Both interrupted runs, submitted at once next to the uninterrupted reference."""
    preempted = tmp_path_factory.mktemp("preempted")
    requeued = tmp_path_factory.mktemp("requeued")
    return {
        "preempted": support.launch(
            s3_url, preempted, _slurm_config(preempted),
            interrupt_at=7, interrupt=_preemption_signal, step_s=0.2,
        ),
        # Slow steps: SIGTERM comes KillWait (5 s) before SIGKILL, and the job must
        # still be mid-run when it is killed.
        "requeued": support.launch(
            s3_url, requeued, _slurm_config(requeued),
            interrupt_at=6, interrupt=_hard_requeue, step_s=0.5,
        ),
    }  # fmt: skip


def test_start_cluster_is_idempotent(slurm_cluster: SlurmCluster) -> None:
    again = support.start_cluster()
    assert "starting" not in again.start_output and "writing" not in again.start_output
    assert f"partition '{support.PARTITION}'" in again.start_output
    sinfo = subprocess.run(
        ["sinfo", "-h", "-p", support.PARTITION, "-o", "%a %c %t"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    avail, cpus, state = sinfo.stdout.split()
    assert avail == "up" and int(cpus) >= 2 and state in {"idle", "mix", "alloc"}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_preempted_job_saves_requeues_and_matches_an_uninterrupted_run(
    cluster_runs: dict[str, Scenario], reference_run: Scenario, s3_url: str
) -> None:
    scenario = cluster_runs["preempted"]
    results = scenario.results()
    reference = reference_run.results()
    fields = _final_fields(scenario.run.job_id)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", fields
    for got, want in zip(results, reference, strict=True):
        assert got["step"] == want["step"] == STEPS
        assert got["history"] == want["history"] == list(range(1, STEPS + 1))
        assert got["acc"] == want["acc"] == support.expected_total(STEPS, 2)
        assert got["attempt"] == 1 and got["master"].startswith("127.0.0.1:")
    stopped_at = results[0]["resumed_from"]
    assert scenario.interrupted_at is not None and stopped_at >= scenario.interrupted_at
    assert stopped_at in scenario.manifests(s3_url), "no checkpoint saved on the signal"
    for rank in range(2):
        steps = support.executed_steps(scenario.progress, rank)
        assert [e["step"] for e in steps] == list(range(1, STEPS + 1)), "lost or repeated"
        assert {e["attempt"] for e in steps if e["step"] > stopped_at} == {1}
    log = scenario.run.stderr[0].read_text()
    assert f"requeued job {scenario.run.job_id} (requeue 1)" in log
    assert "'cluster': 'slurm'" in log and "'world_size': 2" in log


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_hard_requeue_resumes_from_the_newest_complete_checkpoint(
    cluster_runs: dict[str, Scenario], s3_url: str
) -> None:
    scenario = cluster_runs["requeued"]
    results = scenario.results()
    fields = _final_fields(scenario.run.job_id)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", fields
    resumed = results[0]["resumed_from"]
    assert scenario.interrupted_at is not None
    assert resumed % 5 == 0 and 5 <= resumed < STEPS, resumed  # a periodic checkpoint
    for r in results:
        assert r["history"] == list(range(1, STEPS + 1))
        assert r["acc"] == support.expected_total(STEPS, 2)
        assert r["attempt"] == 1  # SLURM_RESTART_COUNT
    executed = [e["step"] for e in support.executed_steps(scenario.progress, 0)]
    assert executed[-(STEPS - resumed) :] == list(range(resumed + 1, STEPS + 1))


@pytest.mark.parametrize(
    ("overrides", "sbatch_says"),
    [
        ({"partition": "no-such-partition"}, "Invalid partition name specified"),
        ({"nodes": 2}, "Node count specification invalid"),
        ({"tasks_per_node": 64}, "More processors requested than permitted"),
    ],
)
def test_sbatch_refusal_is_a_clear_error_with_its_message(
    slurm_cluster: SlurmCluster, tmp_path: Path, overrides: dict, sbatch_says: str
) -> None:
    cfg = _slurm_config(tmp_path, **overrides)
    job = support.CountingJob("http://127.0.0.1:9", "unused", "run", str(tmp_path))
    with pytest.raises(ValueError, match="sbatch refused the job") as err:
        submit(job, cfg)
    assert sbatch_says in str(err.value)
    assert not list((tmp_path / "runs").iterdir()), "a refused job leaves no run folder"


def test_obs_submit_prints_job_id_and_logs(
    slurm_cluster: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.toml"
    config.write_text("")
    argv = [
        "submit", "--config", str(config), "--partition", support.PARTITION,
        "--tasks-per-node", "2", "--time", "2", "--signal-delay-s", "30",
        "--folder", str(tmp_path / "runs"), "--set", "trainer.steps=3",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    job_id = out[0].split()[2]
    try:
        assert out[0] == f"submitted job {job_id} (slurm)"
        folder = Path(out[1].removeprefix("job folder: "))
        assert folder.parent == tmp_path / "runs"
        for rank in range(2):
            assert f"task {rank}: stdout {folder / f'{job_id}_{rank}_log.out'}" in out
            assert f"task {rank}: stderr {folder / f'{job_id}_{rank}_log.err'}" in out
        script = (folder / f"{job_id}_submission.sh").read_text()
        assert "#SBATCH --requeue" in script and "#SBATCH --signal=USR2@30" in script
        assert "#SBATCH --ntasks-per-node=2" in script
    finally:
        subprocess.run(["scancel", job_id], check=False, timeout=30)


def test_obs_submit_bad_partition_reports_sbatch(
    slurm_cluster: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["submit", "--partition", "nope", "--folder", str(tmp_path / "runs")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "obs: error: sbatch refused the job" in err and "invalid partition" in err
