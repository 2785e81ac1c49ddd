"""Static checks of monitoring/: promtool on config and rules, the dashboard, file_sd."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.prom_server import (
    DASHBOARD,
    PROMETHEUS_DIR,
    dashboard_queries,
    dashboard_variable_queries,
    substitute_variables,
)

from monitoring import file_sd
from monitoring.file_sd import remove_file_sd_targets, slurm_node_targets, write_file_sd_targets
from monitoring.metric_catalog import exported_names

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool (Debian package prometheus) not installed"
)

# What each dashboard section must show (DESIGN §7 / issue #7) -> a title fragment.
REQUIRED_SECTIONS = (
    "Throughput",
    "Loss",
    "Phase timeline",
    "Sync",
    "State",
    "Data errors",
    "Checkpoint age",
    "Per-rank",
)
METRIC_NAME = re.compile(r"\bobs_[a-z0-9_]+\b")


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@needs_promtool
def test_promtool_check_config_passes() -> None:
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_promtool_check_rules_passes() -> None:
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


@needs_promtool
def test_promtool_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_rule_unit_tests_fail_when_a_threshold_is_broken(tmp_path: Path) -> None:
    # The unit tests must be able to fail: loosen one threshold and they do.
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    rules = (tmp_path / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(rules.replace("> 3600", "> 36000"))
    done = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode != 0
    assert "ObsCheckpointTooOld" in done.stdout + done.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    required = {"ObsTrainingStalled", "ObsReplicaDivergence", "ObsCheckpointTooOld",
                "ObsDataErrorsRising"}
    assert required <= alerts
    assert fired == alerts, f"alerts without a firing test: {alerts - fired}"
    assert quiet == alerts, f"alerts without a quiet (negative) case: {alerts - quiet}"


def test_rules_and_dashboard_use_only_catalogue_metrics() -> None:
    # A typo in a metric name is valid PromQL that silently returns nothing.
    known = exported_names()
    texts = [expr for _, expr in dashboard_queries(load_dashboard())]
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    texts += [r["expr"] for group in rules["groups"] for r in group["rules"]]
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert used, "no obs_ metric found at all"
    assert used <= known, f"unknown metric names: {sorted(used - known)}"


def test_dashboard_shape_sections_and_variables() -> None:
    dashboard = load_dashboard()
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = " | ".join(p["title"] for p in panels)
    for section in REQUIRED_SECTIONS:
        assert section.lower() in titles.lower(), f"no panel for {section!r}"
    assert any(p["type"] == "state-timeline" and "phase" in p["title"].lower() for p in panels)
    assert any(p.get("repeat") == "rank" for p in panels), "no per-rank repeated row"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "node", "rank"} <= variables
    builtins = {"__rate_interval", "__interval", "__range"}
    values = {name: "x" for name in variables | builtins}
    for where, expr in dashboard_queries(dashboard):
        substitute_variables(expr, values)  # raises on an undefined variable
        assert 'job="$job"' in expr, f"{where} does not filter on the job variable: {expr}"
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert [name for name, _, _ in dashboard_variable_queries(dashboard)] == ["job", "node", "rank"]


def test_substitute_variables_rejects_unknown_variables() -> None:
    assert substitute_variables('a{x="$job"}[${__rate_interval}]', {
        "job": "j", "__rate_interval": "4s"}) == 'a{x="j"}[4s]'
    with pytest.raises(KeyError, match="jbo"):
        substitute_variables('a{x="$jbo"}', {"job": "j"})


def test_write_file_sd_targets_writes_prometheus_format(tmp_path: Path) -> None:
    path = write_file_sd_targets(
        tmp_path / "sd" / "job.json", [("node1", 9400), "node1:9401"], {"slurm_job_id": "77"}
    )
    assert json.loads(path.read_text()) == [
        {"targets": ["node1:9400", "node1:9401"], "labels": {"slurm_job_id": "77"}}
    ]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temp file left"
    write_file_sd_targets(path, [("node2", 9400)])
    assert json.loads(path.read_text())[0]["targets"] == ["node2:9400"]
    assert remove_file_sd_targets(path) is True
    assert remove_file_sd_targets(path) is False


@pytest.mark.parametrize(
    ("targets", "labels", "message"),
    [
        ([], None, "at least one"),
        (["node1"], None, "host:port"),
        ([("node1", 0)], None, "port must be in"),
        ([("node1", "9400")], None, "port must be an integer"),
        ([("", 9400)], None, "host"),
        (["a:1", "a:1"], None, "duplicate"),
        (["a:1"], {"__meta": "x"}, "label name"),
        (["a:1"], {"bad-name": "x"}, "label name"),
        (["a:1"], {"ok": 3}, "string value"),
    ],
)
def test_write_file_sd_targets_rejects_bad_input(
    tmp_path: Path, targets: list[Any], labels: dict[str, Any] | None, message: str
) -> None:

    with pytest.raises(ValueError, match=message):
        write_file_sd_targets(tmp_path / "t.json", targets, labels)


def test_slurm_node_targets_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SLURM_JOB_ID": "4242", "SLURMD_NODENAME": "gpu7"}
    targets, labels, name = slurm_node_targets(9400, 2, env)
    assert targets == [("gpu7", 9400), ("gpu7", 9401)]
    assert labels == {"slurm_job_id": "4242"}
    assert name == "4242-gpu7.json"
    with pytest.raises(ValueError, match="SLURM_JOB_ID"):
        slurm_node_targets(9400, 2, {})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert file_sd.main(["write", str(tmp_path), "--base-port", "9500", "--local-ranks", "4"]) == 0
    written = json.loads((tmp_path / "4242-gpu7.json").read_text())
    assert written[0]["targets"] == [f"gpu7:{9500 + r}" for r in range(4)]
    assert file_sd.main(["remove", str(tmp_path)]) == 0
    assert not (tmp_path / "4242-gpu7.json").exists()
    assert file_sd.main(["write", str(tmp_path), "--local-ranks", "0"]) == 2


def test_docs_list_every_catalogue_metric() -> None:
    docs = (PROMETHEUS_DIR.parent.parent / "docs" / "monitoring.md").read_text()
    missing = sorted(name for name in exported_names() if f"`{name}`" not in docs)
    assert not missing, f"docs/monitoring.md does not list {missing}"
