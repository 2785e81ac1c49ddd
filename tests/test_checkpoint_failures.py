"""Item 3 of issue #15: checkpoint failures that must change the exit code.

An unwritable store is refused before any training; a run whose final
checkpoint is not written fails (exit 1) with the failure counted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.tiny_run import obs, tiny_args

from launch.runner import run_training
from obs_dist.checkpoint.manager import CheckpointNotWritten, probe_store
from obs_dist.hooks import NamedHook
from obs_dist.storage import LocalStore, StorageError


def test_unwritable_local_url_is_refused_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = blocker / "ckpt"
    proc = obs(*tiny_args(tmp_path, 2, f"checkpoint.url={url}"), "--resume", "never")
    assert proc.returncode == 2, proc.stderr
    assert f"obs: error: checkpoint.url {url} cannot be written: " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()  # refused before training


def test_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "ckpt")
    probe_store(store, 0, "x")
    assert store.list() == []


def test_probe_names_the_url_and_the_cause(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(StorageError, match=r"checkpoint.url u cannot be written: .*Error"):
        probe_store(LocalStore(tmp_path / "f" / "c"), 0, "u")


def test_store_failing_at_the_final_save_fails_the_run_and_is_counted(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    steps = 3

    def break_store(trainer: object, metrics: dict[str, float]) -> None:
        if trainer.step == steps:  # after the step's checkpoint stage
            shutil.rmtree(ckpt, ignore_errors=True)
            ckpt.write_text("the store is gone")

    sets = [a for a in tiny_args(tmp_path, steps, f"checkpoint.url={ckpt}",
                                 "checkpoint.every=2")[3:] if a != "--set"]
    with pytest.raises(CheckpointNotWritten, match=r"step 3\) was not written.*"
                                                    r"ckpt_failures_total = 1"):
        run_training("configs/mqar.toml", sets, resume="never",
                     hooks=[NamedHook("break_store", break_store, stage="control")])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["ckpt_failures_total"] == 1.0
