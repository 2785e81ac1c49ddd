"""Item 4 of issue #15: NaN/inf settings are refused, a diverging run stops non-zero.

A diverged run must neither go on silently nor replace its last finite
checkpoint with NaN weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.tiny_run import obs, tiny_args

from launch.run_config import RunConfig
from obs_dist.checkpoint.format import list_steps
from obs_dist.config import load_config
from obs_dist.guards import Diverged, DivergenceGuard, nonfinite_path
from obs_dist.storage import open_store


@pytest.mark.parametrize("override, key", [
    ("train.lr=inf", "train.lr"), ("state.init_std=nan", "state.init_std"),
    ("train.grad_clip=inf", "train.grad_clip"),
    ("checkpoint.base_every_fraction=nan", "checkpoint.base_every_fraction"),
    ("train.target_accuracy=nan", "train.target_accuracy"),
])
def test_nonfinite_config_value_is_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key}: .* is not a finite number"):
        load_config(RunConfig, None, [override])


def test_nonfinite_config_value_in_a_table_is_refused() -> None:
    from obs_dist.config import _refuse_nonfinite

    with pytest.raises(ValueError, match=r"extra\.a\[1\]: inf"):
        _refuse_nonfinite({"a": [1.0, float("inf")]}, "extra")


def test_divergence_guard_forgives_isolated_steps_and_stops_after_limit() -> None:
    class T:
        step = 0
        model = torch.nn.Linear(2, 2)

    guard, t = DivergenceGuard(2), T()
    for loss in (float("nan"), 1.0, float("nan")):  # never two in a row
        t.step += 1
        guard(t, {"loss": loss})
    t.step += 1
    with pytest.raises(Diverged, match="steps 3..4"):
        guard(t, {"loss": float("inf")})


def test_nonfinite_path_names_the_tensor() -> None:
    tree = {"model": {"w": torch.ones(2)}, "slow": [{"m": torch.tensor([0.0, float("nan")])}]}
    assert nonfinite_path(tree) == "/slow/0/m"
    assert nonfinite_path({"a": torch.ones(3), "n": 2, "s": "x"}) is None


def test_nan_run_stops_nonzero_and_keeps_last_finite_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    # lr = 1e30: the first step leaves the slow weights finite, the second NaN.
    proc = obs(*tiny_args(tmp_path, 12, "train.lr=1e30", f"checkpoint.url={ckpt}",
                          "checkpoint.every=1"), "--resume", "never")
    assert proc.returncode == 1, proc.stderr
    assert "obs: error: training diverged" in proc.stderr
    assert "Traceback" not in proc.stderr
    steps = list_steps(open_store(str(ckpt)))
    assert steps and max(steps) < 4  # stopped at step 4 at the latest; no NaN checkpoint
    assert "not written" in proc.stderr
    # The last finite checkpoint loads (and verifies) in a run of the same config.
    proc = obs(*tiny_args(tmp_path, 12, "train.lr=1e30", f"checkpoint.url={ckpt}",
                          "checkpoint.every=1"), "--resume", "auto")
    assert f"resumed from the checkpoint of step {max(steps)}" in proc.stderr, proc.stderr
