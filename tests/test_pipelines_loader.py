"""The stream loader on local shards: batch contract, ordering, splitting, resume, bad data."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support.loader_keys import batch_keys, flat_keys

from pipelines.loader import DataConfig, build_loader
from pipelines.render import encode_audio, encode_mp4
from pipelines.schema import SampleMeta
from pipelines.synthetic import SyntheticConfig, write_synthetic

DATA = SyntheticConfig(streams=8, clips_per_stream=10, image_size=32, seed=11)
TOTAL = DATA.streams * DATA.clips_per_stream


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loader") / "shards"
    write_synthetic(str(out), DATA, target_bytes=400_000, progress=False)  # a shard per stream
    return out


def _cfg(source: Path | str, **kw: Any) -> DataConfig:
    base: dict[str, Any] = {"source": str(source), "streams": 2, "window": 4, "workers": 0,
                            "image_size": 32, "n_mels": 32}
    base.update(kw)
    return DataConfig(**base)


def test_batch_contract(shards: Path) -> None:
    loader = build_loader(_cfg(shards, streams=2, window=4))
    assert loader.num_classes >= 32
    first = next(iter(loader))
    b, t = 2, 4
    assert first["video"].shape == (b, t, 8, 3, 32, 32) and first["video"].dtype == torch.uint8
    assert first["audio"].shape == (b, t, 32, 101) and first["audio"].dtype == torch.float32
    for name in ("video_mask", "audio_mask", "continuous"):
        assert first[name].shape == (b, t) and first[name].dtype == torch.bool
    for name in ("objects", "targets"):
        assert first[name].shape == (b, t) and first[name].dtype == torch.int64
    assert first["reset"].tolist() == [True, True]
    assert len(first["keys"]) == b and all(len(row) == t for row in first["keys"])
    batches = [first, *list(loader)]
    for batch in batches:
        present = batch["video_mask"] | batch["audio_mask"]
        query = batch["targets"] != -100
        # Query clips are audio only and carry their object as the target.
        assert not (query & batch["video_mask"]).any()
        assert (batch["targets"][query] == batch["objects"][query]).all()
        assert (batch["objects"][present] >= 0).all() and (batch["objects"][~present] == -1).all()
        assert (batch["video"][~batch["video_mask"]] == 0).all()
        assert (batch["audio"][~batch["audio_mask"]] == 0).all()
        pads = [[k == "" for k in row] for row in batch["keys"]]
        assert torch.tensor(pads).eq(~present).all()
    assert sum(int((b["targets"] != -100).sum()) for b in batches) > 0
    assert loader.clips_seen == TOTAL and loader.errors == {}


def test_ordered_rows_follow_streams_in_order(shards: Path) -> None:
    loader = build_loader(_cfg(shards, streams=4, window=3, workers=2))
    current: dict[int, tuple[str, int]] = {}
    seen = []
    for batch in loader:
        for row, keys in enumerate(batch["keys"]):
            live = [k for k in keys if k]
            if not live:
                continue
            stream, index = live[0].rsplit("/", 1)
            if batch["reset"][row]:
                assert int(index) == 0, "a new stream starts at its first clip"
            else:
                assert current[row] == (stream, int(index) - 1), "row continues its stream"
            for k in live:
                assert k.rsplit("/", 1)[0] == stream, "a row never mixes streams"
            assert [int(k.rsplit("/", 1)[1]) for k in live] == \
                list(range(int(index), int(index) + len(live)))
            current[row] = (stream, int(live[-1].rsplit("/", 1)[1]))
            seen += live
    assert sorted(seen) == sorted(set(seen)) and len(seen) == TOTAL


def test_split_by_rank_and_worker_is_disjoint_and_complete(shards: Path) -> None:
    per_rank = []
    for rank in range(2):
        loader = build_loader(_cfg(shards, streams=2, workers=2), rank=rank, world_size=2)
        per_rank.append(set(flat_keys(batch_keys(loader))))
    assert not per_rank[0] & per_rank[1]
    assert len(per_rank[0] | per_rank[1]) == TOTAL
    with pytest.raises(ValueError, match="rank"):
        build_loader(_cfg(shards), rank=2, world_size=2)


def _stream_order(keys: list[list[list[str]]]) -> list[str]:
    order: list[str] = []
    for k in flat_keys(keys):
        stream = k.rsplit("/", 1)[0]
        if stream not in order:
            order.append(stream)
    return order


def test_shuffled_epochs_cover_everything_in_new_orders(shards: Path) -> None:
    loader = build_loader(_cfg(shards, mode="shuffled", streams=1, seed=5))
    epoch0, epoch1 = batch_keys(loader), batch_keys(loader)
    assert sorted(flat_keys(epoch0)) == sorted(flat_keys(epoch1))
    assert len(flat_keys(epoch0)) == TOTAL
    assert _stream_order(epoch0) != _stream_order(epoch1)
    again = build_loader(_cfg(shards, mode="shuffled", streams=1, seed=5))
    assert batch_keys(again) == epoch0
    ordered = build_loader(_cfg(shards, streams=1))
    assert _stream_order(batch_keys(ordered)) == sorted(_stream_order(epoch0))


def test_resampled_is_endless_and_seeded(shards: Path) -> None:
    make = lambda seed, rank=0: build_loader(  # noqa: E731
        _cfg(shards, mode="resampled", seed=seed), rank=rank, world_size=2)
    many = batch_keys(make(1), batches=2 * TOTAL // 8 + 3)
    assert len(flat_keys(many)) > TOTAL  # past the end of the data: drawn with replacement
    assert batch_keys(make(1), batches=6) == many[:6]
    assert batch_keys(make(2), batches=6) != many[:6]
    assert batch_keys(make(1, rank=1), batches=6) != many[:6]


@pytest.mark.parametrize("mode,workers,loop", [("ordered", 2, False), ("shuffled", 0, True),
                                               ("resampled", 2, False)])
def test_resume_continues_at_the_exact_next_sample(shards: Path, mode: str, workers: int,
                                                   loop: bool) -> None:
    cfg = _cfg(shards, mode=mode, workers=workers, loop=loop, streams=2, window=3)
    reference = batch_keys(build_loader(cfg), batches=20)
    first = build_loader(cfg)
    head = batch_keys(first, batches=7)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    assert state["clips_seen"] == len(flat_keys(head))
    resumed = build_loader(cfg)
    resumed.load_state_dict(state)
    tail = batch_keys(resumed, batches=13)
    assert head + tail == reference
    assert resumed.clips_seen == len(flat_keys(reference))


def test_resume_after_the_end_starts_the_next_epoch(shards: Path) -> None:
    cfg = _cfg(shards, streams=2)
    loader = build_loader(cfg)
    everything = batch_keys(loader)
    resumed = build_loader(cfg)
    resumed.load_state_dict(loader.state_dict())
    assert batch_keys(resumed) == everything


def test_state_from_another_setup_is_refused(shards: Path) -> None:
    state = build_loader(_cfg(shards, streams=2)).state_dict()
    with pytest.raises(ValueError, match="streams=2"):
        build_loader(_cfg(shards, streams=4)).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        build_loader(_cfg(shards)).load_state_dict({"workers": []})


@pytest.mark.parametrize("bad,match", [({"mode": "random"}, "mode"), ({"streams": 0}, "streams"),
                                       ({"streams": 3, "workers": 2}, "multiple of workers"),
                                       ({"audio_seconds": 0.0}, "audio_seconds")])
def test_config_validation(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _cfg("x", **bad)


def test_pipe_and_file_sources_read_the_same_samples(shards: Path) -> None:
    names = sorted(p.name for p in shards.glob("*.tar"))
    pattern = f"pipe:cat {shards}/shard-{{000000..{len(names) - 1:06d}}}.tar"
    expected = batch_keys(build_loader(_cfg(shards)))
    assert batch_keys(build_loader(_cfg(pattern))) == expected
    assert batch_keys(build_loader(_cfg(f"file://{shards}"))) == expected
    piped = build_loader(_cfg(pattern))
    head = batch_keys(piped, batches=5)
    resumed = build_loader(_cfg(pattern))
    resumed.load_state_dict(piped.state_dict())
    assert head + batch_keys(resumed) == expected
    with pytest.raises(ValueError, match="no .tar shards"):
        build_loader(_cfg(shards.parent))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _meta(index: int) -> bytes:
    return SampleMeta("bad", index, float(index), 1.0, "discrete",
                      {"object": "solid red circle", "word": None}, "study").to_json()


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory: pytest.TempPathFactory, shards: Path) -> Path:
    out = tmp_path_factory.mktemp("bad")
    mp4 = encode_mp4(np.full((8, 32, 32, 3), 128, np.uint8), 8.0)
    wav = encode_audio(np.zeros(16000, np.float32), "wav")
    rng = np.random.default_rng(0)
    with tarfile.open(out / "a.tar", "w") as tar:
        for i, members in enumerate([
            {"json": _meta(0), "mp4": mp4, "wav": wav},  # good
            {"json": _meta(1), "mp4": mp4[: len(mp4) // 2]},  # truncated mp4
            {"json": _meta(2), "mp4": rng.bytes(3000)},  # random bytes named .mp4
            {"json": _meta(3), "wav": b""},  # empty audio
            {"mp4": mp4},  # no json
            {"json": b'{"stream": "bad", "index": ', "wav": wav},  # malformed json
            {"json": _meta(6)},  # neither modality
            {"json": _meta(7), "wav": wav},  # good
        ]):
            for ext, data in members.items():
                _add(tar, f"bad/{i:06d}.{ext}", data)
    whole = (shards / "shard-000000.tar").read_bytes()
    (out / "b.tar").write_bytes(whole[: len(whole) // 2])  # a shard cut short
    return out


def test_bad_samples_are_skipped_counted_and_logged(bad_shards: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    loader = build_loader(_cfg(bad_shards, streams=1, window=4))
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        keys = flat_keys(batch_keys(loader))
    assert keys[:2] == ["bad/000000", "bad/000007"]
    assert len(keys) > 2 and all(k.startswith("syn") for k in keys[2:])  # b.tar's first half
    assert loader.errors == {"video_decode": 2, "audio_empty": 1, "json_missing": 1,
                             "json_malformed": 1, "no_modality": 1, "shard_read": 1}
    logged = caplog.text
    for i in range(1, 7):
        assert f"bad/{i:06d}" in logged
    assert "b.tar" in logged and "truncated" in logged
    state = loader.state_dict()
    assert state["errors"] == loader.errors  # counts survive a restart


def test_config_builds_from_toml_dicts() -> None:
    from obs_dist.config import from_dict

    cfg = from_dict(DataConfig, {"source": "s3://b/p", "streams": 4, "workers": 2,
                                 "mode": "resampled", "endpoint_url": "http://127.0.0.1:9000"})
    assert cfg.audio_frames == 101 and cfg.endpoint_url == "http://127.0.0.1:9000"
    with pytest.raises(ValueError, match="unknown config key"):
        from_dict(DataConfig, {"source": "x", "batch": 3})
