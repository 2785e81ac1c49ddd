"""``obs submit --nodes 2 --tasks-per-node 2`` on a real two-node SLURM cluster.

The cluster (``tests/support/multinode_cluster.py``) is two network namespaces of this
machine, ``obsnode1`` (10.77.0.11) and ``obsnode2`` (10.77.0.12), each with its own
hostname and slurmd, on a bridge whose machine side (10.77.0.1) runs slurmctld, the S3
server (moto) and Prometheus. The tests skip, saying why, only where that cannot run
(not root, binaries absent, network namespaces not permitted).

Two runs of the real training job (``TrainingJob``: ``run_training`` with
``resume="auto"``, gloo, DeepSpeed slow weights, sparse sync, both phases) of 2 nodes ×
2 tasks are submitted side by side: the reference, uninterrupted, serving metrics on its
nodes' addresses (``metrics.host = "node"``) with file_sd targets for Prometheus; and one
requeued with ``scontrol requeue`` mid-run, which must end with a final checkpoint
bit-identical to the reference's.
"""

from __future__ import annotations

import ast
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import slurm_cluster as one_node
from support.multinode_cluster import MultiNodeCluster
from support.prom_server import PrometheusServer, shipped_config, wait_for

from launch import cli
from launch.jobs.submit import SubmitConfig

TrainingScenario = one_node.TrainingScenario
TRAIN_STEPS = one_node.TRAIN_STEPS
TRAIN_CKPT_EVERY = one_node.TRAIN_CKPT_EVERY
INTERRUPT_AT = 2 * TRAIN_CKPT_EVERY
WORLD = 4
METRICS_JOB = "obs-multinode"
SCRAPE_INTERVAL_S = 1.0


def _two_node_config(folder: Path) -> SubmitConfig:
    return SubmitConfig(
        executor="slurm", folder=str(folder / "runs"), partition="multi", nodes=2,
        tasks_per_node=2, time_min=15, max_requeues=2,
    )  # fmt: skip


def _hard_requeue(scenario: one_node.Scenario) -> None:
    """An operator's requeue: every task on both nodes is killed with no chance to save."""
    subprocess.run(["scontrol", "requeue", scenario.run.job_id], check=True, timeout=30)


@pytest.fixture(scope="module")
def prometheus(
    multinode_cluster: MultiNodeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """The shipped Prometheus config, its file_sd directory empty until the job writes it."""
    workdir = tmp_path_factory.mktemp("prometheus")
    (workdir / "obs-targets").mkdir()
    try:
        server = PrometheusServer(shipped_config(workdir, SCRAPE_INTERVAL_S), workdir)
    except RuntimeError as exc:
        pytest.skip(f"no Prometheus here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def two_node_runs(
    multinode_cluster: MultiNodeCluster,
    bridge_s3_url: str,
    s3_job_env: dict[str, str],
    prometheus: PrometheusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, TrainingScenario]:
    """The uninterrupted 2 × 2 reference and the requeued 2 × 2 run, submitted at once."""
    reference = tmp_path_factory.mktemp("reference-2x2")
    requeued = tmp_path_factory.mktemp("requeued-2x2")
    file_sd_dir = Path(prometheus.log_path).parent / "obs-targets"
    metrics = ("metrics.enabled=true", "metrics.host=node", "metrics.base_port=0",
               f"metrics.job={METRICS_JOB}", f"metrics.file_sd_dir={file_sd_dir}")
    return {
        "reference": one_node.launch_training(
            bridge_s3_url, reference, _two_node_config(reference), extra_sets=metrics,
        ),
        "requeued": one_node.launch_training(
            bridge_s3_url, requeued, _two_node_config(requeued),
            interrupt_at=INTERRUPT_AT, interrupt=_hard_requeue,
        ),
    }  # fmt: skip


def task_environment(log_text: str) -> dict[str, Any]:
    """The first ``task environment: {…}`` a task logged (``DistributedJob``)."""
    found = re.search(r"task environment: (\{.*\})", log_text)
    assert found, "the task logged no environment"
    env: dict[str, Any] = ast.literal_eval(found.group(1))
    return env


def _final_fields(job_id: str, timeout_s: float = 30.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    fields = one_node.SlurmCluster.job_fields(job_id)
    while fields.get("JobState") in {"RUNNING", "COMPLETING"} and time.monotonic() < deadline:
        time.sleep(0.2)
        fields = one_node.SlurmCluster.job_fields(job_id)
    return fields


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_requeued_two_node_job_matches_an_uninterrupted_two_node_run(
    multinode_cluster: MultiNodeCluster, two_node_runs: dict[str, TrainingScenario]
) -> None:
    scenario, reference = two_node_runs["requeued"], two_node_runs["reference"]
    results = scenario.results(timeout_s=720.0)
    want = reference.results(timeout_s=300.0)
    assert [int(r["rank"]) for r in results] == list(range(WORLD))
    for got, ref in zip(results, want, strict=True):
        assert got["step"] == ref["step"] == TRAIN_STEPS
        assert got["world_size"] == WORLD
        assert got["samples_total"] == ref["samples_total"]
        assert got["committed_entries_total"] == ref["committed_entries_total"]
        # Both phases ran, and the sparse sync crossed the nodes.
        assert got["scheduler_decisions_total.parallel"] > 0
        assert got["scheduler_decisions_total.sequential"] > 0
        assert got["sync_calls_total"] > 0
    resumed = int(results[0]["resumed_from"])
    assert scenario.interrupted_at is not None
    assert resumed % TRAIN_CKPT_EVERY == 0 and scenario.interrupted_at <= resumed < TRAIN_STEPS
    final = scenario.final_checkpoint(world=WORLD)
    assert final["step"] == TRAIN_STEPS
    one_node.assert_identical(final, reference.final_checkpoint(world=WORLD))
    fields = _final_fields(scenario.run.job_id)
    assert (fields.get("JobState"), fields.get("Restarts")) == ("COMPLETED", "1"), fields
    # Every rank ran where SLURM put it: ranks 0-1 on obsnode1, 2-3 on obsnode2, and
    # all of them met at obsnode1's bridge address, not at the loopback address that
    # obsnode1's own /etc/hosts gives its name.
    first = multinode_cluster.nodes["obsnode1"]
    for rank, stderr in enumerate(scenario.run.stderr):
        text = stderr.read_text()
        env = task_environment(text)
        node = "obsnode1" if rank < 2 else "obsnode2"
        assert env["rank"] == rank and env["world_size"] == WORLD
        assert env["hostname"] == node
        assert env["node_addr"] == multinode_cluster.nodes[node]
        assert env["master_addr"] == first
        # Each node's own name is 127.0.1.1 there (as on Debian): gloo must not use it.
        assert env["gloo_interface"] == "eth0"
    assert f"resumed from the checkpoint of step {resumed}" in scenario.run.stderr[0].read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_prometheus_scrapes_all_four_ranks_on_both_nodes_through_the_jobs_file_sd(
    multinode_cluster: MultiNodeCluster,
    prometheus: PrometheusServer,
    two_node_runs: dict[str, TrainingScenario],
) -> None:
    def four_ranks_up() -> list[dict[str, str]] | None:
        series = [s for s in prometheus.series(f'obs_run_info{{job="{METRICS_JOB}"}}')]
        return series if len({s["rank"] for s in series}) == WORLD else None

    series = wait_for("all four ranks scraped", four_ranks_up, timeout_s=600.0, every_s=1.0)
    job_id = two_node_runs["reference"].run.job_id
    by_rank = {int(s["rank"]): s for s in series}
    assert sorted(by_rank) == list(range(WORLD))
    for rank, labels in by_rank.items():
        host = labels["instance"].rsplit(":", 1)[0]
        node = "obsnode1" if rank < 2 else "obsnode2"
        # The target came from the rank's own file_sd entry: its node's address.
        assert host == multinode_cluster.nodes[node], labels
        assert labels["slurm_job_id"] == job_id, labels
    assert {s["instance"].rsplit(":", 1)[0] for s in series} == set(
        multinode_cluster.nodes.values()
    )


@pytest.mark.slow  # starts the namespace cluster (~10 s); tests/test_shared_storage.py is fast
def test_multi_node_job_with_a_node_local_checkpoint_dir_is_refused_before_sbatch(
    multinode_cluster: MultiNodeCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def jobs() -> str:
        return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    before = jobs()
    argv = ["submit", "--nodes", "2", "--tasks-per-node", "2", "--partition", "multi",
            "--folder", str(tmp_path / "runs"), "--set", f"checkpoint.url={tmp_path / 'ckpt'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoint.url" in err and "2 nodes" in err and "checkpoint.shared" in err, err
    assert jobs() == before and not (tmp_path / "runs").exists()
