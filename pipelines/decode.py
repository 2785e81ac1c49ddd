"""Decoding one sample: mp4 → uint8 frames, flac/wav → 16 kHz mono log-mel, json → labels.

Video: PyAV decodes, ``frames`` frames are picked evenly over the clip (the
last one repeated if the clip is shorter), each scaled so its short side is
``image_size`` and centre-cropped square. Audio: soundfile reads any rate and
channel count, channels are averaged, a windowed-sinc polyphase filter
resamples to 16 kHz, and ``torch.stft`` + a mel filterbank give a log-mel
spectrogram of a fixed number of frames (no torchaudio).

Anything wrong with a sample raises :class:`SampleError` with a *kind* — the
loader counts skipped samples by kind and logs their keys.
"""

from __future__ import annotations

import functools
import io
import math
import os
from dataclasses import dataclass

import av
import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter

from pipelines.schema import AUDIO_EXTS, META_EXT, VIDEO_EXTS, SampleMeta, object_id

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms windows
HOP = 160  # 10 ms hop
_MAX_DECODED_FRAMES = 1024  # bound the work a long or hostile video can cost

ERROR_KINDS = ("json_missing", "json_malformed", "no_modality", "video_decode", "audio_decode",
               "audio_empty", "shard_read")


class SampleError(ValueError):
    """A sample that cannot be used; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        assert kind in ERROR_KINDS, kind
        super().__init__(message)
        self.kind = kind


def audio_frames(seconds: float) -> int:
    """Log-mel frames of ``seconds`` of audio (centred STFT: samples // hop + 1)."""
    return int(round(seconds * SAMPLE_RATE)) // HOP + 1


def decode_video(data: bytes, frames: int, size: int) -> np.ndarray:
    """Decode an mp4 (or any PyAV-readable video) to uint8 ``[frames, 3, size, size]``.

    Raises:
        SampleError: kind ``video_decode`` if the bytes hold no decodable frame.
    """
    picked: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise SampleError("video_decode", "no video stream in the file")
            stream = container.streams.video[0]
            # One decoding thread: parallelism comes from loader workers, and
            # FFmpeg's frame threads only add latency on 8-frame clips.
            stream.thread_type = "NONE"
            stream.codec_context.thread_count = 1
            total = int(stream.frames or 0)
            wanted = _frame_indices(total, frames) if total > 0 else None
            decoded: list[np.ndarray] = []
            for i, frame in enumerate(container.decode(stream)):
                if wanted is None or i in wanted:
                    decoded.append(_square_rgb(frame, size))
                if i + 1 >= _MAX_DECODED_FRAMES or (wanted is not None and i >= max(wanted)):
                    break
    except SampleError:
        raise
    except Exception as exc:  # noqa: BLE001 - FFmpeg reports corruption in many ways
        raise SampleError("video_decode", f"cannot decode video: {exc}") from exc
    if not decoded:
        raise SampleError("video_decode", "video holds no decodable frame")
    if wanted is None or len(decoded) != len(wanted):
        picks = _frame_indices(len(decoded), frames)
        picked = [decoded[i] for i in picks]
    else:
        picked = decoded
    while len(picked) < frames:
        picked.append(picked[-1])
    out = np.stack(picked[:frames])  # [F, H, W, 3]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _frame_indices(total: int, frames: int) -> list[int]:
    if total <= frames:
        return list(range(total))
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, frames)})


def _square_rgb(frame: av.VideoFrame, size: int) -> np.ndarray:
    """Scale the short side to ``size`` and centre-crop to a square RGB array."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    sw, sh = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
    # One reformatter per process keeps its swscale context, and one thread:
    # a fresh context with a thread pool per frame (VideoFrame.to_ndarray's
    # way) costs ~10x the conversion of a small frame.
    rgb = _reformatter().reformat(frame, width=sw, height=sh, format="rgb24",
                                  interpolation="AREA", threads=1).to_ndarray()
    top, left = (sh - size) // 2, (sw - size) // 2
    return rgb[top: top + size, left: left + size]


_REFORMATTERS: dict[int, VideoReformatter] = {}


def _reformatter() -> VideoReformatter:
    """This process's reformatter (swscale contexts are not shared across a fork).

    One inherited from the parent is kept alive, never freed: freeing a context
    whose threads lived in the parent blocks forever.
    """
    pid = os.getpid()
    if pid not in _REFORMATTERS:
        _REFORMATTERS[pid] = VideoReformatter()
    return _REFORMATTERS[pid]


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Read wav/flac bytes as mono float32 and their sample rate.

    Raises:
        SampleError: ``audio_empty`` for no samples, ``audio_decode`` for unreadable bytes.
    """
    if not data:
        raise SampleError("audio_empty", "audio member is empty (0 bytes)")
    try:
        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile errors vary by format
        raise SampleError("audio_decode", f"cannot decode audio: {exc}") from exc
    if wave.shape[0] == 0:
        raise SampleError("audio_empty", "audio holds no samples")
    mono = wave.mean(axis=1)
    if not np.isfinite(mono).all():
        raise SampleError("audio_decode", "audio holds non-finite samples")
    return mono, int(rate)


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, width_zeros: int = 6,
                 rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc kernels [new, 1, taps] for orig → new (reduced by gcd)."""
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    t = (t * base).clamp(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, 1.0, t))
    kernel = (sinc * window * base / orig).to(torch.float32)
    return kernel, width


def resample(wave: torch.Tensor, orig: int, new: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited resampling of a 1-D waveform from ``orig`` Hz to ``new`` Hz."""
    if orig <= 0 or new <= 0:
        raise ValueError(f"sample rates must be > 0, got {orig} → {new}")
    if orig == new:
        return wave
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    kernel, width = _sinc_kernel(o, n)
    length = wave.shape[-1]
    padded = F.pad(wave.reshape(1, 1, -1), (width, width + o))
    out = F.conv1d(padded, kernel, stride=o)  # [1, n, L']
    out = out.transpose(1, 2).reshape(-1)
    return out[: math.ceil(n * length / o)]


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, n_fft: int = N_FFT, rate: int = SAMPLE_RATE) -> torch.Tensor:
    """HTK-scale triangular mel filters ``[n_freqs, n_mels]`` from 0 Hz to Nyquist."""
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    n_freqs = n_fft // 2 + 1
    freqs = torch.linspace(0, rate / 2, n_freqs, dtype=torch.float64)

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    m_max = hz_to_mel(torch.tensor(rate / 2, dtype=torch.float64))
    m_pts = torch.linspace(0, float(m_max), n_mels + 2, dtype=torch.float64)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).to(torch.float32)


@functools.lru_cache(maxsize=2)
def _hann(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft)


def log_mel(wave: torch.Tensor, n_mels: int, frames: int) -> torch.Tensor:
    """Log-mel spectrogram ``[n_mels, frames]`` of a 16 kHz waveform.

    The waveform is zero-padded or cut to exactly the samples of ``frames``
    STFT frames, so every clip gives the same shape.
    """
    samples = (frames - 1) * HOP
    wave = wave[:samples]
    if wave.shape[0] < samples:
        wave = F.pad(wave, (0, samples - wave.shape[0]))
    spec = torch.stft(wave, N_FFT, hop_length=HOP, window=_hann(N_FFT), center=True,
                      return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2  # [n_freqs, frames]
    mel = mel_filterbank(n_mels).T @ power
    return torch.log(mel + 1e-6)


def decode_audio(data: bytes, n_mels: int, frames: int) -> torch.Tensor:
    """wav/flac bytes → log-mel ``[n_mels, frames]`` at 16 kHz."""
    mono, rate = read_audio(data)
    wave = resample(torch.from_numpy(mono), rate, SAMPLE_RATE)
    return log_mel(wave, n_mels, frames)


@dataclass
class DecodedClip:
    """One usable clip.

    Attributes:
        key: the sample key.
        meta: its parsed json.
        video: uint8 ``[F, 3, H, W]`` or None.
        audio: float32 ``[n_mels, A]`` or None.
        object: class id (-1 unknown).
        target: class id at a query clip, -100 elsewhere.
        nbytes: size of the sample's members (for throughput figures).
    """

    key: str
    meta: SampleMeta
    video: torch.Tensor | None
    audio: torch.Tensor | None
    object: int
    target: int
    nbytes: int


def decode_sample(key: str, members: dict[str, bytes], *, frames: int, image_size: int,
                  n_mels: int, audio_frames: int,
                  classes: dict[str, int] | None = None) -> DecodedClip:
    """Decode the members of one sample.

    Args:
        key: the sample key (for messages).
        members: extension → bytes.
        frames, image_size: video shape.
        n_mels, audio_frames: log-mel shape.
        classes: class name → id (default: the built-in vocabulary).

    Raises:
        SampleError: with the kind of the first problem found.
    """
    raw = members.get(META_EXT)
    if raw is None:
        raise SampleError("json_missing", "sample has no json member")
    try:
        meta = SampleMeta.from_json(raw)
    except ValueError as exc:
        raise SampleError("json_malformed", str(exc)) from exc
    if meta.key != key:
        # The json would put the clip at another place of another stream.
        raise SampleError("json_malformed", f"sample json says stream {meta.stream!r} index "
                          f"{meta.index} ({meta.key}), but its tar key is {key}")
    video_ext = next((e for e in VIDEO_EXTS if e in members), None)
    audio_ext = next((e for e in AUDIO_EXTS if e in members), None)
    if video_ext is None and audio_ext is None:
        raise SampleError("no_modality", "sample has neither video (mp4) nor audio (flac/wav)")
    video = audio = None
    if video_ext is not None:
        video = torch.from_numpy(decode_video(members[video_ext], frames, image_size))
    if audio_ext is not None:
        audio = decode_audio(members[audio_ext], n_mels, audio_frames)
    obj = object_id(meta.labels.get("object"), classes)
    target = obj if meta.role == "query" and obj >= 0 else -100
    return DecodedClip(key, meta, video, audio, obj, target,
                       sum(len(v) for v in members.values()))
