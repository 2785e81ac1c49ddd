"""deepspeed.config: a user's DeepSpeed JSON merged under what OBS sets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from launch.jobs.spawn import free_port
from launch.run_config import RunConfig
from obs_dist.config import load_config
from obs_dist.engine.slow_weights import (
    DeepSpeedConfig,
    DeepSpeedSlowWeights,
    deepspeed_config,
    merge_user_config,
)
from obs_dist.trainer import TrainConfig


def _write(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_user_keys_pass_through_and_obs_keys_stay() -> None:
    ours = {"gradient_accumulation_steps": 1, "optimizer": {"type": "AdamW",
                                                            "params": {"lr": 1e-3}}}
    user = {"bf16": {"enabled": True}, "gradient_accumulation_steps": "auto",
            "optimizer": {"params": {"lr": 1e-3, "betas": [0.8, 0.9]}}}
    merged = merge_user_config(user, ours)
    assert merged == {"bf16": {"enabled": True}, "gradient_accumulation_steps": 1,
                      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3,
                                                                "betas": [0.8, 0.9]}}}


def test_a_conflicting_key_is_refused_naming_it(tmp_path: Path) -> None:
    path = _write(tmp_path, {"optimizer": {"params": {"lr": 0.5}}})
    with pytest.raises(ValueError, match=r"optimizer\.params\.lr = 0\.5.*OBS sets it to 0\.001"):
        deepspeed_config(TrainConfig(lr=1e-3), DeepSpeedConfig(config=path), 4)
    # the run's config is refused at load (before any work), naming the key too
    path = _write(tmp_path, {"zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError, match=r"zero_optimization\.stage = 3"):
        load_config(RunConfig, None, [f"deepspeed.config={path}"])


def test_a_missing_or_broken_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="deepspeed.config not found"):
        DeepSpeedConfig(config=str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        DeepSpeedConfig(config=str(bad))


def test_the_user_values_reach_the_engine_bf16_on_cpu(tmp_path: Path) -> None:
    path = _write(tmp_path, {"bf16": {"enabled": True}, "steps_per_print": 7,
                             "optimizer": {"params": {"betas": [0.8, 0.9]}},
                             "zero_optimization": {"contiguous_gradients": False}})
    env = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
           "MASTER_PORT": str(free_port())}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        slow = DeepSpeedSlowWeights(nn.Linear(4, 2), TrainConfig(lr=1e-3),
                                    DeepSpeedConfig(zero_stage=1, config=path), 2)
        engine = slow.engine
        assert engine.steps_per_print() == 7 and not engine.zero_contiguous_gradients()
        assert engine.bfloat16_enabled()
        assert next(engine.module.parameters()).dtype == torch.bfloat16
        group = getattr(engine.optimizer, "optimizer", engine.optimizer).param_groups[0]
        assert tuple(group["betas"]) == (0.8, 0.9) and group["lr"] >= 0
        loss = engine(torch.randn(3, 4, dtype=torch.bfloat16)).float().sum()
        slow.backward(loss)
        assert slow.step() > 0  # one bf16 step on CPU
        slow.close()
    finally:
        torch.distributed.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
