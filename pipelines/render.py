"""Rendering helpers of the synthetic generator: objects in frames, names in speech.

Frames are drawn with numpy (a textured, coloured shape on a noisy background)
and encoded to mp4 with PyAV (libx264, else mpeg4). Names are spoken by
``espeak-ng`` (several voices and speeds, cached per utterance) or, where
``espeak-ng`` is missing, by a small formant synthesiser that gives each word
its own vowel colour and pitch contour — so the data stays learnable either way.
Everything is a pure function of its arguments, so a seed fixes the output.
"""

from __future__ import annotations

import functools
import hashlib
import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile

from pipelines.schema import COLOURS, class_attributes

SAMPLE_RATE = 16000
COLOUR_RGB = {"red": (215, 40, 45), "green": (40, 170, 70), "blue": (45, 85, 215),
              "yellow": (230, 205, 40)}
assert set(COLOUR_RGB) == set(COLOURS)
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-scotland+m3", "en-029+f2", "en-gb-x-rp")
SPEEDS = (240, 280, 320)


@dataclass
class ObjectState:
    """Where an object is and how it moves; carried across clips of a continuous scene.

    Attributes:
        class_id: the object's class.
        x, y: centre in pixels.
        vx, vy: velocity, pixels per frame.
        angle, spin: rotation (radians) and its change per frame.
        radius: size in pixels.
        background: RGB of the scene's background.
    """

    class_id: int
    x: float
    y: float
    vx: float
    vy: float
    angle: float
    spin: float
    radius: float
    background: tuple[int, int, int]

    @classmethod
    def random(cls, class_id: int, size: int, rng: np.random.Generator) -> ObjectState:
        """A new scene for ``class_id`` on a ``size``×``size`` canvas."""
        radius = float(rng.uniform(0.17, 0.25) * size)
        lo, hi = radius, size - radius
        speed = rng.uniform(0.5, 2.0) * size / 64
        heading = rng.uniform(0, 2 * np.pi)
        grey = rng.integers(70, 150)
        tint = rng.integers(-20, 21, size=3)
        background = tuple(int(np.clip(grey + t, 0, 255)) for t in tint)
        return cls(class_id, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)),
                   float(speed * np.cos(heading)), float(speed * np.sin(heading)),
                   float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(-0.2, 0.2)), radius,
                   background)  # type: ignore[arg-type]

    def step(self, size: int) -> None:
        """Advance one frame, bouncing off the canvas edges."""
        self.x += self.vx
        self.y += self.vy
        if not self.radius <= self.x <= size - self.radius:
            self.vx = -self.vx
            self.x = float(np.clip(self.x, self.radius, size - self.radius))
        if not self.radius <= self.y <= size - self.radius:
            self.vy = -self.vy
            self.y = float(np.clip(self.y, self.radius, size - self.radius))
        self.angle += self.spin


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Inside-mask of ``shape`` in object coordinates (u, v) for radius ``r``."""
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if shape == "triangle":
        # Three half-planes of an equilateral triangle inscribed in radius r.
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            theta = np.pi / 2 + k * 2 * np.pi / 3
            inside &= u * np.cos(theta) + v * np.sin(theta) >= -0.5 * r
        return inside
    if shape == "star":
        rho = np.hypot(u, v)
        phi = np.arctan2(v, u)
        return rho <= r * (0.45 + 0.55 * (0.5 + 0.5 * np.cos(5 * phi)))
    raise ValueError(f"unknown shape {shape!r}")


def texture_paint(texture: str, base: np.ndarray, u: np.ndarray, v: np.ndarray,
                  period: float | np.ndarray) -> np.ndarray:
    """An object's surface colour at object coordinates (u, v): float32 ``u.shape + (3,)``.

    Args:
        texture: ``solid``, ``striped`` (diagonal dark stripes) or ``dotted`` (light dots).
        base: RGB of the object, shape (3,) or broadcastable to ``u.shape + (3,)``.
        u, v: object coordinates of each pixel (any shape, e.g. [H, W] or [F, H, W]).
        period: stripe/dot spacing in pixels, a number or an array broadcastable to u.
    """
    paint = np.broadcast_to(np.asarray(base, np.float32), u.shape + (3,)).copy()
    if texture == "striped":
        dark = (np.floor((u + v) / period) % 2) == 0
        paint[dark] *= 0.3
    elif texture == "dotted":
        cu = (u / period) - np.round(u / period)
        cv = (v / period) - np.round(v / period)
        paint[cu * cu + cv * cv <= 0.09] = 245.0
    return paint


def render_frame(state: ObjectState, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB frame (uint8 [size, size, 3]) of the object, with positional and colour jitter."""
    shape, colour, texture = class_attributes(state.class_id)
    jx, jy = rng.normal(0.0, 0.6 * size / 64, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - (state.x + jx), yy - (state.y + jy)
    cos, sin = np.cos(state.angle), np.sin(state.angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    inside = _shape_mask(shape, u, v, state.radius)
    base = np.asarray(COLOUR_RGB[colour], np.float32) * rng.uniform(0.9, 1.1)
    paint = texture_paint(texture, base, u, v, max(4.0, state.radius / 2.5))
    frame = np.empty((size, size, 3), np.float32)
    frame[:] = np.asarray(state.background, np.float32)
    frame[inside] = paint[inside]
    frame += rng.normal(0.0, 4.0, size=frame.shape).astype(np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def video_codec() -> str:
    """The best available mp4 encoder of PyAV's FFmpeg: libx264, else mpeg4."""
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises different errors per version
            continue
    raise RuntimeError("PyAV's FFmpeg has neither libx264 nor mpeg4 encoders")


def add_video_stream(container: av.container.OutputContainer, fps: float, width: int,
                     height: int, keyframe_seconds: float | None = None,
                     reproducible: bool = False) -> av.VideoStream:
    """Add a single-threaded yuv420p video stream (:func:`video_codec`) to an output container.

    Args:
        container: an mp4 container opened for writing.
        fps: frames per second (rounded to an integer rate).
        width, height: frame size in pixels (even).
        keyframe_seconds: a keyframe at least this often; None keeps the encoder's default.
        reproducible: also turn off x264's macroblock-tree rate control, which
            otherwise now and then (a few runs in 25 here) encodes the same frames
            to other bytes. Frames must then carry their own ``pts`` and ``time_base``.
    """
    codec = video_codec()
    stream = container.add_stream(codec, rate=int(round(fps)))
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    options: dict[str, str] = {}
    if codec == "libx264":
        # One thread and a fixed preset: the same frames give the same bytes.
        options = {"preset": "veryfast", "crf": "20", "threads": "1"}
    if keyframe_seconds is not None:
        options["g"] = str(max(1, int(round(keyframe_seconds * fps))))
    if reproducible and codec == "libx264":
        options["x264-params"] = "mbtree=0"
    if options:
        stream.options = options
    stream.codec_context.thread_count = 1
    return stream


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """Encode uint8 RGB frames [F, H, W, 3] (H, W even) as an mp4, deterministically."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = add_video_stream(container, fps, int(frames.shape[2]), int(frames.shape[1]),
                                  reproducible=True)
        rate = Fraction(1, int(round(fps)))
        for i, frame in enumerate(frames):
            packet_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            # Own timestamps (unset ones vary run to run) and no mbtree: same bytes.
            packet_frame.pts, packet_frame.time_base = i, rate
            for packet in stream.encode(packet_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _linear_resample(wave: np.ndarray, n_out: int) -> np.ndarray:
    if n_out == len(wave):
        return wave
    src = np.linspace(0.0, len(wave) - 1.0, n_out)
    return np.interp(src, np.arange(len(wave)), wave).astype(np.float32)


@functools.lru_cache(maxsize=4096)
def _espeak(text: str, voice: str, speed: int, pitch: int | None = None) -> np.ndarray | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        pitch_args = [] if pitch is None else ["-p", str(pitch)]
        proc = subprocess.run([exe, "-w", str(path), "-v", voice, "-s", str(speed),
                               *pitch_args, text],
                              capture_output=True, timeout=30, check=False)
        if proc.returncode != 0 or not path.is_file():
            return None
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    nz = np.flatnonzero(np.abs(mono) > 1e-3)  # trim espeak's leading/trailing silence
    if len(nz) == 0:
        return None
    mono = mono[nz[0]: nz[-1] + 1]
    return _linear_resample(mono, int(round(len(mono) * SAMPLE_RATE / rate)))


def _formant_word(word: str, voice: str, speed: int) -> np.ndarray:
    """A synthetic 'word': voiced syllables whose formants and pitch come from the word."""
    digest = hashlib.sha256(f"{word}".encode()).digest()
    pitch = 100.0 + 120.0 * (hashlib.sha256(voice.encode()).digest()[0] / 255.0)
    syllables = max(1, min(3, len(word) // 3))
    length = int(SAMPLE_RATE * 0.22 * 280 / speed)
    t = np.arange(length) / SAMPLE_RATE
    parts = []
    for s in range(syllables):
        f1 = 300.0 + 500.0 * digest[2 * s] / 255.0
        f2 = 900.0 + 1500.0 * digest[2 * s + 1] / 255.0
        f0 = pitch * (1.0 + 0.25 * (digest[10 + s] / 255.0 - 0.5) * t / t[-1])
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        wave = np.zeros(length, np.float32)
        for h in range(1, 30):
            freq = h * f0
            gain = np.exp(-((freq - f1) / 120.0) ** 2) + 0.6 * np.exp(-((freq - f2) / 180.0) ** 2)
            wave += (gain * np.sin(h * phase)).astype(np.float32)
        envelope = np.sin(np.pi * np.arange(length) / length) ** 0.5
        parts.append(wave * envelope)
        parts.append(np.zeros(int(0.03 * SAMPLE_RATE), np.float32))
    out = np.concatenate(parts)
    return (0.3 * out / (np.abs(out).max() + 1e-6)).astype(np.float32)


def speak(text: str, voice: str, speed: int, max_seconds: float,
          pitch: int | None = None) -> np.ndarray:
    """``text`` spoken at 16 kHz (float32, peak ~0.3), at most ``max_seconds`` long.

    Uses ``espeak-ng`` when installed, else a formant synthesiser (one word
    after another). A longer utterance is sped up to fit. ``pitch`` (0–99,
    espeak-ng's ``-p``) is the voice's default when None.
    """
    wave = _espeak(text, voice, speed, pitch)
    if wave is None:
        words = [_formant_word(w, voice, speed) for w in text.split()]
        wave = np.concatenate(words)
    else:
        wave = (0.3 * wave / (np.abs(wave).max() + 1e-6)).astype(np.float32)
    limit = int(max_seconds * SAMPLE_RATE)
    if len(wave) > limit:
        wave = _linear_resample(wave, limit)
    return wave


def clip_audio(seconds: float, speech: np.ndarray | None,
               rng: np.random.Generator) -> np.ndarray:
    """A clip's soundtrack: low background noise, with ``speech`` at a random offset."""
    n = int(round(seconds * SAMPLE_RATE))
    noise_level = rng.uniform(0.002, 0.01)
    out = rng.normal(0.0, noise_level, size=n).astype(np.float32)
    if speech is not None and len(speech):
        speech = speech[:n]
        start = int(rng.integers(0, n - len(speech) + 1))
        out[start: start + len(speech)] += speech * rng.uniform(0.7, 1.2)
    return np.clip(out, -1.0, 1.0)


def encode_audio(wave: np.ndarray, fmt: str = "flac", rate: int = SAMPLE_RATE) -> bytes:
    """Encode mono float audio as 16-bit ``flac`` or ``wav`` bytes."""
    if fmt not in ("flac", "wav"):
        raise ValueError(f"audio format must be flac or wav, got {fmt!r}")
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()
