"""``obs submit`` on a real one-node SLURM cluster (slurmctld + slurmd + munge on loopback).

The cluster comes from ``launch/jobs/slurm/start-cluster.sh`` (see ``slurm_cluster.py``);
these tests skip, saying why, only where that cannot run (not root, or slurm-wlm and
munge not installed). The job is the real training job, ``TrainingJob`` (what
``obs submit`` submits: ``run_training`` with ``resume="auto"``), as 2 gloo tasks of a
tiny deterministic model that checkpoint to S3 (moto on 127.0.0.1). It is interrupted
mid-run, once by the preemption signal and once by ``scontrol requeue``, and must end
with a final checkpoint bit-identical to that of an uninterrupted run of the same
config (on the local executor), which no lost or repeated step would give.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from support import slurm_cluster as support

from launch import cli
from launch.jobs.submit import SubmitConfig, submit

Scenario = support.Scenario
SlurmCluster = support.SlurmCluster
TrainingScenario = support.TrainingScenario
TRAIN_STEPS = support.TRAIN_STEPS
TRAIN_CKPT_EVERY = support.TRAIN_CKPT_EVERY
INTERRUPT_AT = 2 * TRAIN_CKPT_EVERY


def _slurm_config(folder: Path, **overrides: object) -> SubmitConfig:
    values: dict = dict(
        executor="slurm", folder=str(folder / "runs"), partition=support.PARTITION,
        tasks_per_node=2, time_min=10, max_requeues=2,
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
    s3_job_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    training_reference: TrainingScenario,
) -> dict[str, TrainingScenario]:
    """Both interrupted training runs, submitted at once next to the uninterrupted reference.

    Each is the real ``TrainingJob`` (what ``obs submit`` submits), interrupted once a
    complete checkpoint at step ``INTERRUPT_AT`` or later is in the store.
    """
    preempted = tmp_path_factory.mktemp("preempted")
    requeued = tmp_path_factory.mktemp("requeued")
    return {
        "preempted": support.launch_training(
            s3_url, preempted, _slurm_config(preempted),
            interrupt_at=INTERRUPT_AT, interrupt=_preemption_signal,
        ),
        # SIGTERM comes KillWait (5 s) before SIGKILL and is ignored (as submitit does):
        # the run keeps training for those seconds, so TRAIN_STEPS leaves it room.
        "requeued": support.launch_training(
            s3_url, requeued, _slurm_config(requeued),
            interrupt_at=INTERRUPT_AT, interrupt=_hard_requeue,
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


def _assert_finished_like_the_reference(
    scenario: TrainingScenario, reference: TrainingScenario
) -> list[dict]:
    """Both ranks reached TRAIN_STEPS, and the final checkpoint equals the reference's.

    With ``scheduler.weight_cost = 0`` training is deterministic, so a lost step or a
    step applied twice (big state, slow weights, optimizer state, data cursor, counters)
    would make the final checkpoint differ from the uninterrupted run's.
    """
    results = scenario.results(timeout_s=300.0)
    want = reference.results(timeout_s=300.0)
    assert [int(r["rank"]) for r in results] == [0, 1]
    for got, ref in zip(results, want, strict=True):
        assert got["step"] == ref["step"] == TRAIN_STEPS
        assert got["world_size"] == 2
        # Cumulative counters are checkpointed: every step counted exactly once.
        assert got["samples_total"] == ref["samples_total"] == TRAIN_STEPS * 2
        assert got["committed_entries_total"] == ref["committed_entries_total"]
    final = scenario.final_checkpoint()
    assert final["step"] == TRAIN_STEPS
    support.assert_identical(final, reference.final_checkpoint())
    fields = _final_fields(scenario.run.job_id)
    if fields["JobState"] != "COMPLETED" or fields["Restarts"] != "1":
        tails = {p.name: p.read_text()[-1500:] for p in scenario.run.stderr if p.is_file()}
        keys = ("JobState", "Restarts", "ExitCode", "Reason")
        pytest.fail(f"job ended {({k: fields.get(k) for k in keys})}; task logs: {tails}")
    return results


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_preempted_training_job_saves_requeues_and_matches_an_uninterrupted_run(
    cluster_runs: dict[str, TrainingScenario], training_reference: TrainingScenario
) -> None:
    scenario = cluster_runs["preempted"]
    results = _assert_finished_like_the_reference(scenario, training_reference)
    stopped_at = int(results[0]["resumed_from"])
    assert scenario.interrupted_at is not None
    assert scenario.interrupted_at <= stopped_at < TRAIN_STEPS, stopped_at
    assert all(int(r["resumed_from"]) == stopped_at for r in results)
    log = scenario.run.stderr[0].read_text()
    # Saved at the very step the signal was seen (not a periodic checkpoint's), resumed there.
    assert f"preemption requested: saving at step {stopped_at} and stopping" in log
    assert f"resumed from the checkpoint of step {stopped_at}" in log
    assert f"requeueing job {scenario.run.job_id} (requeue 1)" in log
    assert "'cluster': 'slurm'" in log and "'world_size': 2" in log


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_hard_requeued_training_job_resumes_from_the_newest_complete_checkpoint(
    cluster_runs: dict[str, TrainingScenario], training_reference: TrainingScenario
) -> None:
    scenario = cluster_runs["requeued"]
    results = _assert_finished_like_the_reference(scenario, training_reference)
    resumed = int(results[0]["resumed_from"])
    assert scenario.interrupted_at is not None
    # A periodic checkpoint written before the kill; the steps after it were recomputed.
    assert resumed % TRAIN_CKPT_EVERY == 0, resumed
    assert scenario.interrupted_at <= resumed < TRAIN_STEPS, resumed
    log = scenario.run.stderr[0].read_text()
    assert "preemption requested" not in log  # killed without warning
    assert f"resumed from the checkpoint of step {resumed}" in log


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
        "--folder", str(tmp_path / "runs"), "--set", "train.steps=3",
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


def test_obs_submit_passes_gpus_account_mem_setup_and_sbatch_options(
    slurm_cluster: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "submit", "--partition", support.PARTITION, "--time", "2", "--signal-delay-s", "30",
        "--folder", str(tmp_path / "runs"), "--set", "train.steps=3",
        "--gpus-per-node", "0", "--account", "acct7", "--mem", "100M",
        "--setup", "export OBS_SETUP_X=1", "--sbatch-option", "comment=from-obs",
        "--sbatch-option", "exclusive",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    job_id = out[0].split()[2]
    try:
        fields = support.SlurmCluster.job_fields(job_id)
        assert fields["Account"] == "acct7" and fields["Comment"] == "from-obs"
        assert fields["TresPerNode"] == "gres:gpu:0" and fields["MinMemoryNode"] == "100M"
        assert fields["OverSubscribe"] == "NO"  # --exclusive
        script = (Path(out[1].removeprefix("job folder: ")) / f"{job_id}_submission.sh")
        text = script.read_text()
        assert "#SBATCH --requeue" in text  # the pass-through keeps what OBS owns
        assert text.index("export OBS_SETUP_X=1") < text.index("srun ")
    finally:
        subprocess.run(["scancel", job_id], check=False, timeout=30)


def test_obs_submit_refuses_an_unknown_config_key_before_sbatch(
    slurm_cluster: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = support.queued_jobs()
    argv = ["submit", "--partition", support.PARTITION, "--folder", str(tmp_path / "runs"),
            "--set", "trainer.steps=100"]
    assert cli.main(argv) == 2
    assert "unknown config key trainer" in capsys.readouterr().err
    assert support.queued_jobs() == before and not (tmp_path / "runs").exists()
