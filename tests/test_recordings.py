"""Long recordings in ``obs make-shards --from``: cutting, alignment, damage, frame rate.

The recordings are real files encoded here with PyAV (H.264 + AAC in one
container) by :func:`pipelines.cutter_probe.write_test_recording`: dark noisy
frames with one white frame at 20.0 s, silence and then a 1 kHz tone from
10.0 s. They are small (64×48 at 10 fps) so that each test runs in seconds.
"""

from __future__ import annotations

import io
import json
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from support.packed import SMALL
from support.packed import pack as _pack
from support.packed import samples as _samples

from launch.cli import main as obs_main
from pipelines.cutter_probe import write_test_recording
from pipelines.decode import decode_video, read_audio
from pipelines.recordings import FramePicker, clip_count, scaled_size
from pipelines.render import encode_audio, encode_mp4
from pipelines.schema import SampleMeta


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60 s mp4, moov atom first (faststart), with an embedded AAC track."""
    return write_test_recording(tmp_path_factory.mktemp("rec") / "session1.mp4", 60.0, **SMALL)


def _rms(flac: bytes, start: int = 0, stop: int | None = None) -> float:
    wave, _rate = read_audio(flac)
    return float(np.sqrt(np.mean(wave[start:stop] ** 2)))


def test_a_recording_is_cut_into_aligned_clips(recording: Path, tmp_path: Path) -> None:
    src = tmp_path / "src" / "child_a"
    src.mkdir(parents=True)
    shutil.copy(recording, src / "session1.mp4")
    summary = _pack(tmp_path / "src", tmp_path / "out")
    assert summary["samples"] == 60 and summary["streams"] == 1
    assert summary["recordings"] == 1 and summary["skipped"] == {}
    samples = _samples(tmp_path / "out")
    assert list(samples) == [f"child_a/session1/{i:06d}" for i in range(60)]
    for key, members in samples.items():
        meta = SampleMeta.from_json(members["json"])
        assert meta.key == key and meta.kind == "continuous" and meta.role is None
        assert meta.t0 == pytest.approx(meta.index) and meta.duration == pytest.approx(1.0)
        assert set(members) == {"json", "mp4", "flac"}
        wave, rate = read_audio(members["flac"])
        assert rate == 16000 and len(wave) == 16000  # exactly the clip's samples
    clips = [samples[f"child_a/session1/{i:06d}"] for i in range(60)]
    # The tone starts at 10.0 s: clip 9 is silent, clip 10 holds the tone from its start.
    assert max(_rms(c["flac"]) for c in clips[:10]) < 0.01
    assert min(_rms(c["flac"]) for c in clips[10:]) > 0.3
    assert _rms(clips[10]["flac"], 0, 160) > 0.3  # its first 10 ms
    # The white frame (20.0 s) is in clip 20, and is that clip's first frame.
    video = [decode_video(c["mp4"], frames=10, size=32) for c in clips]
    brightness = np.array([v.reshape(10, -1).mean(axis=1) for v in video])  # [clip, frame]
    assert brightness.max(axis=1).argmax() == 20
    assert brightness[20, 0] > 200 and brightness[20, 1:].max() < 60
    assert video[0].shape == (10, 3, 32, 32)
    # a last partial clip counts when it holds at least half a clip
    assert clip_count(4.6, 1.0) == 5 and clip_count(4.4, 1.0) == 4 and clip_count(60, 1) == 60


def test_audio_that_starts_after_the_video_stays_on_the_container_clock(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # The audio track's first pts is 0.5 s; the tone is still at 10.0 s of the clock.
    write_test_recording(src / "late.mkv", 12.0, audio_start=0.5, **SMALL)
    _pack(src, tmp_path / "out")
    clips = [m for _k, m in sorted(_samples(tmp_path / "out").items())]
    assert len(clips) == 12
    assert _rms(clips[9]["flac"]) < 0.01 and _rms(clips[10]["flac"], 0, 160) > 0.3
    wave, _rate = read_audio(clips[0]["flac"])
    assert len(wave) == 16000  # silence before the track begins, then the track


def test_packing_a_recording_twice_gives_the_same_bytes(recording: Path, tmp_path: Path
                                                       ) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(recording, src / "session1.mp4")
    # x264's macroblock-tree rate control encoded some clips to other bytes from run
    # to run (about one clip in ten); the clips' encoder now runs without it.
    for out in ("a", "b"):
        _pack(src, tmp_path / out)
    shards = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert shards == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(shards) > 2
    for name in shards:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_webm_with_vp8_and_opus_stereo_packs_aligned_clips(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_test_recording(src / "phone.webm", 12.0, rate=48000, channels=2, **SMALL)
    summary = _pack(src, tmp_path / "out")
    assert summary["samples"] == 12 and summary["skipped"] == {}
    clips = [m for _k, m in sorted(_samples(tmp_path / "out").items())]
    assert all(set(c) == {"json", "mp4", "flac"} for c in clips)
    wave, rate = read_audio(clips[3]["flac"])
    assert rate == 48000 and wave.ndim == 1 and len(wave) == 48000  # mono, its own rate
    # Opus delays its output by a few ms (pre-skip); the onset stays in clip 10.
    assert _rms(clips[9]["flac"]) < 0.01 and _rms(clips[10]["flac"], 480, 960) > 0.2


def _mean_level(mp4: bytes) -> float:
    """Mean RGB value of a video's frames, decoded as any player would."""
    with av.open(io.BytesIO(mp4)) as container:
        return float(np.mean([f.to_ndarray(format="rgb24").mean()
                              for f in container.decode(video=0)]))


def test_a_head_cameras_avi_keeps_its_levels_and_alignment(tmp_path: Path) -> None:
    # Head and action cameras write AVI with full-range ("JPEG") MJPEG and PCM.
    # Copied into the clips' limited-range yuv420p without conversion, the
    # dark background (~28 of 255) came back at ~13 and mid-greys were
    # stretched: the range is now converted, so the clip looks like the source.
    src = tmp_path / "src"
    src.mkdir()
    path = write_test_recording(src / "HEADCAM.AVI", 24.0, **SMALL)
    with av.open(str(path)) as container:
        first = next(container.decode(video=0))
        assert first.format.name == "yuvj420p"  # the fixture is what the test is about
        source_level = float(first.to_ndarray(format="rgb24").mean())
    summary = _pack(src, tmp_path / "out")
    assert summary["samples"] == 24 and summary["skipped"] == {}
    clips = [m for _k, m in sorted(_samples(tmp_path / "out").items())]
    assert all(set(c) == {"json", "mp4", "flac"} for c in clips)
    assert abs(_mean_level(clips[3]["mp4"]) - source_level) < 3.0
    assert _rms(clips[9]["flac"]) < 0.01 and _rms(clips[10]["flac"], 0, 160) > 0.3
    brightness = [_mean_level(c["mp4"]) for c in clips]
    assert int(np.argmax(brightness)) == 20


def _mux_frames(out: Any, stream: Any, images: list[np.ndarray], rate: int) -> None:
    """RGB images as the frames of ``stream`` at ``rate`` per second, then its flush."""
    for i, image in enumerate(images):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def test_a_phone_recording_held_upright_is_packed_upright(tmp_path: Path) -> None:
    # Phones store portrait video as landscape frames plus a display rotation;
    # the clips were packed sideways. Frame: grey top strip, white left half.
    src = tmp_path / "src"
    src.mkdir()
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :32] = 255
    image[:8] = 128
    with av.open(str(src / "phone.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)  # counter-clockwise, as shown
        _mux_frames(out, stream, [image] * 12, 4)
    assert _pack(src, tmp_path / "out")["samples"] == 3
    with av.open(io.BytesIO(_samples(tmp_path / "out")["phone/000000"]["mp4"])) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (32, 64) and frame.rotation == 0
        shown = frame.to_ndarray(format="rgb24").mean(axis=2)
    # Turned a quarter counter-clockwise: the strip on the left, white below, black above.
    assert shown[:, :6].mean() == pytest.approx(128, abs=8)
    assert shown[40:, 12:].mean() > 240 and shown[:24, 12:].mean() < 15


@pytest.mark.parametrize(("tags", "tolerance"), [
    ({"color_range": 2}, 3.0),  # full range, as phones record: 30 came back at ~16
    ({"colorspace": 1}, 6.0),   # BT.709: red (200, 40, 40) came back as ~(185, 23, 41)
])
def test_tagged_colour_is_converted_into_the_clips(tags: dict[str, int], tolerance: float,
                                                   tmp_path: Path) -> None:
    painted = np.zeros((48, 64, 3), np.uint8)
    painted[:, :32] = 30
    painted[:, 32:] = (200, 40, 40)
    src = tmp_path / "src"
    src.mkdir()
    with av.open(str(src / "tagged.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for key, value in tags.items():
            setattr(stream.codec_context, key, value)
        for i in range(8):  # the frames stored as the tags say
            frame = av.VideoFrame.from_ndarray(painted, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=tags.get("colorspace"),
                dst_color_range=tags.get("color_range"))
            frame.pts, frame.time_base = i, Fraction(1, 4)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    assert _pack(src, tmp_path / "out")["samples"] == 2
    with av.open(io.BytesIO(_samples(tmp_path / "out")["tagged/000000"]["mp4"])) as container:
        shown = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(float)
    # Away from the edge that 4:2:0 chroma blurs.
    for region, colour in ((shown[8:40, 4:24], (30, 30, 30)), (shown[8:40, 40:60],
                                                             (200, 40, 40))):
        assert np.abs(region.reshape(-1, 3).mean(0) - np.array(colour)).max() < tolerance


def test_recordings_cut_by_worker_processes_give_the_same_shards(recording: Path,
                                                                tmp_path: Path) -> None:
    # SAYCam is hundreds of hours: one core cuts ~10 VGA clips/s. Workers cut whole
    # recordings at once; this process writes them in order, so nothing changes.
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    write_test_recording(src / "a.mp4", 12.0, **SMALL)
    write_test_recording(src / "b" / "c.webm", 8.0, **SMALL)
    (src / "a.srt").write_text("1\n00:00:02,000 --> 00:00:03,500\nLook, a ball!\n", "utf-8")
    data = recording.read_bytes()
    (src / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])  # counted as truncated
    (src / "broken.mkv").write_bytes(b"not a video")  # counted as undecodable
    one = _pack(src, tmp_path / "one")
    two = _pack(src, tmp_path / "two", workers=2)
    assert one["skipped"] == two["skipped"] and set(one["skipped"]) == {
        "recording_truncated", "video_decode"}
    assert one["samples"] == two["samples"] and one["recordings"] == two["recordings"] == 3
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    with pytest.raises(ValueError, match="workers"):
        _pack(src, tmp_path / "three", workers=0)


def test_recordings_whose_names_sanitise_alike_are_all_packed(recording: Path,
                                                              tmp_path: Path) -> None:
    # Stream names use ASCII letters, digits and _-./: "公园" and "厨房" both became
    # "__", and the second recording was skipped as a clash; so was a recording
    # named like a folder of pre-cut clips.
    src = tmp_path / "src"
    (src / "day").mkdir(parents=True)
    for name in ("公园.mp4", "厨房.mp4", "day.mp4"):
        shutil.copy(recording, src / name)
    (src / "day" / "clip0.mp4").write_bytes(encode_mp4(np.zeros((4, 16, 16, 3), np.uint8), 4.0))
    summary = _pack(src, tmp_path / "out")
    assert summary["skipped"] == {} and summary["recordings"] == 3
    streams = {key.split("/")[0] for key in _samples(tmp_path / "out")}
    assert len(streams) == 4 and "__" in streams and "day" in streams
    again = _pack(src, tmp_path / "again")  # the same names at every pack
    assert again["samples"] == summary["samples"]
    assert streams == {key.split("/")[0] for key in _samples(tmp_path / "again")}

    # Folders of pre-cut clips alike: "公园/" and "厨房/" were merged into one stream.
    clips = tmp_path / "clips"
    for folder in ("公园", "厨房"):
        (clips / folder).mkdir(parents=True)
        for i in range(2):
            (clips / folder / f"c{i}.mp4").write_bytes(
                encode_mp4(np.full((4, 16, 16, 3), 40 * i, np.uint8), 4.0))
    summary = _pack(clips, tmp_path / "clips_out")
    assert summary["streams"] == 2 and summary["samples"] == 4


def test_a_still_picture_track_before_the_video_is_not_taken_for_it(tmp_path: Path) -> None:
    # A Matroska file may carry a one-frame cover or thumbnail as its first video
    # track. Taken for the video, it gave one clip and counted the other nine as
    # lost to damage; the longest moving track is the recording's video.
    src = tmp_path / "src"
    src.mkdir()
    with av.open(str(src / "covered.mkv"), "w") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        video = out.add_stream("libx264", rate=4)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        _mux_frames(out, cover, [np.full((32, 32, 3), 200, np.uint8)], 1)
        _mux_frames(out, video, [np.full((32, 32, 3), 5 * i, np.uint8) for i in range(40)], 4)
    with av.open(str(src / "covered.mkv")) as container:
        assert container.streams.video[0].codec_context.name == "mjpeg"  # the still is first
    summary = _pack(src, tmp_path / "out")
    assert summary["samples"] == 10 and summary["skipped"] == {}
    levels = [_mean_level(m["mp4"]) for _k, m in sorted(_samples(tmp_path / "out").items())]
    assert levels == sorted(levels) and levels[-1] > 150  # the ramp, not the still


def test_pre_cut_mp4_clips_keep_the_sound_inside_them(tmp_path: Path) -> None:
    # One-second mp4 clips (pre-cut: too short to be recordings) with their own AAC
    # track and no wav beside them were packed as video alone: the loader hears
    # flac/wav members, so their sound was lost without a count.
    src = tmp_path / "src" / "cam"
    for i in range(3):
        write_test_recording(src / f"clip{i}.mp4", 1.0, tone_at=0.0, **SMALL)
    summary = _pack(tmp_path / "src", tmp_path / "out")
    assert summary["samples"] == 3 and summary["recordings"] == 0 and summary["skipped"] == {}
    for members in _samples(tmp_path / "out").values():
        assert set(members) == {"json", "mp4", "flac"}
        assert _rms(members["flac"], 0, 16000) > 0.3  # the tone
        wave, rate = read_audio(members["flac"])
        assert rate == 16000 and len(wave) >= 16000


def test_a_long_recording_with_a_json_beside_it_is_not_packed_as_one_clip(
        tmp_path: Path) -> None:
    # A .json beside a video makes it a pre-cut clip: a long recording with one
    # (a sidecar written for it, say) became one "clip" that the loader would
    # decode whole. It is counted and left out, with what to do.
    src = tmp_path / "src"
    src.mkdir()
    write_test_recording(src / "day.mp4", 65.0, **SMALL)
    (src / "day.json").write_text(json.dumps({"kind": "continuous"}))
    write_test_recording(src / "other.mp4", 5.0, **SMALL)
    summary = _pack(src, tmp_path / "out")
    assert summary["skipped"] == {"clip_too_long": 1} and summary["samples"] == 5
    summary = _pack(src, tmp_path / "again", cut="always")  # what the message says
    assert summary["skipped"] == {} and summary["samples"] == 70


def test_audio_that_ends_before_the_video_is_not_damage(tmp_path: Path) -> None:
    # The container's duration is the video's; the audio input (demuxed on its own)
    # took it as its own, so a track that ended at 12 s of 20 looked cut short: the
    # last 8 clips were dropped and counted as truncated.
    src = tmp_path / "src"
    src.mkdir()
    write_test_recording(src / "mic_off.mp4", 20.0, audio_end=12.0, **SMALL)
    summary = _pack(src, tmp_path / "out")
    assert summary["samples"] == 20 and summary["skipped"] == {}
    clips = [m for _k, m in sorted(_samples(tmp_path / "out").items())]
    assert all("mp4" in c for c in clips) and all("flac" not in c for c in clips[13:])
    assert _rms(clips[11]["flac"]) > 0.3  # the tone, up to where the track stops


def test_files_of_no_kind_the_packer_reads_are_counted(recording: Path, tmp_path: Path
                                                      ) -> None:
    src = tmp_path / "src"
    (src / ".cache").mkdir(parents=True)
    shutil.copy(recording, src / "session1.mp4")
    (src / "notes.txt").write_text("day one")
    (src / "session2.xyz").write_bytes(b"\0" * 64)
    (src / "other.txt").write_text("day two")
    (src / ".DS_Store").write_bytes(b"\0")  # hidden: not looked at
    (src / ".cache" / "x.bin").write_bytes(b"\0")
    summary = _pack(src, tmp_path / "out")
    assert summary["samples"] == 60
    assert summary["skipped"] == {"unsupported_file": 3}


def test_tracks_that_are_not_interleaved_keep_their_sound(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # Every video packet comes before the first audio packet (mkv allows it; mp4's
    # muxer interleaves by itself). Read in file order, the picture ran 30 s ahead of
    # the sound, and the clips cut meanwhile were packed without it.
    write_test_recording(src / "apart.mkv", 30.0, interleaved=False, **SMALL)
    with av.open(str(src / "apart.mkv")) as container:
        kinds = [p.stream.type for p in container.demux() if p.size]
    assert kinds.index("audio") > kinds.count("video") * 3 // 4  # the fixture is what it says
    _pack(src, tmp_path / "out")
    clips = [m for _k, m in sorted(_samples(tmp_path / "out").items())]
    assert len(clips) == 30 and all(set(c) == {"json", "mp4", "flac"} for c in clips)
    assert _rms(clips[9]["flac"]) < 0.01 and _rms(clips[10]["flac"], 0, 160) > 0.3


@pytest.mark.parametrize("name", ["cut.mp4", "cut.mkv"])
def test_a_truncated_recording_keeps_the_clips_before_the_damage(
        name: str, recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # mp4: the fixture's moov atom is first (faststart), so a prefix stays readable and the
    # demuxer fails at the first missing packet. mkv: its clusters end cleanly at the cut
    # and the header's duration tells what is missing.
    whole = recording if name.endswith(".mp4") else \
        write_test_recording(tmp_path / "whole.mkv", 60.0, **SMALL)
    data = whole.read_bytes()
    (src / name).write_bytes(data[: len(data) * 6 // 10])
    code = obs_main(["make-shards", "--from", str(src), "--out", str(tmp_path / "out"),
                     "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lost = summary["skipped"]["recording_truncated"]
    assert 20 <= summary["samples"] < 60 and summary["samples"] + lost == 60
    assert summary["recordings"] == 1
    samples = _samples(tmp_path / "out")
    assert list(samples) == [f"cut/{i:06d}" for i in range(summary["samples"])]
    last = samples[f"cut/{summary['samples'] - 1:06d}"]
    assert decode_video(last["mp4"], frames=10, size=32).shape == (10, 3, 32, 32)
    assert len(read_audio(last["flac"])[0]) == 16000  # the last clip kept is whole


def test_clips_and_recordings_together_and_the_cut_modes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "clips").mkdir(parents=True)
    write_test_recording(src / "clips" / "a.mp4", 1.0, **SMALL)  # short: a clip
    write_test_recording(src / "clips" / "b.mp4", 3.0, **SMALL)  # has a sidecar: a clip
    (src / "clips" / "b.json").write_text(json.dumps({"labels": {"object": "cup"}}))
    write_test_recording(src / "long.mp4", 4.6, **SMALL)  # a recording: 4 clips + 0.6
    (src / "broken.mkv").write_bytes(np.random.default_rng(0).bytes(3000))
    (src / "lonely.transcript.json").write_text("[]")
    summary = _pack(src, tmp_path / "auto")
    assert summary["skipped"] == {"video_decode": 1, "no_modality": 1}
    keys = sorted(_samples(tmp_path / "auto"))
    assert keys == ["clips/000000", "clips/000001"] + [f"long/{i:06d}" for i in range(5)]
    assert json.loads((tmp_path / "auto" / "classes.json").read_text())["classes"] == ["cup"]
    (src / "broken.mkv").unlink()
    never = _pack(src, tmp_path / "never", cut="never")
    assert never["samples"] == 3 and never["recordings"] == 0
    always = _pack(src, tmp_path / "always", cut="always", kind="discrete", clip_seconds=2.0)
    assert always["recordings"] == 3 and always["samples"] == 1 + 2 + 2
    meta = SampleMeta.from_json(_samples(tmp_path / "always")["long/000001"]["json"])
    assert meta.kind == "discrete" and meta.t0 == pytest.approx(2.0)
    with pytest.raises(ValueError, match="cut must be"):
        _pack(src, tmp_path / "bad", cut="sometimes")


def test_a_video_with_its_audio_beside_it_and_single_modalities(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    frames = np.zeros((30, 48, 64, 3), np.uint8)  # 3 s at 10 fps, no audio track
    (src / "v.mp4").write_bytes(encode_mp4(frames, 10.0))
    t = np.arange(3 * 22050) / 22050
    (src / "v.wav").write_bytes(encode_audio((0.3 * np.sin(2 * np.pi * 440 * t)).astype(
        np.float32), "wav", 22050))
    (src / "silent.mp4").write_bytes(encode_mp4(frames, 10.0))
    (src / "talk.flac").write_bytes(encode_audio(np.zeros(3 * 16000, np.float32)))
    summary = _pack(src, tmp_path / "out")
    assert summary["recordings"] == 3 and summary["samples"] == 9
    samples = _samples(tmp_path / "out")
    for i in range(3):
        assert set(samples[f"v/{i:06d}"]) == {"json", "mp4", "flac"}
        assert set(samples[f"silent/{i:06d}"]) == {"json", "mp4"}
        assert set(samples[f"talk/{i:06d}"]) == {"json", "flac"}
        wave, rate = read_audio(samples[f"v/{i:06d}"]["flac"])
        assert rate == 22050 and len(wave) == 22050  # the wav's own rate


def test_max_side_downscales_keeping_the_aspect(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_test_recording(src / "wide.mp4", 3.0, width=160, height=90, fps=10)
    _pack(src, tmp_path / "out", max_side=64)
    mp4 = _samples(tmp_path / "out")["wide/000000"]["mp4"]
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (64, 36)
    assert scaled_size(160, 90, 64) == (64, 36) and scaled_size(64, 48, 256) == (64, 48)


def _clip_frames(mp4: bytes) -> tuple[float, list[float], np.ndarray]:
    """A packed clip's frame rate, its frames' times and their mean brightness."""
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return (float(stream.average_rate), [float(f.time) for f in frames],
                np.array([f.to_ndarray(format="gray").mean() for f in frames]))


def test_max_fps_keeps_the_first_frame_of_each_slot_on_the_clock(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # 30 fps with the white frame at 12.0 s; clips of 1 s keep at most 4 frames a second.
    write_test_recording(src / "cam.mp4", 14.0, width=64, height=48, fps=30, white_at=12.0)
    summary = _pack(src, tmp_path / "out", max_fps=4)
    assert summary["samples"] == 14 and summary["skipped"] == {}
    samples = _samples(tmp_path / "out")
    for i in range(14):
        rate, times, brightness = _clip_frames(samples[f"cam/{i:06d}"]["mp4"])
        assert rate == 4 and times == [0.0, 0.25, 0.5, 0.75]
        if i == 12:  # the white frame is clip 12's first, and only it is white
            assert brightness[0] > 200 and brightness[1:].max() < 60
        else:
            assert brightness.max() < 60
        wave, sr = read_audio(samples[f"cam/{i:06d}"]["flac"])
        assert sr == 16000 and len(wave) == 16000  # the audio is cut as before
    # The kept frames are the source's frames at 0, 0.25, 0.5 and 0.75 s of each clip:
    # the same pictures as the full-rate pack's frames 0, 8, 15 and 23 (slots start at
    # 0, 7.5, 15 and 22.5 frames; the first frame at or after each start).
    _pack(src, tmp_path / "full")
    full = _samples(tmp_path / "full")
    for i in (3, 12):
        _, _, sub = _clip_frames(samples[f"cam/{i:06d}"]["mp4"])
        _, _, all_frames = _clip_frames(full[f"cam/{i:06d}"]["mp4"])
        assert len(all_frames) == 30
        np.testing.assert_allclose(sub, all_frames[[0, 8, 15, 23]], atol=3.0)


def test_max_fps_at_or_above_the_recording_rate_changes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_test_recording(src / "cam.mp4", 3.0, **SMALL)  # 10 fps
    _pack(src, tmp_path / "plain")
    _pack(src, tmp_path / "capped", max_fps=10)
    _pack(src, tmp_path / "above", max_fps=25)
    plain = sorted(p.read_bytes() for p in (tmp_path / "plain").glob("*.tar"))
    assert plain == sorted(p.read_bytes() for p in (tmp_path / "capped").glob("*.tar"))
    assert plain == sorted(p.read_bytes() for p in (tmp_path / "above").glob("*.tar"))
    with pytest.raises(ValueError, match="max_fps"):
        _pack(src, tmp_path / "bad", max_fps=0)
    # the command line passes it on: 10 fps → 5
    assert obs_main(["make-shards", "--from", str(src), "--out", str(tmp_path / "cli"),
                     "--max-fps", "5"]) == 0
    rate, times, _ = _clip_frames(_samples(tmp_path / "cli")["cam/000001"]["mp4"])
    assert rate == 5 and times == [0.0, 0.2, 0.4, 0.6, 0.8]


def test_frame_picker_takes_one_frame_per_slot_from_uneven_clocks() -> None:
    # 29.97 fps with timestamps jittered by a millisecond; 1.5 s clips, 2 frames a second.
    picker = FramePicker(1.5, 2)
    rng = np.random.default_rng(0)
    times = [i / 29.97 + float(rng.uniform(-1e-3, 1e-3)) for i in range(180)]
    kept = [t for t in times if picker.keeps(max(t, 0.0))]
    clip_and_slot = [(int(t // 1.5), int((t % 1.5) // 0.5)) for t in kept]
    # every slot of every clip in the 6 s, once, by its first frame
    assert clip_and_slot == [(c, s) for c in range(4) for s in range(3)]
    for t in kept:
        slot_start = (t // 1.5) * 1.5 + ((t % 1.5) // 0.5) * 0.5
        assert t - slot_start < 1 / 29.97 + 2e-3
    # a source slower than the limit keeps every frame
    slow = FramePicker(1.0, 8)
    assert all(slow.keeps(i / 5) for i in range(20))
    with pytest.raises(ValueError):
        FramePicker(1.0, 0)
