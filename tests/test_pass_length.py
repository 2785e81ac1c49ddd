"""How many batches one pass gives, told before the pass (the progress bar's total).

A one-pass ``av-stream`` run's progress bar counted to ``train.steps`` (100,000
in ``configs/av_stream.toml``) and showed hundreds of hours left on a pass of a
few minutes. :meth:`StreamLoader.pass_batches` plays the lanes out on the clip
counts of ``index.json``; it must equal the batches the loader then delivers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cutter_probe import write_test_recording
from pipelines.loader import DataConfig, StreamLoader
from pipelines.pack import pack_folder
from pipelines.synthetic import SyntheticConfig, write_synthetic


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five recordings of uneven length (40, 20, 9, 33 and 16 clips), packed."""
    root = tmp_path_factory.mktemp("pass")
    for i, seconds in enumerate((40, 20, 9, 33, 16)):
        write_test_recording(root / "rec" / f"r{i}.mp4", float(seconds), width=32, height=32,
                             fps=4, audio_track=False)
    pack_folder(root / "rec", str(root / "shards"), target_bytes=1 << 20, progress=False)
    return root / "shards"


def _loader(source: Path, **overrides: object) -> StreamLoader:
    settings: dict[str, object] = {"source": str(source), "streams": 2, "window": 16,
                                   "workers": 0, "frames": 1, "image_size": 8, "n_mels": 8,
                                   "audio_seconds": 0.1, **overrides}
    return StreamLoader(DataConfig(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("overrides", [
    {},
    {"window": 7},
    {"streams": 3, "window": 5},
    {"streams": 1, "window": 64},
    {"mode": "shuffled", "seed": 3, "window": 11},
    {"streams": 4, "window": 8, "workers": 2},
])
def test_the_pass_length_told_is_the_pass_delivered(recorded: Path,
                                                     overrides: dict[str, object]) -> None:
    loader = _loader(recorded, **overrides)
    told = loader.pass_batches()
    assert told is not None and told == sum(1 for _ in loader)


def test_endless_or_untold_data_has_no_pass_length(recorded: Path, tmp_path: Path) -> None:
    assert _loader(recorded, loop=True).pass_batches() is None
    assert _loader(recorded, mode="resampled").pass_batches() is None
    # Synthetic shards put several streams in a shard: their lengths are not in the index.
    write_synthetic(str(tmp_path / "syn"), SyntheticConfig(streams=4, clips_per_stream=4,
                                                           frames=1, image_size=16),
                    target_bytes=1 << 30, progress=False)
    assert _loader(tmp_path / "syn").pass_batches() is None
