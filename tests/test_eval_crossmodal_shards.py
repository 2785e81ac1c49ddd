"""The cross-modal suite's real-shard path on tiny synthetic audio-visual shards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from launch.evals import run_suite
from launch.evals.crossmodal_shards import answerable, query_facts
from obs_dist.tasks import IGNORE


def test_only_queries_about_objects_seen_earlier_are_scored() -> None:
    batch = {"objects": torch.tensor([[-1, 2, -1, 3, -1, -1]]),
             "targets": torch.tensor([[IGNORE, IGNORE, IGNORE, IGNORE, 2, 5]])}
    out = answerable(batch, classes=6)
    assert out["targets"].tolist() == [[IGNORE] * 4 + [2, IGNORE]]
    assert out["candidates"].tolist() == [[False, False, True, True, False, False]]
    delay, count = query_facts(out)
    assert int(delay[0, 4]) == 1 and int(count[0, 4]) == 2  # seen 3 steps = 1 clip ago


def test_silent_distractors_are_not_study_clips() -> None:
    # Clips: 0 study (object 2, audio+video), 1 silent distractor (object 4, video
    # only), 2 query for 2, 3 query for 4. Split: audio on even steps, video on odd.
    audio = torch.tensor([[True, False, False, False, True, False, True, False]])
    video = torch.tensor([[False, True, False, True, False, False, False, False]])
    batch = {"objects": torch.tensor([[-1, 2, -1, 4, -1, -1, -1, -1]]),
             "targets": torch.tensor([[IGNORE] * 4 + [2, IGNORE, 4, IGNORE]]),
             "audio_mask": audio, "video_mask": video}
    out = answerable(batch, classes=6)
    assert out["candidates"].tolist() == [[False, False, True, False, False, False]]
    assert out["targets"].tolist() == [[IGNORE] * 4 + [2, IGNORE, IGNORE, IGNORE]]
    delay, count = query_facts(out)
    assert int(delay[0, 4]) == 1 and int(count[0, 4]) == 1  # one clip between; one studied


def test_shard_path_trains_and_scores(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    made = subprocess.run(
        [sys.executable, "-m", "launch.cli", "make-shards", "--synthetic", "--out", str(shards),
         "--streams", "4", "--clips-per-stream", "12", "--frames", "2", "--image-size", "16",
         "--classes", "6", "--query-fraction", "0.4", "--json"],
        capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    torch.set_num_threads(1)
    out = run_suite("crossmodal", None, [
        f"shards={shards}", "model.encoder=av", "model.image_size=16", "models=['obs', 'gru']",
        "task.batch=4", "shards_window=8", "train.steps=2", "eval_batches=1"], quick=True)
    assert out["path"] == f"shards:{shards}" and out["classes"] >= 6
    for row in out["results"]:
        assert row["queries"] > 0 and 0.0 <= row["accuracy"] <= 1.0
    assert set(out["shards"]["obs"]["by_delay"]) <= {"0-7", "8-15", "16-31", "32-63", "64+"}


def test_episode_shards_with_held_out_streams(tmp_path: Path) -> None:
    """Episodes with per-stream names: every scored query has its episode's objects and delay."""
    for name, seed in (("train", "0"), ("eval", "1")):
        made = subprocess.run(
            [sys.executable, "-m", "launch.cli", "make-shards", "--synthetic",
             "--out", str(tmp_path / name), "--streams", "3", "--clips-per-stream", "20",
             "--frames", "2", "--image-size", "16", "--classes", "8", "--names", "stream",
             "--layout", "episodes", "--episode-objects", "3", "--episode-delays", "4",
             "--seed", seed, "--json"], capture_output=True, text=True, timeout=300)
        assert made.returncode == 0, made.stderr
    torch.set_num_threads(1)
    out = run_suite("crossmodal", None, [
        f"shards={tmp_path / 'train'}", f"shards_eval={tmp_path / 'eval'}", "model.encoder=av",
        "model.image_size=16", "models=['obs', 'gru']", "task.batch=3", "shards_window=10",
        "train.steps=2", "eval_batches=2", "primary=[3, 4]", "audio_words_steps=5",
        "audio_words_utterances=20", "video_objects_steps=5", "video_objects_clips=30"],
        quick=True)
    assert out["path"].endswith(f"held out: {tmp_path / 'eval'}")
    # One word recognizer for both models, trained on the names the training streams say.
    words = out["audio_words"]
    assert words["utterances"] == 20 and 3 <= words["words"] <= 20
    assert 0.0 <= words["word_accuracy"] <= 1.0
    # And one object recognizer, on the object labels of the training streams' video.
    objects = out["video_objects"]
    # Its labels are the whole class vocabulary (classes.json), not only the 8 drawn.
    assert objects["clips"] == 30 and objects["objects"] == 48 and objects["steps"] == 5
    assert 0.0 <= objects["object_accuracy"] <= 1.0
    scores = out["shards"]["obs"]
    # Episodes (3 study, 4 distractors, 3 queries) fill the 10-clip windows exactly.
    assert set(scores["by_episode_objects"]) == {3} and scores["queries"] == 2 * 3 * 3
    assert scores["headline"]["queries"] == scores["queries"]
    assert out["results"][0]["headline"] == scores["headline"]["accuracy"]
