"""The cost axes of the step-matched MQAR comparison (issue #19), and their report."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.cmd_report import write_report
from launch.evals import write_result
from launch.evals.plots import mqar_costs
from launch.evals.recall_costs import baseline_costs, obs_costs
from obs_dist.baselines import build_baseline
from obs_dist.baselines.common import BaselineConfig


def _model(kind: str, **kw: object) -> object:
    return build_baseline(BaselineConfig(kind=kind, d_model=32, layers=2, heads=4, **kw),
                          16, 16)


def test_state_floats_follow_each_mixer() -> None:
    # DeltaNet: 2 layers × heads·(d/heads)² plus each layer's conv buffer (3 taps × 3d).
    assert baseline_costs(_model("deltanet"), 64)["state_floats"] == 2 * (4 * 8 * 8 + 3 * 96)
    assert baseline_costs(_model("gated_deltanet"), 64)["state_floats"] == 2 * (4 * 8 * 8 + 3 * 96)
    # Longhorn: d × state_dim per layer plus its conv buffer (3 taps × d).
    assert baseline_costs(_model("longhorn", state_dim=4), 64)["state_floats"] == 2 * (
        32 * 4 + 3 * 32)
    assert baseline_costs(_model("gru"), 64)["state_floats"] == 2 * 32
    # Attention: the KV cache grows with the length; token t reads 2·t·d, on average.
    short, long = (baseline_costs(_model("attention"), n) for n in (64, 128))
    assert short["state_floats"] == 2 * 2 * 64 * 32 and long["state_floats"] == 2 * short[
        "state_floats"]
    assert short["read_bytes_per_token"] == 4 * 2 * 2 * 32 * 65 / 2
    # A convolution first (Zoology's layout) replaces a mixer by its 2-tap buffer.
    conv = baseline_costs(_model("deltanet", conv_first=True), 64)
    assert conv["state_floats"] == 4 * 8 * 8 + 3 * 96 + 2 * 32
    # OBS: N² kept, k_max rows of N read.
    assert obs_costs(1024, 8) == {"state_floats": 1024.0 ** 2,
                                  "read_bytes_per_token": 4.0 * 8 * 1024}


def _row(model: str, pairs: int, acc: float, lr: float) -> dict:
    return {"model": model, "pairs": pairs, "length": 16 * pairs, "accuracy": acc, "lr": lr,
            "steps": 10, "stopped": "steps", "state_floats": 100.0 * pairs,
            "read_bytes_per_token": 400.0 * pairs}


def test_costs_plot_and_a_step_matched_report(tmp_path: Path) -> None:
    rows = [_row(m, p, a, lr) for m, a in (("obs", 0.9), ("gru", 0.2))
            for p in (4, 8) for lr in (1e-3, 1e-2)]
    best = [r for r in rows if r["lr"] == 1e-2]
    result = {"suite": "mqar-sweep", "command": "obs eval --task mqar-sweep",
              "results": rows, "best": best, "state_sweep": [], "chance": 0.01}
    assert mqar_costs(result, tmp_path / "c.png") == tmp_path / "c.png"
    assert (tmp_path / "c.png").stat().st_size > 0
    assert mqar_costs({"results": [{"model": "gru", "accuracy": 0.1}]}, tmp_path / "x.png") is None
    write_result(result, tmp_path / "json" / "steps.json")
    capped = {**result, "best": [], "results": [{**rows[0], "stopped": "seconds"}]}
    write_result(capped, tmp_path / "json" / "capped.json")
    report = write_report(tmp_path / "json", tmp_path / "r.md", tmp_path / "fig", None)
    text = (tmp_path / "r.md").read_text()
    assert "`capped` (a wall-time budget test)" in text
    assert "`steps` (a wall-time budget test)" not in text
    assert text.count("Best learning rate per model and point") == 1
    assert any(p.endswith("steps_costs.png") for p in report["figures"])


@pytest.mark.parametrize("kind", ["attention", "deltanet", "gated_deltanet", "longhorn", "gru"])
def test_every_baseline_has_a_state(kind: str) -> None:
    costs = baseline_costs(_model(kind), 32)
    assert costs["state_floats"] > 0 and costs["read_bytes_per_token"] > 0
