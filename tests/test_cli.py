"""The ``obs`` command line end to end (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _obs(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_train_then_eval_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["--config", "configs/mqar.toml", "--set", f"out_dir={out}",
              "--set", "state.nodes=1024", "--set", "task.batch=8"]
    proc = _obs("train", *common, "--set", "train.steps=3", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step"] == 3 and 0 <= result["eval_accuracy"] <= 1
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert "resolved config" in proc.stderr
    proc = _obs("eval", *common, "--batches", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == {"eval_loss", "eval_accuracy"}


@pytest.mark.slow
def test_bench_step_reports_the_required_keys() -> None:
    proc = _obs("bench", "step", "--nodes", "256", "1024", "--k-max", "8", "--active", "8",
                "--d-model", "32", "--batch", "2", "--window", "8", "--windows", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    rows = result["results"]
    assert [r["nodes"] for r in rows] == [256, 1024]
    for r in rows:
        assert {"nodes", "sec_per_token", "peak_rss_bytes", "state_bytes"} <= set(r)
        assert r["sec_per_token"] > 0 and r["peak_rss_bytes"] > r["state_bytes"]
    assert rows[1]["state_bytes"] == 1024 * 1024 * 4
    for r in rows:  # the memory floor beside each size (issue #17)
        assert r["bytes_per_token"] == 2 * 4 * 8 * r["nodes"]
        assert r["gather_bytes_per_sec"] > 0
        assert r["over_floor"] == pytest.approx(r["sec_per_token"] / r["floor_sec_per_token"])


@pytest.mark.slow
def test_bench_step_side_by_side_with_a_reference_revision() -> None:
    proc = _obs("bench", "step", "--nodes", "256", "--k-max", "4", "--active", "4",
                "--d-model", "16", "--batch", "2", "--window", "4", "--windows", "1",
                "--reference", "HEAD", "--profile", "--json")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)["results"][0]
    assert row["speedup_over_reference"] == pytest.approx(
        row["reference_sec_per_token"] / row["sec_per_token"])
    for key in ("profile", "reference_profile"):
        ops = {p["op"] for p in row[key]}
        assert len(ops) == len(row[key]) > 3 and any(op.startswith("aten::") for op in ops)
        assert all(p["self_ms_per_window"] > 0 for p in row[key])


def test_bench_step_refuses_an_unknown_reference() -> None:
    proc = _obs("bench", "step", "--nodes", "256", "--reference", "no-such-revision-xyz")
    assert proc.returncode != 0
    assert "no-such-revision-xyz" in proc.stderr and "not a revision" in proc.stderr


@pytest.mark.slow
def test_bench_mqar_runs_the_command_side_by_side_with_a_revision() -> None:
    proc = _obs("bench", "mqar", "--quick", "--reference", "HEAD", "--rounds", "1",
                "--set", "points=[[4, 24]]", "--set", "train.steps=20", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for tree in ("this_tree", "reference_tree"):
        (run,) = result[tree]["runs"]
        assert (run["pairs"], run["length"], run["steps"]) == (4, 24, 20)  # the --set wins
        assert run["seconds"] > 0 and 0 <= run["accuracy"] <= 1
        assert result[tree]["reached_target"] == (run["stopped"] == "target")
    assert result["same_steps"]
    assert result["speedup_over_reference"] == pytest.approx(
        result["reference_tree"]["median_seconds"] / result["this_tree"]["median_seconds"])


def test_bench_train_times_a_config_side_by_side_with_a_revision() -> None:
    proc = _obs("bench", "train", "--config", "configs/mqar.toml", "--steps", "3",
                "--reference", "HEAD", "--rounds", "1", "--set", "state.nodes=512",
                "--set", "task.batch=4", "--set", "task.seq_len=32", "--set", "task.pairs=4",
                "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    runs = [r for tree in ("this_tree", "reference_tree") for r in result[tree]["runs"]]
    assert len(runs) == 2 and all(r["steps"] == 3 and r["seconds"] > 0 for r in runs)
    # The same tree twice: the same mathematics, so the same final loss.
    assert result["same_steps"] and result["same_result"]
    assert runs[0]["loss"] == runs[1]["loss"] and runs[0]["loss"] > 0
    assert result["speedup_over_reference"] == pytest.approx(
        result["reference_tree"]["median_seconds"] / result["this_tree"]["median_seconds"])


def test_bench_train_refuses_a_missing_config_and_no_steps() -> None:
    proc = _obs("bench", "train", "--config", "configs/no-such.toml")
    assert proc.returncode != 0 and "no such file" in proc.stderr
    proc = _obs("bench", "train", "--config", "configs/mqar.toml", "--steps", "0")
    assert proc.returncode != 0 and "--steps must be >= 1" in proc.stderr


def test_bench_mqar_refuses_an_unknown_reference() -> None:
    proc = _obs("bench", "mqar", "--quick", "--reference", "no-such-revision-xyz")
    assert proc.returncode != 0 and "not a revision" in proc.stderr
