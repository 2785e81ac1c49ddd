"""Cutting long recordings into clips, in one sequential pass over each file.

A recording is a video (mp4, mov, mkv, webm, avi, mts, … : ``RECORDING_VIDEO_EXTS``)
with its own audio track, or with a same-named wav/flac beside it, or a long
wav/flac alone. :func:`cut_recording`
decodes it once, packet after packet (no seeking), and cuts it into
consecutive clips ``[i·c, (i+1)·c)`` of ``c = clip_seconds``. Both modalities are
cut on the container's clock: a frame or an audio frame is at
``pts × time_base`` minus the start of the file (the earliest start of the
streams used), so an audio track that starts later than the video lands where
it belongs, with silence before it.

Each clip becomes an ``mp4`` (its frames, scaled so the long side is at most
``max_side``, at most ``max_fps`` of them a second, kept in yuv420p and re-encoded by
:func:`pipelines.render.add_video_stream`'s encoder) and a ``flac``
(mono at the track's own rate, the samples ``[round(i·c·rate), round((i+1)·c·rate))``).
A last partial clip is kept when it holds at least half a clip.

A recording damaged mid-file (bytes cut off, a corrupt packet) keeps the clips
that every modality covered before the damage; :class:`CutResult` says how many
were lost (from the container's duration when it states one, else 1).
"""

from __future__ import annotations

import heapq
import io
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

from pipelines.render import add_video_stream, encode_audio

# What FFmpeg demuxes and cameras write: phones (mp4/mov/3gp), head and action
# cameras (avi with MJPEG, mp4), camcorders (mts/m2ts/ts, mpg), screen or web
# recordings (mkv/webm, m4v).
RECORDING_VIDEO_EXTS = ("mp4", "mkv", "webm", "mov", "avi", "m4v", "mpg", "mpeg", "mts", "m2ts",
                        "ts", "3gp")
# A clip is cut once every modality has passed its end, or once one modality is
# this far past it (a badly interleaved or silent track must not hold everything).
_SLACK_SECONDS = 10.0
_EPS = 1e-6
_INT_SCALE = {"s16": 2.0 ** -15, "s32": 2.0 ** -31, "s64": 2.0 ** -63}


class RecordingError(ValueError):
    """A recording that cannot be decoded at all; ``kind`` is ``video_decode`` or
    ``audio_decode``."""

    def __init__(self, kind: str, path: Path, why: str) -> None:
        super().__init__(why)
        self.kind = kind
        self.path = path


@dataclass
class CutResult:
    """What :func:`cut_recording` found, filled in while it runs.

    Attributes:
        clips: clips yielded.
        lost: clips lost to damage (0 when the recording decoded to its end).
        damage: what stopped the decoding early, or None.
        errors: ``(kind, path, why)`` of an input that could not be read while
            another one could (a broken wav beside a good video, say).
    """

    clips: int = 0
    lost: int = 0
    damage: str | None = None
    errors: list[tuple[str, Path, str]] = field(default_factory=list)


def clip_count(seconds: float, clip_seconds: float) -> int:
    """Clips in ``seconds``: the full ones, plus a partial one of at least half a clip."""
    full = int(math.floor(seconds / clip_seconds + _EPS))
    rest = seconds - full * clip_seconds
    return full + (1 if rest >= clip_seconds / 2 - _EPS else 0)


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Even frame size with the long side at most ``max_side``, keeping the aspect."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """An audio frame as mono float32 in [-1, 1] (channels averaged)."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:
        data = data.reshape(-1, len(frame.layout.channels)).T
    name = frame.format.name.rstrip("p")
    wave = data.astype(np.float32)
    if name == "u8":
        wave = (wave - 128.0) / 128.0
    elif name in _INT_SCALE:
        wave *= _INT_SCALE[name]
    return wave.mean(axis=0)


@dataclass
class _Input:
    """One opened file and the streams used from it."""

    path: Path
    container: Any
    streams: list[Any]
    origin: float
    duration: float | None
    reached: float = 0.0


_STILL = (av.stream.Disposition.attached_pic | av.stream.Disposition.still_image
          | av.stream.Disposition.timed_thumbnails)


def _stream_seconds(stream: Any) -> float:
    """A stream's length as its container states it (0 when it does not)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = str(stream.metadata.get("DURATION", ""))  # Matroska: "HH:MM:SS.nnnnnnnnn"
    parts = tag.split(":")
    try:
        return float(parts[0]) * 3600 + float(parts[1]) * 60 + float(parts[2]) \
            if len(parts) == 3 else 0.0
    except ValueError:
        return 0.0


def _main_video(container: Any) -> Any:
    """The recording's own video stream: not a cover picture or a thumbnail track, and
    the longest of the rest (a file may carry a one-frame still as its first track),
    then the one with the higher frame rate where lengths are not stated."""
    streams = list(container.streams.video)
    moving = [s for s in streams if not int(s.disposition) & int(_STILL)] or streams
    return max(moving, key=lambda s: (_stream_seconds(s), float(s.guessed_rate or 0), -s.index))


def _open(path: Path, video: bool, audio: bool, origin: float | None = None) -> _Input:
    """Open ``path`` and pick its own video stream (:func:`_main_video`) and/or its
    first audio stream.

    Args:
        path: the file.
        video: pick its video stream.
        audio: pick its audio stream.
        origin: the clock's zero in seconds (default: the earliest start of the
            picked streams, else the container's).

    Raises:
        ValueError: the file cannot be opened or lacks the streams asked for.
    """
    container = av.open(str(path))
    try:
        picked = ([_main_video(container)] if video and container.streams.video else []) \
            + ([container.streams.audio[0]] if audio and container.streams.audio else [])
        if not picked:
            raise ValueError(f"no {'video' if video else 'audio'} stream")
        for stream in picked:
            stream.thread_type = "NONE"
            stream.codec_context.thread_count = 1
        starts = [float(s.start_time * s.time_base) for s in picked if s.start_time is not None]
        if origin is None:
            origin = min(starts) if starts else float(container.start_time or 0) / 1e6
        # The picked streams' own length first: an audio track that ends before the
        # video (a microphone stopped early) is not damage, though the container's
        # duration is the video's. The container's figure when the streams state none.
        seconds = [t for t in (_stream_seconds(s) for s in picked) if t > 0]
        duration = max(seconds) if seconds else \
            (float(container.duration) / 1e6 if container.duration else None)
        return _Input(path, container, picked, origin, duration)
    except Exception:
        container.close()
        raise


def embedded_audio(path: Path) -> bytes | None:
    """A media file's first audio track as mono flac at its own rate (None: it has none).

    For pre-cut mp4 clips, whose video is stored as it is but whose sound the
    loader reads from a flac/wav member.

    Raises:
        ValueError: the file or its audio track cannot be decoded.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            stream.thread_type = "NONE"
            rate = int(stream.sample_rate)
            chunks = [_mono(frame) for frame in container.decode(stream)]
    except Exception as exc:  # noqa: BLE001 - FFmpeg reports bad files many ways
        raise ValueError(f"cannot decode its audio track: {exc}") from exc
    if not chunks:
        return None
    return encode_audio(np.clip(np.concatenate(chunks), -1.0, 1.0), "flac", rate)


class FramePicker:
    """Which video frames a clip keeps when it holds at most ``fps`` frames a second.

    A clip ``[i·c, (i+1)·c)`` is split into slots of ``1 / fps`` seconds from its
    start; the first frame in each slot is kept (so a clip's first frame is its
    first frame at any rate, and a source slower than ``fps`` keeps every frame).
    Decisions go by each frame's timestamp alone, in decoding order.

    Args:
        clip_seconds: ``c``.
        fps: frames kept per second at most (> 0).
    """

    def __init__(self, clip_seconds: float, fps: float) -> None:
        if not clip_seconds > 0 or not fps > 0:
            raise ValueError(f"need clip_seconds > 0 and fps > 0, got {clip_seconds}, {fps}")
        self.c, self.fps = clip_seconds, fps
        self.taken: tuple[int, int] = (-1, -1)  # (clip, slot) of the last frame kept

    def keeps(self, t: float) -> bool:
        """Whether the frame at ``t`` seconds is kept (and count it as kept if so)."""
        clip = int(math.floor((t + _EPS) / self.c))
        slot = int(math.floor((t - clip * self.c + _EPS) * self.fps))
        if (clip, slot) <= self.taken:
            return False
        self.taken = (clip, slot)
        return True


def _events(inp: _Input, max_side: int, picker: FramePicker | None = None
            ) -> Iterator[tuple[float, str, Any]]:
    """``(seconds, "video" | "audio", payload)`` of every decoded frame, in file order.

    Video payloads are yuv420p frames scaled to ``max_side``, or None for a frame
    the ``picker`` drops (it still moves the video's clock: a clip is cut when every
    modality has passed its end); audio payloads are mono float32 arrays. Frames
    without a timestamp follow on from the previous one.
    """
    reformatter = VideoReformatter()
    size: tuple[int, int] | None = None
    last = {"video": 0.0, "audio": 0.0}
    frame_seconds = {s.index: 1.0 / _fps(s) for s in inp.streams if s.type == "video"}
    for packet in inp.container.demux(*inp.streams):
        for frame in packet.decode():
            kind = packet.stream.type
            t = frame.time - inp.origin if frame.time is not None else last[kind]
            if kind == "video" and picker is not None and not picker.keeps(t):
                payload: Any = None  # dropped before scaling: the scaler is a cost
                step = frame_seconds[packet.stream.index]
            elif kind == "video":
                size = size or scaled_size(frame.width, frame.height, max_side)
                # Scaling in yuv420p, the encoder's format, costs a tenth of RGB.
                # The clips are untagged yuv420p, which every decoder reads as
                # limited-range BT.601: a full-range source (MJPEG, many phones)
                # or a BT.709 one is converted, not copied, or its shadows and
                # highlights would be clipped and its colours shifted.
                space, scale = _colorspace(frame), _color_range(frame)
                converts = space != Colorspace.ITU601 or scale != ColorRange.MPEG
                # Accurate rounding keeps greys grey through a matrix conversion
                # (off by up to 3 levels without it); it is not needed otherwise.
                flags = Interpolation.AREA | (Interpolation.ACCURATE_RND if converts else 0)
                payload = reformatter.reformat(
                    frame, width=size[0], height=size[1], format="yuv420p",
                    src_colorspace=space, dst_colorspace=Colorspace.ITU601,
                    src_color_range=scale, dst_color_range=ColorRange.MPEG,
                    interpolation=flags, threads=1)
                # A phone held upright stores its frames sideways with a display
                # rotation; players turn them, and so must the clips.
                payload = rotated(payload, frame.rotation)
                step = frame_seconds[packet.stream.index]
            else:
                payload = _mono(frame)
                step = frame.samples / frame.sample_rate
            last[kind] = t + step
            inp.reached = max(inp.reached, t + step)
            yield t, kind, payload


def rotated(frame: av.VideoFrame, degrees: float) -> av.VideoFrame:
    """A yuv420p frame turned ``degrees`` counter-clockwise (a multiple of 90), as shown.

    ``degrees`` is :attr:`av.VideoFrame.rotation`, the angle by which the
    stream's display matrix turns the stored frame; 0 returns ``frame`` itself.

    Raises:
        ValueError: ``frame`` is not yuv420p with an even size.
    """
    turns = int(round(degrees / 90.0)) % 4
    if turns == 0:
        return frame
    width, height = frame.width, frame.height
    if frame.format.name != "yuv420p" or width % 2 or height % 2:
        raise ValueError(f"can only turn even-sized yuv420p frames, got {frame.format.name} "
                         f"{width}x{height}")
    flat = frame.to_ndarray().reshape(-1)  # Y, then U and V at half the size each way
    luma, quarter = width * height, width * height // 4
    planes = [flat[:luma].reshape(height, width),
              flat[luma:luma + quarter].reshape(height // 2, width // 2),
              flat[luma + quarter:].reshape(height // 2, width // 2)]
    planes = [np.rot90(plane, turns) for plane in planes]
    packed = np.concatenate([plane.reshape(-1) for plane in planes])
    return av.VideoFrame.from_ndarray(packed.reshape(-1, planes[0].shape[1]), format="yuv420p")


def _color_range(frame: av.VideoFrame) -> ColorRange:
    """The frame's range: full (JPEG) when tagged so or in a ``yuvj`` format, else limited."""
    if int(frame.color_range) == int(ColorRange.JPEG) or frame.format.name.startswith("yuvj"):
        return ColorRange.JPEG
    return ColorRange.MPEG


# FFmpeg's AVColorSpace numbers → swscale's matrices (6, SMPTE 170M, is BT.601's
# matrix; 10 is BT.2020's constant-luminance variant, converted as BT.2020).
_MATRICES = {1: Colorspace.ITU709, 4: Colorspace.FCC, 5: Colorspace.ITU601,
             6: Colorspace.ITU601, 7: Colorspace.SMPTE240M, 9: Colorspace.BT2020,
             10: Colorspace.BT2020}


def _colorspace(frame: av.VideoFrame) -> Colorspace:
    """The frame's matrix when tagged with one swscale knows, else BT.601 (FFmpeg's guess)."""
    return _MATRICES.get(int(frame.colorspace), Colorspace.ITU601)


def _fps(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return max(1.0, float(rate)) if rate else 30.0


class _Cutter:
    """Collects decoded frames and audio per clip and cuts finished clips."""

    def __init__(self, clip_seconds: float, fps: float, rate: int | None,
                 kinds: set[str]) -> None:
        self.c, self.fps, self.rate = clip_seconds, fps, rate
        self.frames: dict[int, list[av.VideoFrame]] = defaultdict(list)
        self.chunks: list[np.ndarray] = []
        self.audio_base: int | None = None  # sample index of the first buffered sample
        self.audio_end = 0  # sample index one past the last buffered sample
        # Modality → end of its data so far, seconds; a track yet to deliver is at 0.
        self.reached: dict[str, float] = dict.fromkeys(kinds, 0.0)
        self.seen: set[str] = set()  # modalities that delivered data
        self.next = 0  # the next clip to cut

    def add(self, t: float, kind: str, payload: Any) -> None:
        """Add one decoded video frame or audio frame starting at ``t`` seconds."""
        if kind == "video":
            index = int(math.floor((t + _EPS) / self.c))
            if t >= -_EPS and index >= self.next and payload is not None:
                self.frames[index].append(payload)
            end = t + 1.0 / self.fps
        else:
            assert self.rate is not None
            start = int(round(t * self.rate))
            if self.audio_base is None:
                self.audio_base = self.audio_end = max(0, start)
            gap = start - self.audio_end
            if gap > max(2, self.rate // 1000):  # a hole in the track: silence
                self.chunks.append(np.zeros(gap, np.float32))
                self.audio_end += gap
            elif gap < 0:  # overlaps what is there (or starts before 0): drop that part
                payload = payload[-gap:]
            self.chunks.append(payload)
            self.audio_end += len(payload)
            end = self.audio_end / self.rate
        self.reached[kind] = max(self.reached.get(kind, 0.0), end)
        self.seen.add(kind)

    def ready(self) -> bool:
        """Whether the next clip is complete (every modality past its end, or one far past)."""
        edge = (self.next + 1) * self.c - _EPS
        return min(self.reached.values()) >= edge or \
            max(self.reached.values()) >= edge + _SLACK_SECONDS

    def cut(self) -> tuple[int, dict[str, Any]]:
        """The next clip's frames (a list) and samples (an array), whichever it has."""
        index, self.next = self.next, self.next + 1
        out: dict[str, Any] = {}
        frames = self.frames.pop(index, [])
        if frames:
            out["video"] = frames
        if self.rate is not None and self.audio_base is not None:
            lo, hi = round(index * self.c * self.rate), round((index + 1) * self.c * self.rate)
            buffered = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
            have = buffered[max(0, lo - self.audio_base): max(0, hi - self.audio_base)]
            if len(have):
                lead = max(0, self.audio_base - lo)  # the track starts inside this clip
                out["audio"] = np.concatenate([np.zeros(lead, np.float32), have])
            rest = buffered[max(0, hi - self.audio_base):]
            self.chunks = [rest] if len(rest) else []
            self.audio_base = max(self.audio_base, hi)
        return index, out


def _encode_frames(frames: list[av.VideoFrame], fps: float) -> bytes:
    """yuv420p frames of one size as an mp4 at ``fps`` (one thread, fixed settings)."""
    rate = int(round(fps))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = add_video_stream(container, rate, frames[0].width, frames[0].height,
                                  reproducible=True)
        for i, frame in enumerate(frames):
            frame.pts, frame.time_base = i, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def _encode(clip: dict[str, Any], fps: float, rate: int | None) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    if "video" in clip:
        members["mp4"] = _encode_frames(clip["video"], fps)
    if "audio" in clip and rate is not None:
        members["flac"] = encode_audio(np.clip(clip["audio"], -1.0, 1.0), "flac", rate)
    return members


def cut_recording(video: Path | None, audio: Path | None, *, clip_seconds: float = 1.0,
                  max_side: int = 256, max_fps: int | None = None,
                  result: CutResult | None = None,
                  ) -> Iterator[tuple[int, dict[str, bytes]]]:
    """Decode a recording once and yield its clips as ``(index, {"mp4"?, "flac"?: bytes})``.

    Args:
        video: the video file (its own audio track is used when ``audio`` is None).
        audio: a separate wav/flac (or the recording itself when ``video`` is None).
        clip_seconds: length of a clip.
        max_side: frames are scaled so that their long side is at most this.
        max_fps: frames kept per second of a clip at most (:class:`FramePicker`),
            and the clip's frame rate; None keeps the recording's rate.
        result: filled with the clip count, damage and clips lost.

    Raises:
        ValueError: bad arguments.
        RecordingError: nothing of the recording can be decoded (raised on the
            first ``next()``).
    """
    if clip_seconds <= 0 or max_side < 2 or (video is None and audio is None):
        raise ValueError("need a video or audio file, clip_seconds > 0 and max_side >= 2")
    if max_fps is not None and max_fps < 1:
        raise ValueError(f"max_fps must be >= 1 (frames a second), got {max_fps}")
    result = result if result is not None else CutResult()
    inputs: list[_Input] = []
    wanted = [(video, True, audio is None, "video_decode")] if video else []
    wanted += [(audio, False, True, "audio_decode")] if audio else []
    try:
        for path, want_video, want_audio, kind in wanted:
            try:
                inputs.append(_open(path, want_video, want_audio))
            except Exception as exc:  # noqa: BLE001 - FFmpeg reports bad files many ways
                result.errors.append((kind, path, f"cannot open: {exc}"))
        if video and audio is None and inputs and len(inputs[0].streams) == 2:
            # The file's own audio is demuxed on its own, on the same clock: a file
            # whose tracks are not interleaved (all video, then all audio) would
            # otherwise run the video far ahead and cut its clips without sound.
            both = inputs[0]
            inputs[0] = _Input(both.path, both.container, both.streams[:1], both.origin,
                               both.duration)
            inputs.append(_open(video, False, True, origin=both.origin))
        if not inputs:
            kind, path, why = result.errors[0]
            raise RecordingError(kind, path, why)
        streams = [s for inp in inputs for s in inp.streams]
        vstream = next((s for s in streams if s.type == "video"), None)
        astream = next((s for s in streams if s.type == "audio"), None)
        fps = _fps(vstream) if vstream is not None else 30.0
        rate = int(astream.sample_rate) if astream is not None else None
        cutter = _Cutter(clip_seconds, fps, rate, {s.type for s in streams})
        # Fewer frames than the recording has: picked by time, and the clip plays at
        # the lower rate. At or above the recording's rate every frame is kept, as
        # without a limit (the same bytes).
        picker = FramePicker(clip_seconds, max_fps) if max_fps and max_fps < fps else None
        clip_fps = float(max_fps) if picker is not None and max_fps else fps
        events = heapq.merge(*(_events(inp, max_side, picker) for inp in inputs),
                             key=lambda e: e[0])
        while True:
            try:
                t, kind, payload = next(events)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - damage mid-file: keep what came before
                at = max(cutter.reached.values(), default=0.0)
                result.damage = f"decoding stopped at {at:.2f} s: {exc}"
                break
            cutter.add(t, kind, payload)
            while cutter.ready():
                index, clip = cutter.cut()
                if clip:
                    result.clips += 1
                    yield index, _encode(clip, clip_fps, rate)
        if not cutter.seen:
            what = "video_decode" if vstream is not None else "audio_decode"
            raise RecordingError(what, inputs[0].path, result.damage or "no decodable frame")
        short = [inp for inp in inputs
                 if inp.duration and inp.reached < inp.duration - clip_seconds / 2]
        if result.damage is None and short:
            result.damage = f"{short[0].path.name} ends at {short[0].reached:.2f} s of the " \
                            f"{short[0].duration:.2f} s its container states"
        ends = [cutter.reached[kind] for kind in cutter.seen]
        if result.damage is None:
            last = clip_count(max(ends), clip_seconds)
        else:  # only clips that every modality covered before the damage
            last = int(math.floor(min(ends) / clip_seconds + _EPS))
        while cutter.next < last:
            index, clip = cutter.cut()
            if clip:
                result.clips += 1
                yield index, _encode(clip, clip_fps, rate)
        if result.damage is not None:
            durations = [inp.duration for inp in inputs if inp.duration]
            expected = clip_count(max(durations), clip_seconds) if durations else None
            result.lost = max(1, expected - cutter.next) if expected is not None else 1
    finally:
        for inp in inputs:
            inp.container.close()
