"""Decoding of clips: video frames, resampling, log-mel, and every kind of bad sample."""

from __future__ import annotations

import io
import json
import math

import av
import numpy as np
import pytest
import soundfile
import torch

from pipelines.decode import (
    SampleError,
    audio_frames,
    decode_audio,
    decode_sample,
    decode_video,
    log_mel,
    mel_filterbank,
    read_audio,
    resample,
)
from pipelines.render import ObjectState, encode_audio, encode_mp4, render_frame
from pipelines.schema import CLASS_IDS, CLASSES, SampleMeta

SIZES = {"frames": 8, "image_size": 32, "n_mels": 40, "audio_frames": audio_frames(1.0)}


def _frames(n: int = 8, size: int = 64, class_id: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    state = ObjectState.random(class_id, size, rng)
    out = []
    for _ in range(n):
        out.append(render_frame(state, size, rng))
        state.step(size)
    return np.stack(out)


def _wav(seconds: float = 1.0, rate: int = 16000, fmt: str = "wav", channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    buf = io.BytesIO()
    soundfile.write(buf, data, rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def _meta(role: str | None = "study", obj: str | None = CLASSES[3]) -> bytes:
    return SampleMeta("s", 0, 0.0, 1.0, "discrete", {"object": obj, "word": obj}, role).to_json()


def test_video_decodes_to_uint8_frames_close_to_the_rendered_ones() -> None:
    frames = _frames()
    out = decode_video(encode_mp4(frames, 8.0), frames=8, size=64)
    assert out.dtype == np.uint8 and out.shape == (8, 3, 64, 64)
    error = np.abs(out.transpose(0, 2, 3, 1).astype(float) - frames.astype(float)).mean()
    assert error < 12.0, error  # lossy codec, but the same picture


def test_video_is_resized_cropped_padded_and_subsampled() -> None:
    wide = np.zeros((4, 64, 96, 3), np.uint8)
    wide[:, :, 40:56] = 255  # a bright bar in the centre survives the centre crop
    out = decode_video(encode_mp4(wide, 8.0), frames=8, size=32)
    assert out.shape == (8, 3, 32, 32)
    assert out[:, :, :, 14:18].mean() > 200 and out[:, :, :, :4].mean() < 30
    assert (out[4:] == out[3]).all()  # 4 frames padded to 8 by repeating the last
    many = _frames(n=24, size=32)
    assert decode_video(encode_mp4(many, 24.0), frames=6, size=32).shape == (6, 3, 32, 32)


def test_resample_keeps_frequency_and_length() -> None:
    for rate in (22050, 44100, 8000, 48000):
        t = torch.arange(rate) / rate
        wave = torch.sin(2 * math.pi * 1000.0 * t)
        out = resample(wave, rate, 16000)
        assert out.shape[0] == 16000
        spectrum = torch.fft.rfft(out[2000:14000]).abs()
        peak_hz = float(spectrum.argmax()) * 16000 / 12000
        assert abs(peak_hz - 1000.0) < 5.0, (rate, peak_hz)
        assert 0.6 < float(out[2000:14000].abs().max()) < 1.1
    assert resample(wave, 16000, 16000) is wave
    with pytest.raises(ValueError, match="sample rates"):
        resample(wave, 0, 16000)


def test_log_mel_shape_and_filterbank() -> None:
    bank = mel_filterbank(40)
    assert bank.shape == (201, 40) and (bank >= 0).all()
    assert (bank.sum(0) > 0).all()  # every band sees some frequencies
    wave = torch.sin(2 * math.pi * 440 * torch.arange(16000) / 16000)
    mel = log_mel(wave, 40, audio_frames(1.0))
    assert mel.shape == (40, 101) and torch.isfinite(mel).all()
    # 440 Hz lands in a low band: that band is far louder than the top one.
    assert mel[:, 50].argmax() < 10 and mel[:, 50].max() > mel[-1, 50] + 5
    short = log_mel(wave[:4000], 40, 101)  # padded to the full length
    assert short.shape == (40, 101)


def test_audio_any_rate_and_channels_becomes_mono_16k() -> None:
    mono, rate = read_audio(_wav(rate=22050, fmt="flac", channels=2))
    assert rate == 22050 and mono.ndim == 1 and mono.shape[0] == 22050
    a = decode_audio(_wav(rate=22050, channels=2), 40, 101)
    b = decode_audio(_wav(rate=16000), 40, 101)
    assert a.shape == b.shape == (40, 101)
    loud = b[:, 5:-5] > -6  # compare where there is signal, not the quantisation floor
    assert loud.sum() > 50
    assert torch.allclose(a[:, 5:-5][loud], b[:, 5:-5][loud], atol=0.3)


def test_decode_sample_labels_and_targets() -> None:
    members = {"json": _meta("query"), "flac": encode_audio(np.zeros(16000, np.float32))}
    clip = decode_sample("s/000000", members, **SIZES)
    assert clip.video is None and clip.audio is not None and clip.audio.shape == (40, 101)
    assert clip.object == CLASS_IDS[CLASSES[3]] == clip.target
    study = decode_sample("s/000000", {**members, "json": _meta("study")}, **SIZES)
    assert study.target == -100 and study.object == 3
    unknown = decode_sample("s/000000", {**members, "json": _meta("query", "teapot")}, **SIZES)
    assert unknown.object == -1 and unknown.target == -100


def _bad(members: dict[str, bytes]) -> str:
    with pytest.raises(SampleError) as info:
        decode_sample("s/000000", members, **SIZES)  # the key _meta() names
    return info.value.kind


def test_bad_samples_raise_with_their_kind() -> None:
    mp4 = encode_mp4(_frames(size=32), 8.0)
    audio = _wav()
    meta = _meta()
    rng = np.random.default_rng(1)
    assert _bad({"json": meta, "mp4": mp4[: len(mp4) // 2]}) == "video_decode"
    assert _bad({"json": meta, "mp4": rng.bytes(5000)}) == "video_decode"
    assert _bad({"json": meta, "mp4": b""}) == "video_decode"
    assert _bad({"json": meta, "wav": b""}) == "audio_empty"
    empty = io.BytesIO()
    soundfile.write(empty, np.zeros(0, np.float32), 16000, format="WAV")
    assert _bad({"json": meta, "wav": empty.getvalue()}) == "audio_empty"
    assert _bad({"json": meta, "flac": rng.bytes(3000)}) == "audio_decode"
    assert _bad({"mp4": mp4, "wav": audio}) == "json_missing"
    assert _bad({"json": b"{not json", "wav": audio}) == "json_malformed"
    assert _bad({"json": json.dumps({"stream": "s"}).encode(), "wav": audio}) == \
        "json_malformed"
    assert _bad({"json": json.dumps({"stream": "s", "index": 0, "t0": 0, "duration": 1,
                                     "kind": "sometimes"}).encode(), "wav": audio}) == \
        "json_malformed"
    assert _bad({"json": meta}) == "no_modality"
    assert _bad({"json": meta, "txt": b"hello"}) == "no_modality"


def test_video_without_video_stream_is_rejected() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(SampleError, match="no video stream"):
        decode_video(buf.getvalue(), 8, 32)
