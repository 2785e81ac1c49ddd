"""``obs train`` on audio-visual shards: the path of ``make demo``, made small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.s3_server import needs_moto
from support.tiny_run import TINY_AV

from launch.run_config import RunConfig
from launch.runner import run_training
from obs_dist.config import load_config
from obs_dist.storage import open_store
from pipelines.synthetic import SyntheticConfig, write_synthetic


def _sets(tmp: Path, *extra: str) -> list[str]:
    return [*TINY_AV, f"out_dir={tmp / 'run'}", f"data.source={tmp / 'shards'}",
            f"data.eval_source={tmp / 'shards-eval'}", f"checkpoint.url={tmp / 'ckpt'}",
            *extra]


def test_demo_config_is_audio_visual_and_valid() -> None:
    cfg = load_config(RunConfig, "configs/demo.toml")
    assert cfg.task.name == "av" and cfg.model.encoder == "av" and cfg.make_synthetic
    assert cfg.data.eval_source and cfg.checkpoint.url


def test_generates_shards_trains_evaluates_and_resumes(tmp_path: Path) -> None:
    # An explicit LR schedule length lets train.steps grow on resume.
    metrics = run_training("configs/demo.toml", _sets(tmp_path, "make_synthetic=true",
                                                      "train.schedule_steps=8"))
    assert metrics["step"] == 4 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["committed_entries_total"] > 0  # av runs commit into the big state
    assert list((tmp_path / "shards").glob("*.tar")) and list((tmp_path / "shards-eval").glob(
        "*.tar"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 4
    # Four more steps continue from the step-4 checkpoint, with the loader's cursor.
    more = run_training("configs/demo.toml",
                        _sets(tmp_path, "make_synthetic=true", "train.steps=8",
                                      "train.schedule_steps=8"))
    assert more["resumed_from"] == 4 and more["step"] == 8


def test_empty_source_without_make_synthetic_is_refused(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    with pytest.raises(ValueError, match="make_synthetic"):
        run_training("configs/demo.toml", _sets(tmp_path, "make_synthetic=false"))


def test_av_config_mismatch_is_refused_before_any_work(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", "--config", "configs/demo.toml",
         "--set", "model.n_mels=40", "--set", f"out_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "model.n_mels" in proc.stderr
    assert not (tmp_path / "run").exists()


@needs_moto
def test_trains_from_shards_in_s3_and_checkpoints_there(tmp_path: Path, s3_endpoint: str,
                                                        s3_bucket: str) -> None:
    shards = f"s3://{s3_bucket}/shards/v1"
    write_synthetic(shards, SyntheticConfig(streams=2, clips_per_stream=8, frames=2,
                                            image_size=16, classes=4, seed=3),
                    target_bytes=100_000, endpoint_url=s3_endpoint, progress=False)
    ckpt = f"s3://{s3_bucket}/runs/av"
    metrics = run_training("configs/demo.toml", [
        *TINY_AV, f"out_dir={tmp_path / 'run'}", f"data.source={shards}",
        f"data.endpoint_url={s3_endpoint}", "data.eval_source=", "make_synthetic=false",
        f"checkpoint.url={ckpt}", f"checkpoint.endpoint_url={s3_endpoint}"])
    assert metrics["step"] == 4 and metrics["committed_entries_total"] > 0
    assert any(k.startswith("manifests/") for k in
               open_store(ckpt, endpoint_url=s3_endpoint).list(""))
