"""Item 7 of issue #15: shards are checked against index.json; keys against sample json.

A shard whose size or sample count differs from ``index.json`` is counted as
``shard_mismatch``; a shard listed there that ends without its end-of-archive
marker (cut at a member boundary) is damaged (``shard_read``), and its last,
possibly incomplete, sample is not delivered; a sample whose json names
another stream/index than its tar key is refused as ``json_malformed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.decode import SampleError, decode_sample
from pipelines.loader import DataConfig, StreamLoader
from pipelines.schema import INDEX_FILE
from pipelines.sources import resolve_shards
from pipelines.synthetic import SyntheticConfig, write_synthetic
from pipelines.tario import iter_members, iter_samples

DECODE = {"frames": 2, "image_size": 16, "n_mels": 16, "audio_seconds": 0.5}


def _shards(tmp_path: Path) -> Path:
    out = tmp_path / "shards"
    write_synthetic(str(out), SyntheticConfig(streams=2, clips_per_stream=4, frames=2,
                                              image_size=16, classes=4), progress=False)
    return out


def _loader(source: Path) -> StreamLoader:
    return StreamLoader(DataConfig(source=str(source), streams=2, window=4, workers=0,
                                   **DECODE))  # type: ignore[arg-type]


def test_shards_matching_their_index_count_no_mismatch(tmp_path: Path) -> None:
    loader = _loader(_shards(tmp_path))
    assert list(loader) and "shard_mismatch" not in loader.errors


def test_shard_differing_from_index_json_is_counted_as_shard_mismatch(tmp_path: Path) -> None:
    source = _shards(tmp_path)
    index = json.loads((source / INDEX_FILE).read_text())
    index["shards"][0]["samples"] += 1
    index["shards"][0]["bytes"] += 512
    (source / INDEX_FILE).write_text(json.dumps(index))
    assert len(resolve_shards(str(source)).mismatches) == 1
    loader = _loader(source)
    assert loader.errors["shard_mismatch"] == 1  # the size, known before reading
    list(loader)
    assert loader.errors["shard_mismatch"] == 2  # and the sample count, at the shard's end


def test_sample_json_disagreeing_with_its_tar_key_is_json_malformed(tmp_path: Path) -> None:
    source = _shards(tmp_path)
    with (source / resolve_shards(str(source)).urls[0]).open("rb") as fh:
        sample = next(iter_samples(fh))
    meta = json.loads(sample.members["json"])
    kwargs = {"frames": 2, "image_size": 16, "n_mels": 16, "audio_frames": 8}
    decode_sample(sample.key, sample.members, **kwargs)  # as written: fine
    meta["index"] += 7
    members = {**sample.members, "json": json.dumps(meta).encode()}
    with pytest.raises(SampleError, match="its tar key is") as err:
        decode_sample(sample.key, members, **kwargs)
    assert err.value.kind == "json_malformed"


def test_tar_truncated_at_a_member_boundary_is_a_shard_mismatch_not_a_clip_without_audio(
        tmp_path: Path) -> None:
    out = tmp_path / "shards"
    # wav sorts after mp4: each sample's audio is its last member.
    write_synthetic(str(out), SyntheticConfig(streams=2, clips_per_stream=4, frames=2,
                                              image_size=16, classes=4, audio_format="wav"),
                    progress=False)
    shard = out / resolve_shards(str(out)).urls[0]
    with shard.open("rb") as fh:
        members = list(iter_members(fh))
    names = [name for name, _payload, _offset, _end in members]
    assert len(names) == 24 and names[-1].endswith(".wav") and names[-2].endswith(".mp4")
    cut = members[-2][3]  # right after the last sample's video: its audio and the marker gone
    shard.write_bytes(shard.read_bytes()[:cut])
    last = names[-1].rsplit(".", 1)[0]

    loader = _loader(out)
    assert loader.errors["shard_mismatch"] == 1  # the size, known before reading
    seen: list[str] = []
    for batch in loader:
        for row, keys in enumerate(batch["keys"]):
            for step, key in enumerate(keys):
                if key:
                    seen.append(key)
                    assert batch["audio_mask"][row, step], f"{key} delivered without audio"
    assert len(seen) == 7 and last not in seen  # every complete sample, not the cut one
    assert loader.errors["shard_mismatch"] == 2  # and the sample count, at the shard's end
    assert loader.errors["shard_read"] == 1  # the missing end-of-archive marker
