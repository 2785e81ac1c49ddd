"""A run's history on disk: metrics.jsonl, the log copy, the config at start, obs plot."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from support.tiny_run import obs, tiny_args

from launch.cmd_plot import plot_runs
from launch.run_config import RunConfig
from monitoring.history import METRICS_FILE, read_metrics, run_dirs
from obs_dist.config import from_dict, load_config, load_toml, to_dict, to_toml


def test_resolved_config_round_trips_through_toml_and_json(tmp_path: Path) -> None:
    cfg = load_config(RunConfig, "configs/mqar.toml", ["task.pairs=3", "train.lr=0.01"])
    toml_file = tmp_path / "c.toml"
    toml_file.write_text(to_toml(to_dict(cfg)))
    json_file = tmp_path / "c.json"
    json_file.write_text(json.dumps(to_dict(cfg)))
    for path in (toml_file, json_file):
        assert to_dict(from_dict(RunConfig, load_toml(path))) == to_dict(cfg)


def test_two_runs_into_one_out_dir_keep_both_histories(tmp_path: Path) -> None:
    for _ in range(2):
        proc = obs(*tiny_args(tmp_path, 4, "train.log_every=2", "train.moments_every=2"))
        assert proc.returncode == 0, proc.stderr
    runs = run_dirs(tmp_path / "out")
    assert len(runs) == 2
    for run in runs:
        records = read_metrics(run)
        assert [r["step"] for r in records] == [2, 4]  # one line per log step
        for key in ("loss", "accuracy", "samples_per_s", "state_std", "committed_entries_total"):
            assert all(r[key] is not None for r in records), key
        assert "run history in" in (run / "train.log").read_text()
        # the resolved config, written at start, is a --config that reads back
        shown = obs("config", "show", "--config", str(run / "config.toml"), "--json")
        assert shown.returncode == 0, shown.stderr
        values = {r["key"]: r["value"] for r in json.loads(shown.stdout)["results"]}
        assert values["train.steps"] == 4 and values["train.log_every"] == 2

    figures = plot_runs(tmp_path / "out", tmp_path / "plots")
    assert {p.name for p in figures} == {"loss.png", "accuracy.png", "throughput.png",
                                         "state.png"}
    assert all(p.stat().st_size > 1000 for p in figures)
    proc = obs("plot", str(runs[0]), "--json")  # one run folder, through the command
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["results"]) == 4


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
    with pytest.raises(ValueError, match="no run history"):
        run_dirs(tmp_path / "nothing")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="the optional tensorboard package is not installed "
                           "(pip install 'obs[tensorboard]')")
def test_tensorboard_events_when_enabled(tmp_path: Path) -> None:
    proc = obs(*tiny_args(tmp_path, 2, "train.log_every=1", "history.tensorboard=true"))
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "out")
    assert list(run.glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]  # one point per log step


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # tensorboard is in the dev extra: hide it, as on a machine without it, with a module
    # of the same name ahead of site-packages that fails to import
    shim = tmp_path / "no-tensorboard"
    shim.mkdir()
    (shim / "tensorboard.py").write_text("raise ImportError('tensorboard hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(shim), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = obs(*tiny_args(tmp_path, 2, "history.tensorboard=true"))
    assert proc.returncode == 2
    assert "history.tensorboard = true needs the tensorboard package" in proc.stderr
