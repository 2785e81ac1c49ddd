"""Configuration: precedence, strict keys and types, cross-section validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launch.run_config import RunConfig
from obs_dist.config import load_config


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_precedence_cli_over_file_over_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, "[train]\nsteps = 7\nlr = 0.01\n[state]\nnodes = 1024\n")
    cfg = load_config(RunConfig, path, ["train.steps=9", "state.dtype=bf16"])
    assert cfg.train.steps == 9          # CLI beats file
    assert cfg.train.lr == 0.01          # file beats default
    assert cfg.state.nodes == 1024
    assert cfg.state.dtype == "bf16"     # bare word accepted as a string
    assert cfg.train.warmup == 10        # default
    assert cfg.model.vocab == 256 and cfg.model.classes == 256  # derived from the task


@pytest.mark.parametrize("overrides,needle", [
    (["train.stpes=3"], "unknown config key train.stpes"),
    (["bogus.x=1"], "unknown config key bogus"),
    (["train.steps=ten"], "train.steps: expected an integer"),
    (["train.steps=1.5"], "train.steps: expected an integer"),
    (["model.writer.k_max=5000", "state.nodes=4096"], "model.writer.k_max (5000) must be <="),
    (["model.writer.rule=oja"], "model.writer.rule"),
    (["task.pairs=200", "task.seq_len=1000"], "task.pairs (200) must be < vocab/2"),
    (["state.partitions=0"], "state.partitions"),
    (["train.device=tpu"], "train.device"),
    (["model.writer.k_min=9", "model.writer.k_max=8"], "model.writer.k_max (8) must be >= k_min"),
])
def test_bad_config_is_refused_naming_the_key(overrides, needle) -> None:
    with pytest.raises(ValueError) as info:
        load_config(RunConfig, None, overrides)
    assert needle in str(info.value)


def test_cli_refuses_bad_config_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", "--config", "configs/demo.toml",
         "--set", "model.writer.k_max=99999", "--set", f"out_dir={out}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "model.writer.k_max" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # nothing was started or written


def test_missing_and_malformed_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_config(RunConfig, tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(RunConfig, _write(tmp_path, "[train\nsteps=1"))


def test_demo_data_paths_follow_out_dir() -> None:
    from launch.runner import resolve_config

    default = resolve_config("configs/demo.toml", [])
    assert (default.data.source, default.data.eval_source) == ("runs/demo/shards",
                                                               "runs/demo/shards-eval")
    moved = resolve_config("configs/demo.toml", ["out_dir=runs/elsewhere"])
    assert moved.data.source == "runs/elsewhere/shards"
    assert moved.data.eval_source == "runs/elsewhere/shards-eval"
