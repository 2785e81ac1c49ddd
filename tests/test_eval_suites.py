"""Evaluation suites end to end at tiny sizes, ``obs eval --task`` and ``obs report``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch.cmd_report import write_report
from launch.evals import SUITES, run_suite, suite_config, write_result
from launch.evals.harness import build_learner, obs_parameter_count

FAST = ["models=['obs', 'gru']", "train.steps=4", "eval_batches=1"]


def _run(name: str, extra: list[str]) -> dict:
    torch.set_num_threads(1)
    return run_suite(name, None, FAST + extra, quick=True, command=["eval", "--task", name])


def _fraction(x: float) -> bool:
    return 0.0 <= x <= 1.0


def test_mqar_sweep_rows_and_state_sweep() -> None:
    out = _run("mqar-sweep", ["state_sizes=[256]"])
    rows = out["results"]
    assert [r["model"] for r in rows] == ["obs", "gru"]
    assert all(_fraction(r["accuracy"]) and r["steps"] == 4 for r in rows)
    assert out["state_sweep"][0]["nodes"] == 256
    assert out["command"] == "obs eval --task mqar-sweep" and out["quick"] is True
    obs, gru = rows
    # Same parameter budget: the baseline's width is matched to OBS's count.
    assert abs(gru["params"] - obs["params"]) / obs["params"] < 0.3


def test_crossmodal_grid_and_circuits() -> None:
    out = _run("crossmodal", [])
    assert set(out["grid"]) == {"obs", "gru"}
    points = {(r["objects"], r["delay"]) for r in out["grid"]["obs"]}
    assert points == {(2, 4), (4, 4), (4, 0)}
    pic = out["circuits"]
    assert len(pic["strength"]) == 4 and len(pic["strength"][0]) == 4
    assert pic["committed_entries"] > 0 and pic["edges"]
    assert all(e["row"] != e["col"] for e in pic["edges"])  # links, not self-entries
    assert _fraction(pic["match"])


def test_obs_learns_crossmodal_association_above_chance() -> None:
    torch.set_num_threads(1)
    out = run_suite("crossmodal", None, ["models=['obs']", "circuits_exposures=0"], quick=True)
    acc = out["results"][0]["accuracy"]  # 4 objects per episode: chance 0.25
    assert acc > 0.5, out["results"]


def test_continual_matrix_with_replay_and_freezing() -> None:
    out = _run("continual", ["models=['obs-replay', 'gru']", "replay.every=2",
                             "freeze_after_first=['writer', 'head']"])
    for name in ("obs-replay", "gru"):
        matrix = out["details"][name]["matrix"]
        assert len(matrix) == 3 and all(len(r) == 3 and all(map(_fraction, r)) for r in matrix)
    obs = out["results"][0]
    assert obs["replay_consolidations"] == 6  # 12 steps, every 2
    assert obs["frozen_params"] > 0


def test_memory_and_state_tracking_suites() -> None:
    mem = _run("memory", [])
    assert len(mem["curves"]["obs"]["accuracy"]) == 4
    assert all(r["capacity"] >= 0 for r in mem["results"])
    st = _run("state-tracking", ["kinds=['parity', 'modular']", "task.test_lengths=[12, 24]"])
    assert {(r["kind"], r["length"]) for r in st["results"]} == {
        ("parity", 12), ("parity", 24), ("modular", 12), ("modular", 24)}
    assert len(st["curves"]["modular"]["gru"]) == 24


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="models"):
        suite_config("memory", None, ["models=['lstm']"])
    with pytest.raises(ValueError, match="unknown config key"):
        suite_config("memory", None, ["task.colour=1"])
    with pytest.raises(ValueError, match="unknown eval task"):
        suite_config("nope", None, [])
    with pytest.raises(ValueError, match="pairs"):
        suite_config("mqar-sweep", None, ["points=[[200, 1024]]"])


def test_every_eval_config_file_loads() -> None:
    for name in SUITES:
        stem = name.replace("-sweep", "").replace("-", "_")
        cfg = suite_config(name, f"configs/eval_{stem}.toml", [])
        assert cfg.models


def test_the_cli_offers_every_declared_suite_in_report_order() -> None:
    from launch.cli import build_parser

    assert list(SUITES) == ["mqar-sweep", "crossmodal", "continual", "memory", "state-tracking",
                           "word-referent"]
    assert all(name == suite.name and suite.title for name, suite in SUITES.items())
    for name in SUITES:
        assert build_parser().parse_args(["eval", "--task", name]).task == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--task", "nope"])


def test_obs_parameter_count_matches_the_built_model() -> None:
    cfg = suite_config("memory", None, [], quick=True)
    learner = build_learner("obs", cfg, 12, 8, commit=False)
    model_cfg = learner.model.config  # type: ignore[attr-defined]
    assert obs_parameter_count(cfg.state, model_cfg) == learner.parameters


def test_cli_eval_task_writes_json_then_report_draws(tmp_path: Path) -> None:
    out = tmp_path / "json" / "st.json"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "eval", "--task", "state-tracking", "--quick",
         "--set", "models=['gru']", "--set", "train.steps=3", "--json", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["suite"] == "state-tracking" and summary["results"]
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("obs eval --task state-tracking")
    doc = tmp_path / "results.md"
    with pytest.raises(ValueError, match="no evaluation results"):
        write_report(tmp_path / "json", doc, tmp_path / "fig", None)  # only a quick result
    # A second, hand-made result (a continual one) for the report's target checks.
    write_result({"suite": "continual", "command": "obs eval --task continual",
                  "results": [{"model": "obs", "first_set_final": 0.9},
                              {"model": "gru", "first_set_final": 0.1}],
                  "details": {"obs": {"matrix": [[1.0, 0.0], [0.9, 1.0]],
                                      "first_set_curve": [1.0, 0.9]}}},
                 tmp_path / "json" / "continual.json")
    report = write_report(tmp_path / "json", doc, tmp_path / "fig", None, include_quick=True)
    text = doc.read_text()
    assert "obs eval --task state-tracking" in text and "**met**" in text
    assert any(p.endswith("st_positions.png") for p in report["figures"])
    assert any(p.endswith("continual_forgetting.png") for p in report["figures"])
    assert (tmp_path / "fig" / "st_positions.png").stat().st_size > 1000


def test_old_eval_flags_still_parse() -> None:
    from launch.cli import build_parser

    args = build_parser().parse_args(["eval", "--config", "configs/demo.toml", "--batches", "2"])
    assert args.task is None and args.batches == 2


def test_report_shard_tables_and_state_sweep_only_result(tmp_path: Path) -> None:
    shards = {"obs": {"accuracy": 0.75, "queries": 8, "by_delay": {"0-7": 1.0, "8-15": 0.5},
                      "by_objects_seen": {"1": 1.0, "3": 0.5},
                      "by_episode_objects": {"16": 0.875},
                      "headline": {"objects": 16, "clips_between": 32, "accuracy": 0.875,
                                   "queries": 8}}}
    write_result({"suite": "crossmodal", "command": "obs eval --task crossmodal",
                  "path": "shards:/x", "results": [{"model": "obs", "accuracy": 0.75}],
                  "shards": shards, "config": {"audio_words_temperature": 0.05,
                                               "video_objects_temperature": 0.1},
                  "audio_words": {"word_accuracy": 0.9375, "words": 64.0, "utterances": 8192.0,
                                  "steps": 2000.0},
                  "video_objects": {"object_accuracy": 0.99, "objects": 48.0, "clips": 4096.0,
                                    "steps": 500.0}}, tmp_path / "json" / "cm.json")
    write_result({"suite": "mqar-sweep", "command": "obs eval --task mqar-sweep", "results": [],
                  "state_sweep": [{"model": "obs", "nodes": n, "pairs": 8, "length": 64,
                                   "accuracy": a} for n, a in ((256, 0.2), (1024, 0.9))]},
                 tmp_path / "json" / "n.json")
    report = write_report(tmp_path / "json", tmp_path / "r.md", tmp_path / "fig", None)
    text = (tmp_path / "r.md").read_text()
    assert "| obs | 1.000 | 0.500 |" in text  # by delay bucket, then by objects seen
    assert "delay 8-15" in text and "seen 3" in text and "| obs | 0.875 |" in text
    assert "clips between study and query: top-1 >= 0.9 — **missed** (OBS 0.875 over 8" in text
    assert "one frozen keyword recognizer (64 words, 8192 utterances" in text
    assert "word accuracy 0.938; posterior temperature 0.05" in text
    assert "one frozen object recognizer (48 objects, 4096 video clips" in text
    assert "object accuracy 0.990; posterior temperature 0.1" in text
    assert "_(no rows)_" not in text  # a state-sweep-only result shows just its sweep
    assert any(p.endswith("n_state_size.png") for p in report["figures"])


def test_readme_eval_then_report_meet_under_runs(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from launch import cli

    monkeypatch.chdir(tmp_path)  # a fresh clone's working directory
    # what `obs eval --task continual` writes by default (runs/eval/continual.json)
    write_result({"suite": "continual", "command": "obs eval --task continual",
                  "results": [{"model": "obs", "first_set_final": 0.9}],
                  "details": {"obs": {"matrix": [[1.0, 0.0], [0.9, 1.0]],
                                      "first_set_curve": [1.0, 0.9]}}},
                 Path("runs/eval/continual.json"))
    assert cli.main(["report", "--json"]) == 0
    text = (tmp_path / "runs" / "report" / "results.md").read_text()
    assert "obs eval --task continual" in text
    assert not (tmp_path / "docs").exists()  # no tracked file is written by default


def test_report_of_only_quick_results_says_how_to_include_them(tmp_path: Path) -> None:
    write_result({"suite": "continual", "quick": True, "results": []},
                 tmp_path / "eval" / "continual-quick.json")
    with pytest.raises(ValueError, match=r"1 --quick result\(s\) left out: --include-quick"):
        write_report(tmp_path / "eval", tmp_path / "r.md", tmp_path / "fig", None)


def test_obs_version(capsys: pytest.CaptureFixture[str]) -> None:
    from launch import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("obs ")
