"""End to end: a 2-rank job scraped by a real Prometheus, queried like Grafana does.

The Debian ``prometheus`` binary runs on 127.0.0.1 with the shipped scrape
configuration (honor_labels, file-based discovery) and the shipped alert rules.
The ranks register through :func:`monitoring.file_sd.write_file_sd_targets`,
exactly as a SLURM job does. The test then reads both ranks' samples/s back
through ``/api/v1/query`` and evaluates every PromQL expression of the Grafana
dashboard through the same API.

The job is a real one, started by :func:`launch_two_ranks`: ``obs train --nproc 2``
with ``metrics.enabled=true`` on a tiny config that reports every step, evaluates,
checkpoints and checks its replicas, and runs until the module is done with it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.prom_server import (
    DASHBOARD,
    REPO,
    PrometheusServer,
    dashboard_queries,
    dashboard_variable_queries,
    free_port_run,
    shipped_config,
    substitute_variables,
    wait_for,
)

from monitoring.file_sd import write_file_sd_targets

# Every test here reads the real 2-rank job and Prometheus of one module fixture: slow.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus binary (Debian package prometheus) not installed",
)]

JOB = "obs-e2e"
SCRAPE_INTERVAL_S = 1.0
# Grafana's $__rate_interval is max(4 x scrape interval, $__interval + scrape interval).
GRAFANA_VALUES = {
    "job": JOB,
    "node": ".*",  # "All" of a multi-value variable with allValue ".*"
    "rank": ".*",
    "__rate_interval": f"{4 * SCRAPE_INTERVAL_S:g}s",
    "__interval": f"{SCRAPE_INTERVAL_S:g}s",
    "__range": "5m",
}


# A small, fast training job (tests/test_checkpoint_resume.py's TINY model) that runs
# until the fixture stops it: far more steps than the module needs, a metrics report
# every step, and every optional family fed (evaluation, state moments, replica
# checks, checkpoints), so the dashboard has data to show.
TRAIN_SETS = [
    "state.nodes=96", "state.partitions=3", "model.d_model=16", "model.writer.k_max=4",
    "model.writer.active=8", "model.writer.key_dim=16", "task.vocab=16", "task.seq_len=6",
    "task.pairs=2", "task.batch=2", "task.commit=true", "train.progress=false",
    "train.warmup=2", "train.steps=1000000", "train.log_every=1", "train.eval_every=20",
    "train.eval_batches=1", "train.moments_every=5", "sync.check_every=5",
    "checkpoint.every=50", "scheduler.weight_cost=0.0",
    # The job settles into one phase within seconds, often before Prometheus's first
    # scrape; probes keep the phase changing for the phase-change annotation.
    "scheduler.min_windows=20", "scheduler.max_windows=40",
    # OBS_TEST_SETS="state.layout=sharded" runs the same tests in another configuration.
    *os.environ.get("OBS_TEST_SETS", "").split(),
]  # fmt: skip


def launch_two_ranks(base_port: int, job: str, workdir: Path) -> list[subprocess.Popen[bytes]]:
    """Start a real 2-rank training job whose ranks serve metrics on ``base_port`` (+1).

    One ``obs train --nproc 2`` process (it spawns the two gloo ranks) with
    ``metrics.enabled=true``, ``metrics.base_port=<base_port>`` and
    ``metrics.job=<job>``; it trains for far longer than the module needs and is
    stopped by :func:`stop_processes`. Both ranks log to ``workdir/rank0.log``.
    """
    sets = [*TRAIN_SETS, "metrics.enabled=true", f"metrics.base_port={base_port}",
            f"metrics.job={job}", f"checkpoint.url={workdir / 'ckpt'}",
            f"out_dir={workdir / 'out'}"]  # fmt: skip
    argv = [sys.executable, "-m", "launch.cli", "train", "--nproc", "2", "--resume", "never"]
    for item in sets:
        argv += ["--set", item]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    log = (workdir / "rank0.log").open("wb")
    # A session of its own, so that stop_processes reaches the launcher and both ranks.
    return [subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)]


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each launched process group (a launcher may fork), then SIGKILL stragglers."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prometheus_with_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    workdir = tmp_path_factory.mktemp("prometheus")
    base_port = free_port_run(2)
    write_file_sd_targets(
        workdir / "obs-targets" / "e2e.json",
        [("127.0.0.1", base_port), ("127.0.0.1", base_port + 1)],
        {"slurm_job_id": "e2e"},
    )
    procs = launch_two_ranks(base_port, JOB, workdir)
    try:
        server = PrometheusServer(shipped_config(workdir, SCRAPE_INTERVAL_S), workdir)
        try:
            yield server
        finally:
            server.stop()
    finally:
        stop_processes(procs)
        for log in sorted(workdir.glob("rank*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")


def instant(server: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    response = server.query(expr)
    assert response["status"] == "success", f"{expr!r}: {response}"
    result: list[dict[str, Any]] = response["data"]["result"]
    return result


def test_samples_per_second_of_both_ranks_through_prometheus(
    prometheus_with_job: PrometheusServer,
) -> None:
    server = prometheus_with_job

    def both_ranks() -> dict[str, dict[str, Any]] | None:
        rows = instant(server, f'obs_samples_per_second{{job="{JOB}"}}')
        by_rank = {row["metric"]["rank"]: row for row in rows}
        return by_rank if set(by_rank) == {"0", "1"} else None

    by_rank = wait_for("samples/s of ranks 0 and 1 in Prometheus", both_ranks, timeout_s=90.0)
    for rank, row in by_rank.items():
        value = float(row["value"][1])
        assert math.isfinite(value) and value > 0.0, (rank, value)  # a rank that trains
        labels = row["metric"]
        assert labels["job"] == JOB, "honor_labels must keep the exporter's job label"
        assert labels["node"], labels
        assert labels["slurm_job_id"] == "e2e", "file_sd labels must reach the series"
    # Counters set from the trainer's totals grow between scrapes.
    growing = f'increase(obs_samples_total{{job="{JOB}"}}[5s]) > 0'
    rows = wait_for("obs_samples_total to grow", lambda: instant(server, growing) or None,
                    timeout_s=15.0)
    assert {row["metric"]["rank"] for row in rows} <= {"0", "1"}
    targets = server.api("targets", {"state": "active"})["data"]["activeTargets"]
    assert sorted(t["health"] for t in targets) == ["up", "up"], targets


def test_every_dashboard_expression_evaluates_in_prometheus(
    prometheus_with_job: PrometheusServer,
) -> None:
    server = prometheus_with_job
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(where, substitute_variables(expr, GRAFANA_VALUES))
               for where, expr in dashboard_queries(dashboard)]
    assert len(queries) >= 30
    # Every expression must be accepted by Prometheus (a parse or type error
    # is deterministic, so the first evaluation decides).
    for where, expr in queries:
        response = server.query_range(expr, seconds=60.0, step_s=SCRAPE_INTERVAL_S)
        assert response["status"] == "success", f"{where}: {expr}\n{response}"
        response = server.query(expr)
        assert response["status"] == "success", f"{where}: {expr}\n{response}"

    # And every one must show data once the ranks have run for a few seconds: a
    # typo in a metric or label name is valid PromQL that returns nothing. The
    # data-pipeline panels (obs_data_*) are the exception: only an audio-visual
    # (`task.name = "av"`) run has a shard loader, and a clean one no data errors.
    with_data = [(where, expr) for where, expr in queries if "obs_data_" not in expr]
    assert len(queries) - len(with_data) <= 6, "only the data-pipeline panels may be empty"

    # Over the dashboard's whole range (Grafana's $__range, 5 min), as the dashboard
    # shows them. The phase-change annotation has points only where the scheduler
    # switched: the job's max_windows probes (TRAIN_SETS) make sure it does.
    def empty_queries() -> list[tuple[str, str]]:
        return [(where, expr) for where, expr in with_data
                if not server.query_range(expr, seconds=300.0)["data"]["result"]]

    try:
        wait_for("every dashboard query to return data", lambda: not empty_queries() or None,
                 timeout_s=30.0)
    except TimeoutError:
        pytest.fail(f"dashboard queries without data: {empty_queries()}")


def test_dashboard_variables_resolve_to_the_job_ranks_and_node(
    prometheus_with_job: PrometheusServer,
) -> None:
    server = prometheus_with_job
    dashboard = json.loads(DASHBOARD.read_text())
    resolved: dict[str, set[str]] = {}
    for name, selector, label in dashboard_variable_queries(dashboard):
        match = substitute_variables(selector or "{__name__=~'obs_.+'}", GRAFANA_VALUES)
        resolved[name] = {series[label] for series in server.series(match) if label in series}
    assert JOB in resolved["job"]
    assert resolved["rank"] == {"0", "1"}
    assert len(resolved["node"]) == 1


def test_alert_rules_load_and_stay_quiet_for_a_healthy_job(
    prometheus_with_job: PrometheusServer,
) -> None:

    server = prometheus_with_job
    wait_for("both ranks scraped", lambda: len(instant(
        server, f'obs_step{{job="{JOB}"}}')) == 2 or None, timeout_s=90.0)

    def evaluated_rules() -> list[dict[str, Any]] | None:
        groups = server.api("rules", {"type": "alert"})["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # Go's zero time (year 1) marks a rule that was never evaluated.
        done = rules and not any(r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done else None

    rules = wait_for("alert rules to be evaluated", evaluated_rules, timeout_s=15.0)
    assert len(rules) == 6
    for rule in rules:
        assert rule["health"] == "ok", rule

    def no_alerts() -> bool | None:
        alerts = server.api("alerts", {})["data"]["alerts"]
        return True if not alerts else None

    try:
        wait_for("no pending or firing alert", no_alerts, timeout_s=10.0)
    except TimeoutError:
        pytest.fail(f"alerts for a healthy job: {server.api('alerts', {})['data']['alerts']}")
