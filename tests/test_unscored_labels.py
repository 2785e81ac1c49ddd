"""Item 2 of issue #15: a run whose labels match nothing must not train quietly.

Labels outside classes.json are counted by kind and named once; a fresh run of
a scoring task whose first batches score no target stops before its first
optimizer step; an empty classes.json knows no name (not the built-in ones).
The label-free ``av-stream`` learns by hearing: recordings packed without an
audio track are refused before the first step, and a pass in which no clip was
ever heard fails (exit 1) after its final checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from support.tiny_run import TINY_AV, obs

from obs_dist.guards import NothingScored, require_scored, task_scores_targets
from pipelines.cutter_probe import write_test_recording
from pipelines.loader import DataConfig, StreamLoader
from pipelines.pack import pack_folder
from pipelines.schema import CLASSES, classes_json, object_id
from pipelines.synthetic import SyntheticConfig, write_synthetic


def _shards_matching_nothing(tmp_path: Path) -> Path:
    """Tiny synthetic shards whose classes.json lists no name the samples use."""
    out = tmp_path / "shards"
    write_synthetic(str(out), SyntheticConfig(streams=2, clips_per_stream=8, frames=2,
                                              image_size=16, classes=4), progress=False)
    (out / "classes.json").write_bytes(classes_json(("nothing-matches", "nor-this")))
    return out


def test_empty_classes_json_knows_no_name() -> None:
    assert object_id(CLASSES[0]) == 0
    assert object_id(CLASSES[0], {}) == -1  # was: the built-in vocabulary


def test_unknown_labels_are_counted_by_kind_and_named_once(tmp_path: Path, caplog) -> None:
    source = _shards_matching_nothing(tmp_path)
    loader = StreamLoader(DataConfig(source=str(source), streams=2, window=4, workers=0,
                                     frames=2, image_size=16, n_mels=16, audio_seconds=0.5))
    with caplog.at_level(logging.WARNING, logger="obs.loader"):
        batches = list(loader)
    assert all(int((b["targets"] != -100).sum()) == 0 for b in batches)
    assert loader.unknown_labels["object"] == loader.clips_seen - sum(
        1 for b in batches for row in b["objects"].tolist() for o in row if o >= 0) > 0
    names = list(loader.unknown_names["object"])
    assert names and all(caplog.text.count(f"labels.object {n!r}") == 1 for n in names)
    assert "of sample " in caplog.text and str(source) in caplog.text
    assert "unknown names, e.g." in loader.explain_unscored()


def test_require_scored_holds_back_only_until_a_target_is_scored() -> None:
    empty = {"targets": torch.full((1, 2), -100)}
    good = {"targets": torch.tensor([[1, -100]])}
    assert list(require_scored(iter([empty, good, empty]), lambda: "x")) == [empty, good, empty]
    with pytest.raises(NothingScored, match="first 3 training batches.*: why"):
        next(require_scored(iter([empty] * 5), lambda: "why"))


def test_label_free_task_is_not_checked() -> None:
    assert task_scores_targets("av") and task_scores_targets("mqar")
    assert not task_scores_targets("av-stream")


def test_source_whose_labels_match_nothing_refuses_to_train(tmp_path: Path) -> None:
    source = _shards_matching_nothing(tmp_path)
    args = ["train", "--config", "configs/demo.toml", "--resume", "never"]
    for item in [*TINY_AV, f"out_dir={tmp_path / 'run'}", f"data.source={source}",
                 "data.eval_source=", f"checkpoint.url={tmp_path / 'ckpt'}",
                 "checkpoint.every=1", "make_synthetic=false", "data.loop=true"]:
        args += ["--set", item]
    proc = obs(*args)
    assert proc.returncode == 1, proc.stderr
    assert (f"obs: error: no target was scored in the first 3 training batches, so the run "
            f"would learn nothing: no sample's labels.object is in classes.json of {source} "
            ) in proc.stderr
    assert "unknown names, e.g." in proc.stderr and "Traceback" not in proc.stderr
    # Before the first optimizer step: no checkpoint of step 1 or later.
    assert not list((tmp_path / "ckpt").glob("manifests/*.json"))


def _recorded_shards(tmp_path: Path, **recording: object) -> Path:
    """Two 40 s recordings (64×48 at 10 fps) packed by ``make-shards --from``."""
    src, out = tmp_path / "rec", tmp_path / "shards"
    for name in ("day1", "day2"):
        write_test_recording(src / f"{name}.mp4", 40.0, width=64, height=48, fps=10,
                             **recording)  # type: ignore[arg-type]
    pack_folder(src, str(out), target_bytes=1 << 20, progress=False)
    return out


def _av_stream(tmp_path: Path, source: Path) -> tuple[int, str]:
    args = ["train", "--config", "configs/av_stream.toml", "--resume", "never"]
    for item in [f"data.source={source}", "data.streams=2", "task.batch=2", "data.window=16",
                 "model.stream.negative_gap=8", "rehearsal.ratio=1", "train.progress=false",
                 f"out_dir={tmp_path / 'run'}", f"checkpoint.url={tmp_path / 'ckpt'}"]:
        args += ["--set", item]
    proc = obs(*args)
    return proc.returncode, proc.stderr


def test_recordings_without_an_audio_track_refuse_to_train_by_hearing(tmp_path: Path) -> None:
    source = _recorded_shards(tmp_path, audio_track=False)
    code, err = _av_stream(tmp_path, source)
    assert code == 1, err
    assert ("obs: error: no clip had an audio track in the first 3 training batches, so the "
            "run would learn nothing: task 'av-stream' learns by hearing") in err
    assert str(source) in err and "Traceback" not in err
    assert not list((tmp_path / "ckpt").glob("manifests/*.json"))  # before the first step


def test_a_pass_in_which_no_clip_was_heard_fails_after_its_checkpoint(tmp_path: Path) -> None:
    # Sound, but silence throughout (the tone would start after the end): the
    # speech gate never opens, nothing is scored, and the pass used to end with
    # exit 0, "accuracy 0" and nothing said.
    source = _recorded_shards(tmp_path, tone_at=1000.0)
    code, err = _av_stream(tmp_path, source)
    assert code == 1, err
    # 40 clips a recording in windows of 16: 3 new batches, each rehearsed once.
    assert ("obs: error: no position was scored in 6 training steps, so the run learned "
            "nothing from its objective: no clip's sound rose above its window's noise "
            "floor by model.stream.gate = 1.5") in err
    assert "Traceback" not in err
    assert list((tmp_path / "ckpt").glob("manifests/*.json"))  # the run is kept
