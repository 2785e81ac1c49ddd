"""Item 5 of issue #15: a resume with changed hyperparameters is refused.

Only where output, metrics and checkpoints go (and how often) may change on
resume; every other key that differs from the checkpoint's config is named.
"""

from __future__ import annotations

from pathlib import Path

from support.tiny_run import obs, tiny_args

from obs_dist.checkpoint.format import config_changes, may_change_on_resume


def test_config_changes_names_every_differing_key() -> None:
    saved = {"train": {"lr": 0.003, "steps": 4, "progress": True}, "out_dir": "a",
             "state": {"nodes": 256}}
    live = {"train": {"lr": 0.01, "steps": 8, "progress": False, "new_key": 1},
            "out_dir": "b", "state": {"nodes": 512}}
    assert config_changes(saved, live) == ["state.nodes (256 → 512)", "train.lr (0.003 → 0.01)",
                                           "train.steps (4 → 8)"]
    assert may_change_on_resume("metrics.base_port", live)
    assert not may_change_on_resume("train.steps", live)
    assert may_change_on_resume("train.steps", {"train": {"schedule_steps": 8}})


def test_resume_with_changed_hyperparameters_is_refused(tmp_path: Path) -> None:
    ckpt = f"checkpoint.url={tmp_path / 'ckpt'}"
    proc = obs(*tiny_args(tmp_path, 2, ckpt), "--resume", "never")
    assert proc.returncode == 0, proc.stderr
    proc = obs(*tiny_args(tmp_path, 2, ckpt, "train.lr=0.01", "train.grad_clip=0.5"),
               "--resume", "auto")
    assert proc.returncode == 2, proc.stderr
    assert ("obs: error: cannot resume from the checkpoint at step 2: this run's config "
            "differs from the checkpoint's in train.grad_clip (1.0 → 0.5), train.lr "
            "(0.003 → 0.01).") in proc.stderr
    # Longer training changes the LR schedule unless its length is explicit.
    proc = obs(*tiny_args(tmp_path, 4, ckpt), "--resume", "auto")
    assert proc.returncode == 2 and "train.steps (2 → 4)" in proc.stderr, proc.stderr


def test_resume_may_change_output_logging_and_checkpoint_frequency(tmp_path: Path) -> None:
    ckpt = f"checkpoint.url={tmp_path / 'ckpt'}"
    proc = obs(*tiny_args(tmp_path, 2, ckpt, "train.schedule_steps=4"), "--resume", "never")
    assert proc.returncode == 0, proc.stderr
    proc = obs(*tiny_args(tmp_path / "elsewhere", 4, ckpt, "train.schedule_steps=4",
                          "train.log_every=1", "checkpoint.every=1", "train.progress=true"),
               "--resume", "auto")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from the checkpoint of step 2" in proc.stderr
