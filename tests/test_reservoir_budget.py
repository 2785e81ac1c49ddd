"""The rehearsal reservoir's memory, estimated and refused before a run starts.

The reservoir keeps up to ``rehearsal.capacity`` whole batches on the host and
fills as the pass goes, so a run whose batches are large (bigger frames, more
streams) would be killed by the OOM killer hours in. The runner estimates it
(``pipelines.rehearsal.batch_bytes`` × the batches it will keep) and refuses a
run that cannot hold it, with the figure and the capacity that would fit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.tiny_run import obs

from pipelines.cutter_probe import write_test_recording
from pipelines.loader import DataConfig, StreamLoader
from pipelines.pack import pack_folder
from pipelines.rehearsal import RehearsalConfig, batch_bytes, reservoir_bytes


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reservoir")
    for name in ("day1", "day2"):
        write_test_recording(root / "rec" / f"{name}.mp4", 20.0, width=32, height=32, fps=4)
    pack_folder(root / "rec", str(root / "shards"), target_bytes=1 << 20, progress=False)
    return root / "shards"


def test_the_estimate_is_what_a_kept_batch_holds(shards: Path) -> None:
    cfg = DataConfig(source=str(shards), streams=2, window=8, frames=2, image_size=16,
                     n_mels=16, workers=0)
    batch = next(iter(StreamLoader(cfg)))
    held = sum(v.numel() * v.element_size() for v in batch.values()
               if isinstance(v, torch.Tensor))
    estimate = batch_bytes(2, 8, 2, 16, 16, cfg.audio_frames)
    assert held <= estimate <= 1.1 * held + 16 * 256
    # A pass shorter than the capacity keeps every new batch, no more.
    assert reservoir_bytes(RehearsalConfig(ratio=3, capacity=256), 1000, 5) == 5000
    assert reservoir_bytes(RehearsalConfig(ratio=3, capacity=4), 1000, None) == 4000
    assert reservoir_bytes(RehearsalConfig(ratio=0), 1000, 5) == 0


def test_a_reservoir_that_cannot_fit_is_refused_before_training(shards: Path,
                                                               tmp_path: Path) -> None:
    # 16,384² frames: ~48 GiB a batch of 2 × 16 clips, more than any test machine has.
    args = ["train", "--config", "configs/av_stream.toml", "--resume", "never"]
    for item in [f"data.source={shards}", "data.streams=2", "task.batch=2", "data.window=16",
                 "data.image_size=16384", "model.image_size=16384", "model.stream.negative_gap=8",
                 "rehearsal.ratio=1",
                 "train.progress=false", f"out_dir={tmp_path / 'run'}",
                 f"checkpoint.url={tmp_path / 'ckpt'}"]:
        args += ["--set", item]
    proc = obs(*args)
    assert proc.returncode != 0
    assert "the rehearsal reservoir would grow to ~" in proc.stderr, proc.stderr[-2000:]
    assert "not one batch fits: make the batches smaller" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "ckpt").glob("manifests/*.json"))
