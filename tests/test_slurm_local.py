"""``launch.jobs.submit`` without a cluster: config checks, and the local executor end to end.

The local executor runs the very job the SLURM tests run: the real ``TrainingJob`` (2
gloo tasks, checkpoints on S3 via moto), whose uninterrupted run is also the reference
of the SLURM requeue tests. The preemption, grace-period and give-up paths are tested
with ``CountingJob`` (a small job that logs every step it executes), through the same
environment export, preemption flag and requeue code; only the requeue itself differs
(the local controller restarts the tasks instead of ``scontrol requeue``).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from submitit.core.utils import FailedJobError
from support import slurm_cluster as support

from launch.jobs.submit import JobSettings, SubmitConfig, TrainingJob, master_port_for, submit

STEPS = support.STEPS
Scenario = support.Scenario
executed_steps = support.executed_steps
expected_total = support.expected_total
launch = support.launch
local_config = support.local_config
read_progress = support.read_progress
TrainingScenario = support.TrainingScenario
TRAIN_STEPS = support.TRAIN_STEPS


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("executor", "pbs", "executor must be one of"),
        ("nodes", 0, "nodes must be >= 1"),
        ("tasks_per_node", 0, "tasks_per_node must be >= 1"),
        ("time_min", 0, "time_min must be >= 1"),
        ("max_requeues", -1, "max_requeues must be >= 0"),
        ("preempt_grace_s", 0.0, "preempt_grace_s must be > 0"),
        ("master_port_base", 80, "master_port_base must be in"),
        ("job_name", "a b", "job_name must be"),
        ("mem_gb", -1.0, "mem_gb must be >= 0"),
        ("signal_delay_s", 3600, "signal_delay_s must be in"),
    ],
)
def test_submit_config_names_the_bad_key(key: str, value: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        SubmitConfig(**{key: value})  # type: ignore[arg-type]


def test_local_executor_is_single_node() -> None:
    with pytest.raises(ValueError, match="nodes must be 1 with the local executor"):
        SubmitConfig(executor="local", nodes=2)


def test_master_port_is_in_range_and_moves_on_requeue() -> None:
    settings = SubmitConfig(master_port_base=15000).job_settings()
    ports = {master_port_for(str(job), 0, 15000, settings.master_port_span) for job in range(500)}
    assert all(15000 <= p < 15000 + settings.master_port_span for p in ports)
    assert len(ports) > 450  # different jobs rarely share a port
    assert master_port_for("123", 0, 15000, 15000) == master_port_for("123", 0, 15000, 15000)
    assert master_port_for("123", 1, 15000, 15000) != master_port_for("123", 0, 15000, 15000)
    assert master_port_for("77_3", 0, 15000, 15000) != master_port_for("77_4", 0, 15000, 15000)


def test_rendezvous_address_of_a_multi_node_job_is_never_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from launch.jobs import job as job_module

    # The first node names itself 127.0.1.1 (Debian's /etc/hosts): SLURM's NodeAddr wins.
    monkeypatch.setattr(job_module.socket, "gethostbyname",
                        lambda name: {"node1": "127.0.1.1"}.get(name, name))
    monkeypatch.setattr(job_module, "_slurm_node_addr", lambda node: "10.1.2.3")
    assert job_module._master_addr("node1", multi_node=True) == "10.1.2.3"
    assert job_module._master_addr("node1", multi_node=False) == "127.0.1.1"


def test_node_address_is_the_source_address_toward_the_rendezvous_host() -> None:
    from launch.jobs.job import node_address

    assert node_address("127.0.0.1") == "127.0.0.1"


def test_slurm_executor_without_slurm_tools_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    cfg = SubmitConfig(executor="slurm", folder=str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="needs the SLURM client tools.*executor 'local'"):
        submit(TrainingJob(None, []), cfg)
    assert not list((tmp_path / "runs").iterdir()), "a refused job leaves no run folder"


def test_training_job_requeues_as_a_fresh_copy_holding_no_checkpoint_path(
    tmp_path: Path,
) -> None:
    config = tmp_path / "train.toml"
    config.write_text("")
    job = TrainingJob(str(config), ["train.steps=3"], JobSettings(max_requeues=5))
    delayed = job.checkpoint()
    fresh = delayed.function
    assert isinstance(fresh, TrainingJob) and fresh is not job
    assert (delayed.args, delayed.kwargs) == ((), {})
    assert fresh.config_path == str(config.resolve()) and fresh.overrides == ["train.steps=3"]
    assert (fresh.requeues, job.requeues) == (1, 0) and fresh.settings == job.settings
    # Everything the requeued job knows: a config, never where a checkpoint was.
    assert set(vars(fresh)) == {"settings", "requeues", "config_path", "overrides"}


def test_training_job_runs_the_runner_with_resume_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    import launch.runner

    calls = []

    def fake_run_training(config: str | None, overrides: list[str], resume: str) -> dict:
        calls.append((config, overrides, resume))
        return {"step": 3}

    monkeypatch.setattr(launch.runner, "run_training", fake_run_training)
    assert TrainingJob(None, ["a.b=1"])() == {"step": 3}  # outside submitit: just runs
    assert calls == [(None, ["a.b=1"], "auto")]


def _signal_tasks(scenario: Scenario) -> None:
    """What SLURM does on preemption/timeout: USR2 to every task."""
    for rank in range(2):
        record = read_progress(scenario.progress, rank)
        assert record is not None
        os.kill(record["pid"], signal.SIGUSR2)


@pytest.fixture(scope="module")
def local_runs(
    s3_url: str, tmp_path_factory: pytest.TempPathFactory, reference_run: Scenario
) -> dict[str, Scenario]:
    """Every local scenario, launched at once (task start-up dominates their cost)."""
    runs = {}
    for name, cfg_overrides, job_kwargs in [
        ("preempted", {}, {}),
        ("ignores_signal", {"preempt_grace_s": 1.0}, {"poll": False}),
        ("gives_up", {"max_requeues": 0}, {}),
    ]:
        folder = tmp_path_factory.mktemp(name)
        cfg = local_config(folder, **cfg_overrides)
        runs[name] = launch(
            s3_url, folder, cfg, interrupt_at=7, interrupt=_signal_tasks, step_s=0.2, **job_kwargs
        )
    return runs


def _assert_complete(results: list[dict], world: int = 2) -> None:
    assert [r["rank"] for r in results] == list(range(world))
    for r in results:
        assert r["step"] == STEPS
        assert r["history"] == list(range(1, STEPS + 1)), "a step was lost or applied twice"
        assert r["acc"] == expected_total(STEPS, world)
        assert r["preempted_at"] is None
        host, port = r["master"].split(":")
        assert host == "127.0.0.1" and 15000 <= int(port) < 30000


@pytest.mark.slow  # real submitit tasks: 10-45 s
@pytest.mark.timeout(200)
def test_local_executor_runs_the_distributed_job(reference_run: Scenario) -> None:
    run = reference_run.run
    assert run.executor == "local" and run.folder.is_dir()
    assert [p.name for p in run.stdout] == [f"{run.job_id}_{r}_log.out" for r in range(2)]
    results = reference_run.results()
    _assert_complete(results)
    for rank in range(2):
        executed = [e["step"] for e in executed_steps(reference_run.progress, rank)]
        assert executed == list(range(1, STEPS + 1))
    assert all(r["attempt"] == 0 and r["resumed_from"] == 0 for r in results)
    assert "task environment" in run.stderr[0].read_text()


@pytest.mark.slow  # the three share local_runs (all scenarios at once, ~50 s)
@pytest.mark.timeout(200)
def test_local_preemption_saves_requeues_and_resumes(
    local_runs: dict[str, Scenario], s3_url: str
) -> None:
    scenario = local_runs["preempted"]
    results = scenario.results()
    _assert_complete(results)
    stopped_at = results[0]["resumed_from"]
    assert scenario.interrupted_at is not None and stopped_at >= scenario.interrupted_at
    assert stopped_at in scenario.manifests(s3_url), "no checkpoint saved on the signal"
    for rank in range(2):
        steps = executed_steps(scenario.progress, rank)
        # Saved at the step the signal was seen: nothing is lost, nothing redone.
        assert [e["step"] for e in steps] == list(range(1, STEPS + 1))
        assert {e["attempt"] for e in steps if e["step"] <= stopped_at} == {0}
        assert {e["attempt"] for e in steps if e["step"] > stopped_at} == {1}
    assert all(r["attempt"] == 1 for r in results)
    assert "requeue 1: restarting the local tasks" in scenario.run.stderr[0].read_text()


@pytest.mark.slow  # the three share local_runs (all scenarios at once, ~50 s)
@pytest.mark.timeout(200)
def test_loop_ignoring_the_signal_is_requeued_after_the_grace_period(
    local_runs: dict[str, Scenario],
) -> None:
    scenario = local_runs["ignores_signal"]
    results = scenario.results()
    _assert_complete(results)
    resumed = results[0]["resumed_from"]
    assert resumed >= 5 and resumed % 5 == 0  # the newest periodic checkpoint
    steps = [e["step"] for e in executed_steps(scenario.progress, 0)]
    # Steps after that checkpoint ran twice, but the state applied each exactly once.
    assert sorted(set(steps)) == list(range(1, STEPS + 1))
    assert steps[-(STEPS - resumed) :] == list(range(resumed + 1, STEPS + 1))
    assert "did not acknowledge the preemption signal" in scenario.run.stderr[0].read_text()


@pytest.mark.slow  # the three share local_runs (all scenarios at once, ~50 s)
@pytest.mark.timeout(200)
def test_gives_up_after_max_requeues_with_the_checkpoint_saved(
    local_runs: dict[str, Scenario], s3_url: str
) -> None:
    scenario = local_runs["gives_up"]
    with pytest.raises(FailedJobError, match=r"max_requeues=0 reached, giving up"):
        scenario.results()
    last = read_progress(scenario.progress, 0)
    assert last is not None and last["step"] < STEPS
    assert scenario.manifests(s3_url)[-1] == last["step"], "state not saved on the signal"


@pytest.mark.slow  # real submitit tasks: 10-45 s
@pytest.mark.timeout(300)
def test_local_executor_runs_the_training_job(training_reference: TrainingScenario) -> None:
    """``obs submit --executor local``'s job: the real TrainingJob, 2 gloo ranks, S3 checkpoints."""
    run = training_reference.run
    assert run.executor == "local"
    results = training_reference.results(timeout_s=240.0)
    assert [int(r["rank"]) for r in results] == [0, 1]
    for r in results:
        assert r["step"] == TRAIN_STEPS and r["world_size"] == 2
        assert r["resumed_from"] == -1  # a fresh store: nothing to resume
        assert r["samples_total"] == TRAIN_STEPS * 2  # task.batch = 2 per rank and step
    final = training_reference.final_checkpoint()
    assert final["step"] == TRAIN_STEPS
    assert training_reference.checkpoint_steps()[-1] == TRAIN_STEPS
    metrics = json.loads((training_reference.out_dir / "metrics.json").read_text())
    assert metrics["step"] == TRAIN_STEPS and metrics["world_size"] == 2
    log = run.stderr[0].read_text()
    assert "task environment" in log and "'world_size': 2" in log


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sbatch_options": {"requeue": ""}}, "set by obs submit itself"),
        ({"sbatch_options": {"ntasks-per-node": "4"}}, "set by obs submit itself"),
        ({"sbatch_options": {"Bad Key": "1"}}, "long option name"),
        ({"mem": "16G", "mem_gb": 4.0}, "not both"),
        ({"mem": "lots"}, "mem must look like"),
        ({"gpus_per_node": -1}, "gpus_per_node must be >= 0"),
    ],
)
def test_submit_config_refuses_bad_slurm_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SubmitConfig(**kwargs)
