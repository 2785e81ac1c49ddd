"""Long synthetic recordings: one mp4 with video and AAC audio, srt and objects.json sidecars."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from launch.cli import main as obs_main
from pipelines.recording_gen import (
    FILLERS,
    PSEUDO_WORDS,
    RECORDING_VOICES,
    RecordingConfig,
    generate_recording,
    recording_words,
    write_recordings,
)
from pipelines.recording_media import SOUND_KINDS, sound_event
from pipelines.render import speak
from pipelines.schema import CLASSES

SMALL = RecordingConfig(recordings=2, seconds=20.0, names="recording", seed=1, size=32,
                        classes=3, objects_per_recording=3, scene_seconds=(5.0, 10.0),
                        name_gap=(2.0, 4.0), sound_rate=6.0)
_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+)\n")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("recs")
    return out, write_recordings(out, SMALL, progress=False)


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of each SubRip cue; every cue must match."""
    cues = []
    for block in text.strip().split("\n\n"):
        m = _CUE.fullmatch(block + "\n")
        assert m, f"bad srt cue {block!r}"
        g = [int(x) for x in m.groups()[1:9]]
        cues.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000,
                     g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000, m.group(10)))
    return cues


def _named(text: str, words: dict[str, str]) -> list[str]:
    """The objects whose word occurs in ``text`` (as a whole word)."""
    return [obj for obj, w in words.items() if re.search(rf"\b{re.escape(w)}\b", text)]


def _decode(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    return frames, audio


def test_mp4_has_one_video_and_one_audio_stream(written: tuple[Path, dict[str, Any]]) -> None:
    out, _ = written
    for i in range(SMALL.recordings):
        path = out / f"rec_{i:03d}.mp4"
        with av.open(str(path)) as c:
            assert [s.type for s in c.streams] == ["video", "audio"]
            video, audio = c.streams.video[0], c.streams.audio[0]
            assert video.average_rate == SMALL.fps and (video.width, video.height) == (32, 32)
            assert audio.codec_context.name == "aac" and audio.rate == SMALL.sample_rate
            assert audio.codec_context.channels == 1
            assert c.duration / 1e6 == pytest.approx(SMALL.seconds, abs=0.5)
        frames, samples = _decode(path)
        assert len(frames) == SMALL.seconds * SMALL.fps
        assert len(samples) / SMALL.sample_rate == pytest.approx(SMALL.seconds, abs=0.5)


def test_utterances_start_near_their_object_in_view(
        written: tuple[Path, dict[str, Any]]) -> None:
    out, summary = written
    namings = 0
    for rec in summary["recordings"]:
        cues = parse_srt((out / f"{rec['name']}.srt").read_text())
        spans = json.loads((out / f"{rec['name']}.objects.json").read_text())
        assert {s["object"] for s in spans} <= set(rec["objects"])
        assert all(0 <= s["start"] < s["end"] <= SMALL.seconds for s in spans)
        assert len(cues) == rec["utterances"]
        for start, end, text in cues:
            assert 0 <= start < end <= SMALL.seconds
            objects = _named(text, rec["words"])
            if not objects:
                assert text in FILLERS
                continue
            assert len(objects) == 1, text
            namings += 1
            gaps = [max(s["start"] - start, 0.0, start - s["end"]) for s in spans
                    if s["object"] == objects[0]]
            assert min(gaps) <= SMALL.name_tolerance, (text, start)
    assert namings >= 4


def test_names_per_recording_and_per_class(written: tuple[Path, dict[str, Any]],
                                           tmp_path: Path) -> None:
    _, summary = written
    first, second = (r["words"] for r in summary["recordings"])
    shared = set(first) & set(second)
    assert shared and all(first[o] != second[o] for o in shared)
    assert all(w in PSEUDO_WORDS for w in first.values())
    assert len({w[:2] for w in first.values()}) == len(first)  # distinct first sounds
    assert obs_main(["make-recordings", "--out", str(tmp_path), "--recordings", "1",
                     "--seconds", "12", "--size", "16", "--names", "class", "--classes", "2",
                     "--objects-per-recording", "2", "--scene-seconds", "4,6", "--json"]) == 0
    cues = parse_srt((tmp_path / "rec_000.srt").read_text())
    words = {o: o for o in CLASSES}
    assert cues and all(len(_named(t, words)) == 1 or t in FILLERS for _, _, t in cues)
    assert recording_words(RecordingConfig(classes=2, objects_per_recording=2), 5) == \
        {0: CLASSES[0], 1: CLASSES[1]}
    # A held-out set of objects: classes 24-47 only, never one of 0-23.
    foreign = [recording_words(RecordingConfig(classes=24, first_class=24), i) for i in range(8)]
    assert all(24 <= c < 48 for words in foreign for c in words)
    assert len({c for words in foreign for c in words}) > 12
    with pytest.raises(ValueError, match="first_class"):
        RecordingConfig(classes=24, first_class=25)


def test_narration_is_in_the_audio(written: tuple[Path, dict[str, Any]]) -> None:
    out, _ = written
    rate = SMALL.sample_rate
    rec = generate_recording(SMALL, 0)
    _, audio = _decode(out / "rec_000.mp4")
    busy = np.zeros(len(audio), bool)
    for start, end in [(u.start, u.end) for u in rec.utterances] + \
            [(s, e) for s, e, _ in rec.sounds]:
        busy[max(0, int((start - 0.5) * rate)): int((end + 0.8) * rate)] = True
    quiet = audio[~busy]
    assert len(quiet) > 2 * rate
    noise = float(np.sqrt(np.mean(quiet**2)))
    for u in rec.utterances:
        said = audio[int(u.start * rate): int(u.end * rate)]
        assert np.sqrt(np.mean(said**2)) > 2.5 * noise, u.text


def test_same_seed_same_recording(written: tuple[Path, dict[str, Any]],
                                  tmp_path: Path) -> None:
    out, summary = written
    again = write_recordings(tmp_path, SMALL, workers=2, progress=False)
    assert again["recordings"] == summary["recordings"]
    for i in range(SMALL.recordings):
        for ext in (".srt", ".objects.json", ".mp4"):
            assert (tmp_path / f"rec_{i:03d}{ext}").read_bytes() == \
                (out / f"rec_{i:03d}{ext}").read_bytes()
        first, _ = _decode(tmp_path / f"rec_{i:03d}.mp4")
        before, _ = _decode(out / f"rec_{i:03d}.mp4")
        assert all(np.array_equal(a, b) for a, b in zip(first[:16], before[:16]))
    other = generate_recording(RecordingConfig(**{**SMALL.__dict__, "seed": 2}), 0)
    assert [u.text for u in other.utterances] != \
        [t for _, _, t in parse_srt((out / "rec_000.srt").read_text())]
    with pytest.raises(ValueError, match="already has rec_000.mp4"):
        write_recordings(tmp_path, SMALL, progress=False)


def test_22050_hz_audio(tmp_path: Path) -> None:
    cfg = RecordingConfig(recordings=1, seconds=6.0, size=16, sample_rate=22050,
                          scene_seconds=(3.0, 6.0))
    write_recordings(tmp_path, cfg, progress=False)
    with av.open(str(tmp_path / "rec_000.mp4")) as c:
        assert c.streams.audio[0].rate == 22050


@pytest.mark.parametrize("kwargs, name", [
    ({"size": 15}, "size"), ({"fps": 0}, "fps"), ({"names": "stream"}, "names"),
    ({"classes": 4, "objects_per_recording": 5}, "objects_per_recording"),
    ({"scene_seconds": (30.0, 8.0)}, "scene_seconds"), ({"sample_rate": 44100}, "sample_rate"),
    ({"carrier_fraction": 1.5}, "carrier_fraction"), ({"voices": ()}, "voices"),
])
def test_bad_arguments_are_named(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RecordingConfig(**kwargs)


def test_bad_cli_argument_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert obs_main(["make-recordings", "--out", str(tmp_path), "--size", "15"]) == 2
    assert "size" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_voices_and_pitches_sound_different() -> None:
    waves = [speak("look, the dax", v, 170, 4.0, pitch=50) for v in RECORDING_VOICES]
    sigs = {(len(w), round(float(np.abs(w).sum()), 2)) for w in waves}
    assert len(sigs) == len(RECORDING_VOICES)
    low, high = (speak("dax", RECORDING_VOICES[0], 170, 4.0, pitch=p) for p in (20, 80))
    assert len(low) != len(high) or not np.allclose(low, high)


def test_pseudo_word_pool() -> None:
    assert len(set(PSEUDO_WORDS)) == len(PSEUDO_WORDS) > 1000
    assert PSEUDO_WORDS[:3] == ("dax", "blicket", "toma")
    vocabulary = {w for name in CLASSES for w in name.split()}
    assert not vocabulary & set(PSEUDO_WORDS)


def test_sounds_are_finite_and_bounded() -> None:
    for seed in range(60):
        rng = np.random.default_rng(seed)
        for kind in SOUND_KINDS:
            wave = sound_event(kind, rng, 16000)
            assert len(wave) and np.isfinite(wave).all() and np.abs(wave).max() <= 0.31, kind
    with pytest.raises(ValueError, match="sound kind"):
        sound_event("bark", np.random.default_rng(0), 16000)
