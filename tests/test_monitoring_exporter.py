"""Tests of the per-rank Prometheus exporter (monitoring/exporter.py) over real HTTP."""

from __future__ import annotations

import logging
import math
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.prom_server import PushgatewayServer, free_port_run, http_get, wait_for

from monitoring.exporter import MetricsConfig, PrometheusSink, start_sink_for_current_process
from monitoring.metric_catalog import CATALOG, exported_names
from monitoring.synthetic_ranks import DATA_ERROR_KINDS, synthetic_metrics

PROMTOOL = shutil.which("promtool")
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")


def scrape(sink: PrometheusSink) -> str:
    status, body = http_get(sink.url)
    assert status == 200, body
    return body.decode()


def samples_by_name(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


@pytest.fixture
def sink() -> Iterator[PrometheusSink]:
    s = PrometheusSink(MetricsConfig(base_port=0, job="unit"), rank=3, local_rank=0, node="n7")
    yield s
    s.close()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"base_port": 70000}, "metrics.base_port"),
        ({"base_port": -1}, "metrics.base_port"),
        ({"base_port": True}, "metrics.base_port"),
        ({"host": " "}, "metrics.host"),
        ({"job": ""}, "metrics.job"),
        ({"pushgateway": "http://a b"}, "metrics.pushgateway"),
        ({"pushgateway_keep_s": -1.0}, "metrics.pushgateway_keep_s"),
        ({"pushgateway_keep_s": math.inf}, "metrics.pushgateway_keep_s"),
        ({"enabled": "yes"}, "metrics.enabled"),
    ],
)
def test_config_rejects_bad_values_naming_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        MetricsConfig(**kwargs)  # type: ignore[arg-type]


def test_every_contract_key_is_exported_with_job_rank_node(sink: PrometheusSink) -> None:
    metrics = synthetic_metrics(rank=3, step=120, elapsed_s=10.0, now=1.7e9)
    sink(metrics, step=120)
    samples = samples_by_name(scrape(sink))
    for spec in CATALOG:
        assert spec.name in samples, f"{spec.key} -> {spec.name} missing from the exposition"
    for name, rows in samples.items():
        if name.startswith("process_") or name in ("obs_build_info", "obs_run_info"):
            continue  # the process's own metrics and the info metrics carry their own labels
        assert name.startswith("obs_"), name
        for labels, _ in rows:
            assert (labels["job"], labels["rank"], labels["node"]) == ("unit", "3", "n7"), name
    # Totals become counters whose value is the total itself.
    assert samples["obs_samples_total"][0][1] == pytest.approx(metrics["samples_total"])
    assert samples["obs_samples_per_second"][0][1] == pytest.approx(metrics["samples_per_s"])
    assert samples["obs_checkpoint_age_seconds"][0][1] == pytest.approx(metrics["ckpt_age_s"])
    assert samples["obs_step"][0][1] == 120.0
    kinds = {labels["kind"]: v for labels, v in samples["obs_data_errors_total"]}
    assert set(kinds) == set(DATA_ERROR_KINDS)
    assert kinds["corrupt_video"] == metrics["data_errors_total.corrupt_video"]
    phases = {labels["phase"]: v for labels, v in samples["obs_scheduler_decisions_total"]}
    assert phases == {"parallel": 60.0, "sequential": 60.0}


def test_values_follow_the_latest_call(sink: PrometheusSink) -> None:
    sink({"loss": 2.0, "samples_total": 10.0}, step=1)
    sink({"loss": 1.0, "samples_total": 25.0}, step=2)
    samples = samples_by_name(scrape(sink))
    assert samples["obs_loss"][0][1] == 1.0
    assert samples["obs_samples_total"][0][1] == 25.0
    assert samples["obs_step"][0][1] == 2.0


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_check_metrics_accepts_a_scraped_exposition(sink: PrometheusSink) -> None:
    sink(synthetic_metrics(rank=3, step=7, elapsed_s=1.0, now=time.time()), step=7)
    sink({"loss": math.nan, "grad-norm": 1.5, "extra_total": 4.0}, step=8)
    exposition = scrape(sink)
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


def test_unknown_keys_are_exported_generically_and_warned_once(
    sink: PrometheusSink, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="monitoring.collector"):
        for step in range(3):
            sink({"Grad-Norm": 0.5 + step, "retries_total": float(step), "!!": 1.0}, step=step)
            sink({"samples_per_second": 1.0, "grad.norm": 9.0, "retries": 1.0}, step=step)
            sink({"samples": 5.0}, step=step)  # family obs_samples is the catalogue counter
    samples = samples_by_name(scrape(sink))
    assert samples["obs_grad_norm"][0][1] == 2.5  # "grad.norm" collides with it: ignored
    assert samples["obs_retries_total"][0][1] == 2.0
    text = scrape(sink)
    assert "# TYPE obs_retries_total counter" in text
    assert "# TYPE obs_grad_norm gauge" in text
    # A key that would shadow a catalogue metric is ignored, not exported twice.
    assert "obs_samples_per_second" not in samples
    warnings = [r.getMessage() for r in caplog.records]
    assert "obs_retries" not in samples and "obs_samples" not in samples
    for key in ("Grad-Norm", "retries_total", "!!", "samples_per_second", "grad.norm", "retries",
                "samples"):
        assert sum(repr(key) in w for w in warnings) == 1, (key, warnings)


def test_non_finite_values_are_exported(sink: PrometheusSink) -> None:
    sink({"loss": math.nan, "state_kurtosis": math.inf}, step=1)
    samples = samples_by_name(scrape(sink))
    assert math.isnan(samples["obs_loss"][0][1])
    assert samples["obs_state_kurtosis"][0][1] == math.inf


@pytest.mark.parametrize("bad", ["1.0", None, [1.0], b"2"])
def test_non_numeric_value_is_a_value_error_naming_the_key(
    sink: PrometheusSink, bad: object
) -> None:
    with pytest.raises(ValueError, match="'loss'"):
        sink({"loss": bad}, step=1)  # type: ignore[dict-item]


def test_port_is_base_port_plus_local_rank_and_registries_are_private() -> None:
    base = free_port_run(2)
    cfg = MetricsConfig(base_port=base, job="pair")
    first = PrometheusSink(cfg, rank=0, local_rank=0, node="a")
    second = PrometheusSink(cfg, rank=1, local_rank=1, node="a")
    try:
        assert (first.port, second.port) == (base, base + 1)
        first({"loss": 1.0}, step=1)
        second({"loss": 2.0}, step=1)
        assert samples_by_name(scrape(first))["obs_loss"][0][0]["rank"] == "0"
        assert samples_by_name(scrape(second))["obs_loss"][0] == (
            {"job": "pair", "rank": "1", "node": "a"},
            2.0,
        )
        global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
        assert "obs_loss" not in global_text
    finally:
        first.close()
        second.close()


def test_close_stops_serving_and_is_idempotent() -> None:
    s = PrometheusSink(MetricsConfig(base_port=0), rank=0, local_rank=0, node="n")
    s({"loss": 1.0}, step=1)
    assert "obs_loss" in scrape(s)
    s.close()
    s.close()
    assert s.closed
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        http_get(s.url, timeout_s=2.0)


def test_host_node_binds_the_nodes_address_and_names_it_in_file_sd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBS_NODE_ADDR", "127.0.0.1")  # what obs submit's task exports
    cfg = MetricsConfig(base_port=0, host="node", file_sd_dir=str(tmp_path), job="j")
    s = PrometheusSink(cfg, rank=3, local_rank=1, node="n")
    try:
        assert s.host == "127.0.0.1" and s.url == f"http://127.0.0.1:{s.port}/metrics"
        assert f'"127.0.0.1:{s.port}"' in (tmp_path / "j-rank3.json").read_text()
    finally:
        s.close()


def test_node_bind_address_follows_the_route_to_master_addr() -> None:
    from monitoring.exporter import node_bind_address

    assert node_bind_address({"OBS_NODE_ADDR": "10.9.8.7"}) == "10.9.8.7"
    assert node_bind_address({"MASTER_ADDR": "127.0.0.1"}) == "127.0.0.1"


def test_busy_port_error_names_the_port() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{busy}.*base_port {busy}"):
            PrometheusSink(MetricsConfig(base_port=busy), rank=0, local_rank=0)


def test_port_overflow_and_bad_rank_are_value_errors() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        PrometheusSink(MetricsConfig(base_port=65535), rank=0, local_rank=1)
    with pytest.raises(ValueError, match="rank"):
        PrometheusSink(MetricsConfig(base_port=0), rank=-1, local_rank=0)


def test_start_sink_for_current_process_reads_rank_from_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    base = free_port_run(2)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu-node-3")
    with pytest.raises(ValueError, match="metrics.enabled"):
        start_sink_for_current_process(MetricsConfig(base_port=base))
    s = start_sink_for_current_process(MetricsConfig(enabled=True, base_port=base, job="env"))
    try:
        assert s.port == base + 1
        s({"loss": 0.5}, step=3)
        labels, _ = samples_by_name(scrape(s))["obs_loss"][0]
        assert labels == {"job": "env", "rank": "5", "node": "gpu-node-3"}
    finally:
        s.close()


def test_catalogue_names_are_prefixed_unique_and_counters_end_in_total() -> None:
    names = [spec.name for spec in CATALOG]
    assert len(names) == len(set(names)) == len(exported_names())
    for spec in CATALOG:
        assert spec.name.startswith("obs_")
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec


@pytest.mark.skipif(PUSHGATEWAY is None, reason="prometheus-pushgateway (Debian) not installed")
def test_close_pushes_to_pushgateway_then_deletes(tmp_path: Path) -> None:
    gateway = PushgatewayServer(tmp_path)
    try:
        cfg = MetricsConfig(base_port=0, job="pushjob", pushgateway=gateway.url,
                            pushgateway_keep_s=2.0)
        s = PrometheusSink(cfg, rank=1, local_rank=0, node="n1")
        s({"samples_per_s": 123.0, "data_errors_total.bad_json": 2.0}, step=9)
        closer = threading.Thread(target=s.close)
        closer.start()
        wanted = {"job": "pushjob", "node": "n1", "rank": "1"}

        def pushed() -> float | None:
            samples = samples_by_name(gateway.metrics_text()).get("obs_samples_per_second", [])
            hits = [v for labels, v in samples if wanted.items() <= labels.items()]
            return hits[0] if hits else None

        value = wait_for("the pushed series on the Pushgateway", pushed, timeout_s=5.0, every_s=0.1)
        assert value == 123.0
        assert closer.is_alive(), "close() must keep the values there for pushgateway_keep_s"
        closer.join(timeout=15.0)
        assert not closer.is_alive()
        assert pushed() is None, "close() must delete its group from the Pushgateway"
        assert s.closed
    finally:
        gateway.stop()


def test_process_metrics_and_info_metrics_are_exposed(sink: PrometheusSink) -> None:
    sink({"loss": 1.0}, step=1)
    samples = samples_by_name(scrape(sink))
    assert samples["process_resident_memory_bytes"][0][1] > 0
    assert "process_cpu_seconds_total" in samples
    (build_labels, one), = samples["obs_build_info"]
    assert one == 1.0 and set(build_labels) == {"version", "python", "torch"}
    (run_labels, _), = samples["obs_run_info"]
    assert (run_labels["job"], run_labels["rank"], run_labels["node"]) == ("unit", "3", "n7")


def test_a_generic_gauge_never_takes_a_summary_suffix(sink: PrometheusSink) -> None:
    sink({"foo_count": 1.0, "bar_sum": 2.0}, step=1)
    samples = samples_by_name(scrape(sink))
    assert "obs_foo_count_value" in samples and "obs_bar_sum_value" in samples


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian package prometheus) not installed")
def test_live_scrape_passes_promtool_check_metrics(sink: PrometheusSink) -> None:
    # Every key the trainer reports (the contract) plus an unknown one, then lint.
    sink({**synthetic_metrics(rank=3, step=120, elapsed_s=10.0, now=1.7e9),
          "some_new_key": 1.0}, step=120)
    done = subprocess.run(["promtool", "check", "metrics"], input=scrape(sink),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        done.stdout + done.stderr)


def test_each_rank_registers_its_endpoint_for_file_sd_while_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cfg = MetricsConfig(base_port=0, job="sdjob", host="0.0.0.0",
                        file_sd_dir=str(tmp_path / "targets"))
    s = PrometheusSink(cfg, rank=2, local_rank=0, node="n1")
    path = tmp_path / "targets" / "sdjob-rank2.json"
    try:
        assert s.file_sd_path == path
        (group,) = json.loads(path.read_text())
        assert group["targets"] == [f"{socket.getfqdn()}:{s.port}"]
        assert group["labels"] == {"slurm_job_id": "4242"}
    finally:
        s.close()
    assert not path.exists()  # a finished rank is no longer scraped


def test_exporter_binds_loopback_by_default(sink: PrometheusSink) -> None:
    assert MetricsConfig().host == "127.0.0.1"
    assert sink._server is not None
    assert sink._server.server_address[0] == "127.0.0.1"  # not 0.0.0.0: nothing exposed
    assert sink.url.startswith("http://127.0.0.1:")
