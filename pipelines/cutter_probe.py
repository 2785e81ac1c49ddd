"""A recording with known events, to test and time the cutter with.

:func:`write_test_recording` writes one file with video and audio whose events
sit at known times (a 1 kHz tone from ``tone_at``, one white frame at
``white_at``), in the containers and codecs cameras write, so tests can check
that :func:`pipelines.recordings.cut_recording` puts them in the right clips, and
benchmarks can time packing on real encoded media.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipelines.render import add_video_stream


def write_test_recording(path: str | Path, seconds: float = 60.0, *, width: int = 320,
                         height: int = 240, fps: int = 30, rate: int = 16000,
                         tone_at: float = 10.0, white_at: float = 20.0,
                         audio_start: float = 0.0, container_format: str | None = None,
                         interleaved: bool = True, channels: int = 1,
                         audio_track: bool = True, audio_end: float | None = None) -> Path:
    """Write a recording to test and time the cutter with: video and audio in one file.

    H.264 and AAC, VP8 and Opus in a ``.webm``, or full-range MJPEG and 16-bit PCM
    in an ``.avi`` (other cameras' codecs); the audio has ``channels`` channels
    (the second, if any, at half the level).

    The picture is a dark, noisy background with a grey square moving across
    it, and one white frame at ``white_at``; the audio is silent until
    ``tone_at``, then a 1 kHz tone; the audio track starts ``audio_start``
    seconds after the video (its first pts). An mp4 is written with its moov atom first
    (``movflags=faststart``), so that a truncated copy keeps a readable prefix.
    ``interleaved=False`` writes every video packet before the first audio one,
    as some muxers do; ``audio_track=False`` writes the video alone; ``audio_end``
    stops the audio track there (a microphone that stopped before the camera).

    Raises:
        ValueError: a size, rate or duration that is not positive.
    """
    if min(seconds, width, height, fps, rate) <= 0 or not 0 <= audio_start < seconds \
            or channels not in (1, 2):
        raise ValueError("seconds, width, height, fps and rate must be > 0, audio_start "
                         "in [0, seconds) and channels 1 or 2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix[1:].lower()
    fmt = container_format or ("matroska" if suffix == "mkv" else suffix)
    options = {"movflags": "faststart"} if fmt in ("mp4", "mov") else {}
    if not interleaved:  # FFmpeg's muxer would interleave by time within 10 s otherwise
        options["max_interleave_delta"] = "1"
    rng = np.random.default_rng(0)
    first = int(round(audio_start * rate))
    audio_seconds = seconds if audio_end is None else min(seconds, audio_end)
    n_frames, n_samples = int(round(seconds * fps)), int(round(audio_seconds * rate)) - first
    n_samples = n_samples if audio_track else 0
    t = (first + np.arange(n_samples)) / rate
    wave = np.where(t >= tone_at, 0.5 * np.sin(2 * np.pi * 1000.0 * t), 0.0).astype(np.float32)
    side = max(2, min(width, height) // 4)
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w", format=fmt, options=options) as out:
        if fmt == "webm":
            video = out.add_stream("libvpx", rate=fps)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            codec = "libopus"
        elif fmt == "avi":  # a head camera's own format: full-range MJPEG, PCM
            video = out.add_stream("mjpeg", rate=fps)
            video.width, video.height, video.pix_fmt = width, height, "yuvj420p"
            codec = "pcm_s16le"
        else:
            video = add_video_stream(out, fps, width, height, keyframe_seconds=2.0)
            codec = "aac"
        audio = out.add_stream(codec, rate=rate, layout=layout) if audio_track else None
        step = 960 if fmt == "webm" else 1024  # Opus takes 20 ms frames
        frame_i = sample_i = 0
        while frame_i < n_frames or sample_i < n_samples:
            audio_next = sample_i < n_samples and (
                frame_i >= n_frames or (interleaved and t[sample_i] <= frame_i / fps))
            if audio_next:
                piece = wave[sample_i: sample_i + step]
                if channels == 1:
                    chunk = av.AudioFrame.from_ndarray(piece[None], format="flt", layout="mono")
                else:
                    chunk = av.AudioFrame.from_ndarray(np.stack([piece, 0.5 * piece]),
                                                       format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts = rate, first + sample_i
                assert audio is not None
                packets = audio.encode(chunk)
                sample_i += step
            else:
                image = (20 + rng.integers(0, 16, (height, width, 3))).astype(np.uint8)
                x = int(frame_i * 4) % max(1, width - side)
                image[height // 3: height // 3 + side, x: x + side] = 90
                if frame_i == int(round(white_at * fps)):
                    image[:] = 255
                picture = av.VideoFrame.from_ndarray(image, format="rgb24")
                picture.pts, picture.time_base = frame_i, Fraction(1, fps)
                packets = video.encode(picture)
                frame_i += 1
            for packet in packets:
                out.mux(packet)
        for stream in (video, audio) if audio is not None else (video,):
            for packet in stream.encode():
                out.mux(packet)
    return path
