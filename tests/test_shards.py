"""Shard writing: synthetic generation, folder packing, tar/WebDataset compatibility, CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from launch.cli import main as obs_main
from pipelines import render
from pipelines.pack import pack_folder
from pipelines.render import encode_audio, encode_mp4, speak
from pipelines.schema import CLASSES, SampleMeta
from pipelines.shards import Sample, ShardWriter, parse_index, shard_chains
from pipelines.synthetic import NAME_WORDS, SyntheticConfig, generate_stream, write_synthetic

SMALL = SyntheticConfig(streams=6, clips_per_stream=10, image_size=32, seed=3)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "shards"
    write_synthetic(str(out), SMALL, target_bytes=400_000, progress=False)
    return out


def _samples(directory: Path) -> list[tuple[str, dict[str, bytes]]]:
    """Samples of every shard, read with the standard library only."""
    out: list[tuple[str, dict[str, bytes]]] = []
    for shard in sorted(directory.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                if not out or out[-1][0] != key:
                    out.append((key, {}))
                data = tar.extractfile(member)
                assert data is not None
                out[-1][1][ext] = data.read()
    return out


def test_synthetic_schema_roles_and_kinds(synthetic_dir: Path) -> None:
    samples = _samples(synthetic_dir)
    assert len(samples) == SMALL.streams * SMALL.clips_per_stream
    metas = [SampleMeta.from_json(m["json"]) for _, m in samples]
    assert [k for k, _ in samples] == [m.key for m in metas]
    assert {m.kind for m in metas} == {"continuous", "discrete"}
    roles = Counter(m.role for m in metas)
    assert roles["study"] > roles["query"] > 0
    for (_key, members), meta in zip(samples, metas):
        assert meta.duration == pytest.approx(1.0) and meta.t0 == pytest.approx(meta.index)
        assert meta.labels["object"] in CLASSES
        if meta.role == "query":  # audio only, the name of an object seen before
            assert set(members) == {"json", "flac"} and meta.labels["word"]
        else:
            assert set(members) == {"json", "mp4", "flac"}
    by_stream: dict[str, list[SampleMeta]] = {}
    for meta in metas:
        by_stream.setdefault(meta.stream, []).append(meta)
    for clips in by_stream.values():
        assert [c.index for c in clips] == list(range(SMALL.clips_per_stream))
        seen: set[str | None] = set()
        for clip in clips:
            if clip.role == "query":
                assert clip.labels["object"] in seen
            seen.add(clip.labels["object"])
        study = [c.labels["object"] for c in clips if c.role == "study"]
        if clips[0].kind == "continuous":  # scenes last several clips
            assert len(set(study)) <= len(study) // 2 + 1


def test_synthetic_index_and_classes(synthetic_dir: Path) -> None:
    classes = json.loads((synthetic_dir / "classes.json").read_text())["classes"]
    assert classes == list(CLASSES) and len(classes) >= 32
    index = parse_index((synthetic_dir / "index.json").read_bytes())
    assert sum(e["samples"] for e in index) == 60
    assert not any(e["continues"] for e in index)  # small streams are never split
    assert [e["name"] for e in index] == sorted(p.name for p in synthetic_dir.glob("*.tar"))


def test_synthetic_is_deterministic(tmp_path: Path, synthetic_dir: Path) -> None:
    cfg = SyntheticConfig(streams=2, clips_per_stream=4, image_size=32, seed=3)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        cfg.seed = seed
        write_synthetic(str(out), cfg, target_bytes=10 << 20, progress=False)
    shard = "shard-000000.tar"
    assert (a / shard).read_bytes() == (b / shard).read_bytes()
    assert (a / shard).read_bytes() != (c / shard).read_bytes()


def test_episodes_with_stream_names() -> None:
    """Study n named objects, d silent distractors, n queries; each stream its own words."""
    cfg = SyntheticConfig(streams=2, clips_per_stream=42, frames=2, image_size=16, classes=12,
                          names="stream", layout="episodes", episode_objects=[4],
                          episode_delays=[6], seed=5)
    n, d = 4, 6
    named: list[dict[str, str]] = []
    for i in range(cfg.streams):
        clips = list(generate_stream(cfg, i, "discrete"))
        assert [c.meta.index for c in clips] == list(range(cfg.clips_per_stream))
        words: dict[str, str] = {}
        for start in range(0, cfg.clips_per_stream, 2 * n + d):
            study, rest = clips[start:start + n], clips[start + n:start + 2 * n + d]
            distractors, queries = rest[:d], rest[d:]
            studied = [c.meta.labels["object"] for c in study]
            assert len(set(studied)) == n
            for c in study:  # video and a spoken name from the pool
                assert set(c.members) == {"mp4", "flac"} and c.meta.labels["word"] in NAME_WORDS
                words.setdefault(c.meta.labels["object"], c.meta.labels["word"])
                assert words[c.meta.labels["object"]] == c.meta.labels["word"]
            for c in distractors:  # silent video of an object not studied in the episode
                assert set(c.members) == {"mp4"} and c.meta.labels["word"] is None
                assert c.meta.labels["object"] not in studied
            assert sorted(c.meta.labels["object"] for c in queries) == sorted(studied)
            for c in queries:  # audio only, the episode's word for the object
                assert set(c.members) == {"flac"} and c.meta.role == "query"
                assert c.meta.labels["word"] == words[c.meta.labels["object"]]
        assert len(set(words.values())) == len(words)  # one word per object
        named.append(words)
    common = set(named[0]) & set(named[1])
    assert common and any(named[0][o] != named[1][o] for o in common)
    again = [c.meta.to_json() for c in generate_stream(cfg, 1, "discrete")]
    assert again == [c.meta.to_json() for c in generate_stream(cfg, 1, "discrete")]


@pytest.mark.parametrize("bad", [{"names": "episode"}, {"layout": "blocks"},
                                 {"layout": "episodes", "classes": 4, "episode_objects": [4]},
                                 {"episode_delays": [-1]}, {"episode_objects": []}])
def test_synthetic_config_refuses_bad_episodes(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)  # type: ignore[arg-type]


def test_shards_are_plain_tars_for_tar_and_webdataset(synthetic_dir: Path) -> None:
    shards = sorted(str(p) for p in synthetic_dir.glob("*.tar"))
    if shutil.which("tar"):
        listing = subprocess.run(["tar", "-tf", shards[0]], capture_output=True, text=True,
                                 check=True).stdout.split()
        assert listing[0].endswith(".json") and any(n.endswith(".mp4") for n in listing)
    import webdataset as wds

    seen = []
    for sample in wds.WebDataset(shards, shardshuffle=False):
        meta = json.loads(sample["json"])
        assert sample["__key__"] == f"{meta['stream']}/{meta['index']:06d}"
        assert "flac" in sample
        seen.append(sample["__key__"])
    assert len(seen) == 60 and len(set(seen)) == 60


def test_speech_fallback_without_espeak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    render._espeak.cache_clear()  # utterances spoken by espeak-ng earlier are cached
    red = speak("striped red star", "en-us", 280, max_seconds=0.9)
    blue = speak("striped blue star", "en-us", 280, max_seconds=0.9)
    assert 0.2 * 16000 < len(red) <= 0.9 * 16000 and np.abs(red).max() > 0.1
    n = min(len(red), len(blue))
    assert not np.allclose(red[:n], blue[:n], atol=0.05)


def _meta(stream: str, index: int) -> SampleMeta:
    return SampleMeta(stream, index, float(index), 1.0, "continuous", {}, "study")


def test_long_stream_split_into_a_chain(tmp_path: Path) -> None:
    audio = encode_audio(np.zeros(8000, np.float32), "wav")  # 16 kB each
    with ShardWriter(str(tmp_path), target_bytes=40_000) as writer:
        writer.write_stream([Sample(_meta("long", i), {"wav": audio}) for i in range(8)])
        writer.write_stream([Sample(_meta("short", i), {"wav": audio}) for i in range(1)])
    index = parse_index((tmp_path / "index.json").read_bytes())
    assert len(index) > 2 and [e["continues"] for e in index][1] is True
    chains = shard_chains(index)
    assert len(chains) == 2 and chains[1] == [index[-1]["name"]]
    unordered = ShardWriter(str(tmp_path / "x"))
    unordered.write(Sample(_meta("s", 2), {"wav": audio}))
    with pytest.raises(ValueError, match="increasing index"):
        unordered.write(Sample(_meta("s", 1), {"wav": audio}))


def test_writer_refuses_to_mix_with_existing_shards(tmp_path: Path, synthetic_dir: Path) -> None:
    with pytest.raises(ValueError, match="already holds shards"):
        ShardWriter(str(synthetic_dir))
    with pytest.raises(ValueError, match="neither video nor audio"):
        Sample(_meta("s", 0), {})


def _flac(seconds: float) -> bytes:
    return encode_audio(0.1 * np.ones(int(16000 * seconds), np.float32))


def test_pack_folder_with_sidecars_and_bad_files(tmp_path: Path) -> None:
    src = tmp_path / "media"
    (src / "kitchen").mkdir(parents=True)
    (src / "garden").mkdir()
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    (src / "kitchen" / "b.mp4").write_bytes(encode_mp4(frames, 8.0))
    (src / "kitchen" / "b.wav").write_bytes(encode_audio(np.zeros(16000, np.float32), "wav"))
    (src / "kitchen" / "a.flac").write_bytes(_flac(0.5))
    (src / "kitchen" / "a.json").write_text(json.dumps({"labels": {"object": "cup",
                                                                   "word": "cup"}}))
    (src / "garden" / "x.flac").write_bytes(_flac(2.0))
    (src / "garden" / "x.json").write_text(json.dumps({"index": 5, "kind": "continuous"}))
    (src / "garden" / "y.flac").write_bytes(_flac(1.0))
    (src / "garden" / "y.json").write_text(json.dumps({"index": 2}))
    (src / "garden" / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (src / "garden" / "broken.flac").write_bytes(_flac(1.0))
    (src / "garden" / "broken.json").write_text("{oops")
    (src / "garden" / "lonely.json").write_text("{}")
    (src / "top.wav").write_bytes(encode_audio(np.zeros(16000, np.float32), "wav"))
    summary = pack_folder(src, str(tmp_path / "out"), target_bytes=1 << 20, progress=False)
    assert summary["skipped"] == {"video_decode": 1, "json_malformed": 1, "no_modality": 1}
    samples = _samples(tmp_path / "out")
    keys = [k for k, _ in samples]
    assert keys == ["garden/000002", "garden/000005", "kitchen/000000", "kitchen/000001",
                    "media/000000"]
    metas = {k: SampleMeta.from_json(m["json"]) for k, m in samples}
    assert metas["kitchen/000000"].labels["object"] == "cup"
    assert metas["kitchen/000000"].duration == pytest.approx(0.5)
    assert metas["kitchen/000001"].t0 == pytest.approx(0.5)
    assert set(dict(samples)["kitchen/000001"]) == {"json", "mp4", "wav"}
    assert metas["garden/000005"].kind == "continuous"
    assert metas["garden/000002"].kind == "discrete"
    with pytest.raises(ValueError, match="not a directory"):
        pack_folder(tmp_path / "nope", str(tmp_path / "o2"), progress=False)


def test_cli_make_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = obs_main(["make-shards", "--synthetic", "--out", str(out), "--streams", "2",
                     "--clips-per-stream", "3", "--image-size", "32", "--audio-format", "wav",
                     "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples"] == 6 and summary["shards"] >= 1
    member = _samples(out)[0][1]
    assert "wav" in member and soundfile.info(io.BytesIO(member["wav"])).samplerate == 16000
    assert obs_main(["make-shards", "--synthetic", "--out", str(out)]) == 2  # exists
    assert obs_main(["make-shards", "--synthetic", "--out", str(tmp_path / "o"),
                     "--shard-size", "lots"]) == 2
    assert "--shard-size 'lots'" in capsys.readouterr().err
