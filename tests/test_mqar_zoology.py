"""The Zoology protocol as a config of the MQAR sweep: widths, lr sweep, examples, conv first."""

from __future__ import annotations

import pytest
import torch

from launch.evals import run_suite, suite_config
from obs_dist.baselines import BaselineConfig, build_baseline
from obs_dist.baselines.deltanet import ShortConvMixer


def test_zoology_config_loads_with_the_protocol() -> None:
    cfg = suite_config("mqar-sweep", "configs/eval_mqar_zoology.toml", [])
    assert cfg.vocab == 8192 and cfg.widths == [64, 128]
    assert cfg.lrs == [1e-3, 3e-3, 1e-2, 3e-2] and cfg.train_examples == 100_000
    assert cfg.baseline.conv_first and cfg.baseline.layers == 2
    # Zoology's language model: head tied to the token embedding, weights N(0, 0.02).
    assert cfg.baseline.tie_head and cfg.baseline.init_std == 0.02
    assert cfg.points == [[4, 64]] and cfg.seconds == 0


def test_conv_first_builds_convolution_then_mixer() -> None:
    model = build_baseline(BaselineConfig(kind="deltanet", d_model=16, heads=2, conv_first=True),
                           11, 5)
    assert isinstance(model.blocks[0].mixer, ShortConvMixer)
    assert not isinstance(model.blocks[1].mixer, ShortConvMixer)
    with pytest.raises(ValueError, match="conv_first"):
        BaselineConfig(layers=1, conv_first=True)


def test_lr_sweep_trains_each_width_and_rate_counted_in_examples() -> None:
    torch.set_num_threads(1)
    out = run_suite("mqar-sweep", None, [
        "vocab=32", "batch=4", "points=[[2, 12]]", "state_point=[2, 12]", "eval_batches=1",
        'models=["attention", "deltanet"]', "widths=[8, 16]", "lrs=[1e-3, 1e-2]",
        "train_examples=10", "match_parameters=false", "baseline.heads=2",
        "baseline.conv_first=true", "train.eval_every=0", "train.progress=false",
        "train.warmup=1"], quick=False, command=["eval"])
    rows = out["results"]
    assert len(rows) == 2 * 2 * 2
    assert {(r["d_model"], r["lr"]) for r in rows} == {(8, 1e-3), (8, 1e-2), (16, 1e-3),
                                                       (16, 1e-2)}
    assert all(r["steps"] == 3 and r["examples"] == 12 for r in rows)  # ceil(10 / 4) steps
    best = out["best"]
    assert len(best) == 4
    for b in best:
        same = [r for r in rows if (r["model"], r["d_model"]) == (b["model"], b["d_model"])]
        assert b["accuracy"] == max(r["accuracy"] for r in same)
