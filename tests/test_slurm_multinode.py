"""``obs submit --nodes 2 --tasks-per-node 2`` on a real multi-node SLURM cluster.

The cluster (``tests/support/multinode_cluster.py``) is three network namespaces of this
machine, ``obsnode1`` … ``obsnode3`` (10.77.0.11 …), each with its own hostname and
slurmd, on a bridge whose machine side (10.77.0.1) runs slurmctld, the S3 server (moto)
and Prometheus. The tests skip, saying why, only where that cannot run
(not root, binaries absent, network namespaces not permitted).

Two runs of the real training job (``TrainingJob``: ``run_training`` with
``resume="auto"``, gloo, DeepSpeed slow weights, sparse sync, both phases) of 2 nodes ×
2 tasks are submitted side by side: the reference, uninterrupted, serving metrics on its
nodes' addresses (``metrics.host = "node"``) with file_sd targets for Prometheus; and one
requeued with ``scontrol requeue`` mid-run after its first node was drained, so it comes
back on another node set; it must end with a final checkpoint bit-identical to the
reference's.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import time
import uuid
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


def job_nodes(job_id: str) -> list[str]:
    """The nodes SLURM gave ``job_id``, in order (``scontrol show hostnames``)."""
    node_list = one_node.SlurmCluster.job_fields(job_id)["NodeList"]
    done = subprocess.run(["scontrol", "show", "hostnames", node_list], capture_output=True,
                          text=True, check=True, timeout=30)
    return done.stdout.split()


DRAINED: dict[str, str] = {}  # job id -> the node drained before its requeue


def _drain_first_node_and_requeue(scenario: one_node.Scenario) -> None:
    """An operator takes the job's first node out and requeues the job.

    Every task on both nodes is killed with no chance to save; the job can only come
    back on another node set, where the rendezvous host is another node.
    """
    job_id = scenario.run.job_id
    first = job_nodes(job_id)[0]
    subprocess.run(["scontrol", "update", f"NodeName={first}", "State=DRAIN",
                    "Reason=obs-test-requeue-elsewhere"], check=True, timeout=30)
    DRAINED[job_id] = first
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)


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
            interrupt_at=INTERRUPT_AT, interrupt=_drain_first_node_and_requeue,
            # Eight training processes start at once on a few shared cores.
            interrupt_wait_s=480.0,
        ),
    }  # fmt: skip


def task_environments(log_text: str) -> list[dict[str, Any]]:
    """Every ``task environment: {…}`` a task logged (``DistributedJob``), one per attempt."""
    found = re.findall(r"task environment: (\{.*\})", log_text)
    assert found, "the task logged no environment"
    return [ast.literal_eval(text) for text in found]


def placement(run_stderr: list[Path], attempt: int) -> list[dict[str, Any]]:
    """Every rank's task environment in ``attempt`` (0: first start, 1: after a requeue)."""
    envs = []
    for rank, path in enumerate(run_stderr):
        mine = [e for e in task_environments(path.read_text()) if e["restart_count"] == attempt]
        assert mine, f"rank {rank} logged no environment for attempt {attempt}"
        envs.append(mine[-1])
    return envs


def assert_placed_on_two_nodes(envs: list[dict[str, Any]], nodes: dict[str, str]) -> list[str]:
    """Ranks 0-1 on one node, 2-3 on another, all meeting at the first one's bridge address.

    Not at the loopback address that the first node's own /etc/hosts gives its name,
    and gloo on the bridge interface. Returns the two node names.
    """
    hosts = [e["hostname"] for e in envs]
    assert hosts[0] == hosts[1] != hosts[2] == hosts[3], hosts
    for rank, env in enumerate(envs):
        assert env["rank"] == rank and env["world_size"] == WORLD
        assert env["node_addr"] == nodes[env["hostname"]], env
        assert env["master_addr"] == nodes[hosts[0]], env
        assert env["gloo_interface"] == "eth0", env
    return [hosts[0], hosts[2]]


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
    # Both attempts ran where SLURM put them, on two nodes each; the first node was
    # drained before the requeue, so the second attempt ran on another node set and
    # met at another rendezvous address.
    nodes = multinode_cluster.nodes
    before = assert_placed_on_two_nodes(placement(scenario.run.stderr, 0), nodes)
    after = assert_placed_on_two_nodes(placement(scenario.run.stderr, 1), nodes)
    drained = DRAINED[scenario.run.job_id]
    assert drained == before[0] and drained not in after, (before, after)
    assert f"resumed from the checkpoint of step {resumed}" in scenario.run.stderr[0].read_text()
    subprocess.run(["scontrol", "update", f"NodeName={drained}", "State=RESUME"], check=True,
                   timeout=30)


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
    reference = two_node_runs["reference"].run
    envs = placement(reference.stderr, 0)
    assert_placed_on_two_nodes(envs, multinode_cluster.nodes)
    by_rank = {int(s["rank"]): s for s in series}
    assert sorted(by_rank) == list(range(WORLD))
    for rank, labels in by_rank.items():
        # The target came from the rank's own file_sd entry: its node's bridge address.
        assert labels["instance"].rsplit(":", 1)[0] == envs[rank]["node_addr"], labels
        assert labels["slurm_job_id"] == reference.job_id, labels
    assert len({s["instance"].rsplit(":", 1)[0] for s in series}) == 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_obs_submit_two_nodes_two_tasks_trains_across_both_nodes(
    multinode_cluster: MultiNodeCluster,
    bridge_s3_url: str,
    s3_job_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = f"cli-{uuid.uuid4().hex[:12]}"
    one_node.s3_client(bridge_s3_url).create_bucket(Bucket=bucket)
    argv = ["submit", "--nodes", "2", "--tasks-per-node", "2", "--partition", "multi",
            "--time", "10", "--folder", str(tmp_path / "runs"), "--wait"]
    sets = [*one_node.TRAIN_SETS, "train.steps=6", "checkpoint.every=3",
            f"checkpoint.url=s3://{bucket}/run", f"checkpoint.endpoint_url={bridge_s3_url}",
            f"out_dir={tmp_path / 'out'}"]
    for item in sets:
        argv += ["--set", item]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["world_size"] == WORLD and result["step"] == 6, result
    job_id = out.split()[2]
    # Results are written just before the tasks exit: the job then ends COMPLETED.
    assert _final_fields(job_id).get("JobState") == "COMPLETED"
    folder = Path(out.splitlines()[1].removeprefix("job folder: "))
    logs = sorted(folder.glob("*_log.err"))
    assert len(logs) == WORLD
    assert_placed_on_two_nodes(placement(sorted(logs, key=_task_index), 0),
                               multinode_cluster.nodes)


def _task_index(path: Path) -> int:
    """Task number of a submitit log ``<job>_<task>_log.err``."""
    return int(path.name.split("_")[1])


@pytest.mark.slow  # starts the namespace cluster (~10 s); tests/test_shared_storage.py is fast
def test_multi_node_job_with_a_node_local_checkpoint_dir_is_refused_before_sbatch(
    multinode_cluster: MultiNodeCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = one_node.queued_jobs()
    argv = ["submit", "--nodes", "2", "--tasks-per-node", "2", "--partition", "multi",
            "--folder", str(tmp_path / "runs"), "--set", f"checkpoint.url={tmp_path / 'ckpt'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoint.url" in err and "2 nodes" in err and "checkpoint.shared" in err, err
    assert one_node.queued_jobs() == before and not (tmp_path / "runs").exists()
