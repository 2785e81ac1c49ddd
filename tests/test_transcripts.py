"""Timed labels of long recordings: transcripts, subtitles and object spans → clip labels.

``rec.srt``/``rec.vtt``/``rec.transcript.json`` (Whisper's JSON too) set
``labels.word`` and ``rec.objects.json`` sets ``labels.object`` on the clips of
``rec.mp4`` that they overlap most (:mod:`pipelines.transcripts`); a file that
cannot be parsed is counted and the recording is packed without it, and a
camera's telemetry subtitles are not taken for speech.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from support.packed import SMALL
from support.packed import pack as _pack
from support.packed import samples as _samples

from pipelines.cutter_probe import write_test_recording
from pipelines.decode import audio_frames, decode_sample
from pipelines.schema import SampleMeta
from pipelines.sources import resolve_shards
from pipelines.transcripts import (
    clip_labels,
    normalise_word,
    parse_json_cues,
    parse_subtitles,
    read_cues,
)


def test_transcript_and_objects_label_the_clips(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_test_recording(src / "rec.mp4", 12.0, **SMALL)
    (src / "rec.srt").write_text(
        "1\n00:00:02,000 --> 00:00:03,500\nLook, a <i>BALL</i>!\n\n"
        "2\n00:00:03,800 --> 00:00:04,200\nDoggy.\n", "utf-8")
    (src / "rec.objects.json").write_text(json.dumps(  # annotators' spellings vary
        [{"start": 5.0, "end": 6.0, "object": "Ball"},
         {"start": 6.0, "end": 7.0, "object": " ball "},
         {"start": 6.5, "end": 9.0, "object": "dog"}]))
    summary = _pack(src, tmp_path / "out")
    assert summary["samples"] == 12 and summary["skipped"] == {}
    samples = _samples(tmp_path / "out")
    metas = [SampleMeta.from_json(samples[f"rec/{i:06d}"]["json"]) for i in range(12)]
    words = [m.labels["word"] for m in metas]
    objects = [m.labels["object"] for m in metas]
    # Clip 3 overlaps "look a ball" by 0.5 s and "doggy" by 0.2 s: the larger wins.
    assert words == [None, None, "look a ball", "look a ball", "doggy"] + [None] * 7
    assert objects == [None] * 5 + ["ball", "ball", "dog", "dog"] + [None] * 3
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())["classes"]
    assert classes == ["ball", "dog"]
    # The loader's class ids come from that classes.json.
    shards = resolve_shards(str(tmp_path / "out"))
    assert shards.class_ids == {"ball": 0, "dog": 1}
    clip = decode_sample("rec/000007", samples["rec/000007"], frames=2, image_size=16,
                         n_mels=8, audio_frames=audio_frames(1.0), classes=shards.class_ids)
    assert clip.object == 1


def test_malformed_label_files_are_counted_and_the_recording_packs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_test_recording(src / "rec.mp4", 6.0, **SMALL)
    (src / "rec.srt").write_text("1\n00:00:01,000 -> soon\nhello\n", "utf-8")
    (src / "rec.objects.json").write_text('{"start": 1}')
    summary = _pack(src, tmp_path / "out")
    assert summary["samples"] == 6 and summary["skipped"] == {"labels_malformed": 2}
    metas = [SampleMeta.from_json(m["json"]) for m in _samples(tmp_path / "out").values()]
    assert all(m.labels == {"object": None, "word": None} for m in metas)
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == {"classes": []}


def test_subtitle_and_json_cue_parsing() -> None:
    vtt = ("WEBVTT\nKind: captions\n\nNOTE a comment\n\n"
           "intro\n00:01.500 --> 00:02.000 align:start\n<v Mum>Hello, there!</v>\n")
    assert parse_subtitles(vtt) == [(1.5, 2.0, "Hello, there!")]
    # Auto-captions: inline word timings and class spans; entities are text.
    auto = ("WEBVTT\n\n00:00:01.000 --> 00:00:03.500 align:start position:0%\n"
            "look<00:00:01.500><c> at</c><00:00:02.000><c> the</c> ball &amp; cup\n")
    assert parse_subtitles(auto) == [(1.0, 3.5, "look at the ball & cup")]
    assert normalise_word("  Hello, THERE! it's  ") == "hello there it s"
    assert parse_json_cues('[{"start": 0, "end": 1.5, "text": "hi"}]', "text") == \
        [(0.0, 1.5, "hi")]
    for bad in ('[{"start": 2, "end": 1, "text": "x"}]', '[{"start": 0, "end": 1}]', "{}"):
        with pytest.raises(ValueError):
            parse_json_cues(bad, "text")
    # What Whisper writes (`--output_format json`; WhisperX alike): an object whose
    # segments are the cues, with keys of its own; word timings are not used.
    whisper = json.dumps({"text": " Look, the ball. Yes!", "language": "en", "segments": [
        {"id": 0, "seek": 0, "start": 0.0, "end": 1.84, "text": " Look, the ball.",
         "tokens": [50364, 2053], "temperature": 0.0, "avg_logprob": -0.3,
         "words": [{"word": " Look,", "start": 0.0, "end": 0.5, "probability": 0.9}]},
        {"id": 1, "seek": 0, "start": 2.5, "end": 3.0, "text": " Yes!"}]})
    assert parse_json_cues(whisper, "text", segments=True) == \
        [(0.0, 1.84, " Look, the ball."), (2.5, 3.0, " Yes!")]
    with pytest.raises(ValueError, match="JSON list"):
        parse_json_cues(whisper, "text")  # objects files stay lists
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rec.transcript.json"
        path.write_text(whisper, "utf-8")
        assert read_cues(path) == [(0.0, 1.84, "look the ball"), (2.5, 3.0, "yes")]
        srt = Path(tmp) / "rec.srt"  # UTF-16 with its BOM, as Windows tools save it
        srt.write_bytes("1\r\n00:00:01,000 --> 00:00:02,000\r\nÇa, le ballon\r\n".encode("utf-16"))
        assert read_cues(srt) == [(1.0, 2.0, "ça le ballon")]
        srt.write_bytes("1\n00:00:01,000 --> 00:00:02,000\nÇa\n".encode("latin-1"))
        with pytest.raises(ValueError):  # Latin-1 is not guessed at: counted as malformed
            read_cues(srt)
    with pytest.raises(ValueError):
        parse_subtitles("1\nnot a time line\nhello\n")
    labels = clip_labels([(0.1, 0.7, "a"), (0.5, 1.9, "b"), (3.0, 3.0, "empty")], 1.0)
    assert labels == {0: "a", 1: "b"}  # clip 0: "a" overlaps it 0.6 s, "b" 0.5 s


_DJI_SRT = "".join(
    f"{i + 1}\n00:00:{i:02d},000 --> 00:00:{i + 1:02d},000\n"
    f"<font size=\"28\">FrameCnt: {30 * i + 1}, DiffTime: 33ms\n2023-05-01 12:00:{i:02d}.123\n"
    f"[iso: 100] [shutter: 1/500.0] [fnum: 170] [ev: 0] [ct: 5500] [focal_len: 240] "
    f"[latitude: 22.54{i}] [longitude: 113.95{i}] [rel_alt: 1.2 abs_alt: 31.4]</font>\n\n"
    for i in range(6))
_OLD_DJI_SRT = "".join(
    f"{i + 1}\n00:00:{i:02d},000 --> 00:00:{i + 1:02d},000\n"
    f"HOME(113.9512,22.5432) 2019.03.01 12:00:{i:02d}\nGPS(113.9513,22.5431,18) "
    f"ISO:100 Shutter:60 EV:0 Fnum:2.2\n\n" for i in range(6))


@pytest.mark.parametrize("telemetry", [_DJI_SRT, _OLD_DJI_SRT])
def test_a_cameras_telemetry_subtitles_are_not_taken_for_speech(tmp_path: Path,
                                                                 telemetry: str) -> None:
    """Drones and action cameras write GPS and exposure as an .srt beside the video."""
    src = tmp_path / "src"
    src.mkdir()
    write_test_recording(src / "DJI_0001.mp4", 6.0, **SMALL)
    (src / "DJI_0001.srt").write_text(telemetry, "utf-8")
    summary = _pack(src, tmp_path / "out")
    assert summary["samples"] == 6 and summary["skipped"] == {"transcript_telemetry": 1}
    metas = [SampleMeta.from_json(m["json"]) for m in _samples(tmp_path / "out").values()]
    assert all(m.labels["word"] is None for m in metas)


def test_a_transcript_that_mentions_camera_words_stays_a_transcript() -> None:
    from pipelines.transcripts import is_telemetry

    said = [(0.0, 1.0, "look, the speed: 2 cars"), (1.0, 2.0, "iso 100 is fine"),
            (2.0, 3.0, "the gps (on the phone)"), (3.0, 4.0, "home: 3 minutes, speed: 4")]
    assert not is_telemetry(said)
    assert is_telemetry([(0.0, 1.0, "[iso: 100] [shutter: 1/60]")])
