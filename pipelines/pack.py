"""``obs make-shards --from DIR``: pack a folder of mp4/wav/flac (+ json sidecars) into shards.

Files are grouped into samples by path without extension (``a/clip7.mp4`` and
``a/clip7.wav`` are one clip; ``a/clip7.json`` is its optional sidecar). The
stream of a clip is its folder (relative to DIR; the folder's own name for
top-level files) unless the sidecar says otherwise; clips of a stream are
ordered by the sidecar's ``index`` when given, else by file name. Missing
``t0``/``duration`` are filled from the media (durations probed with
soundfile/PyAV); missing ``kind`` comes from ``--kind``. Each sample is
re-keyed ``<stream>/<index:06d>``. A file that cannot be used (unreadable
media, malformed sidecar, sidecar without media) is skipped, counted by kind
and logged with its path; the rest is packed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import av
import soundfile
from tqdm import tqdm

from pipelines.schema import AUDIO_EXTS, VIDEO_EXTS, SampleMeta, check_stream_name
from pipelines.shards import Sample, ShardWriter

log = logging.getLogger(__name__)

_MEDIA = VIDEO_EXTS + AUDIO_EXTS


def _stream_for(rel_dir: str, root_name: str) -> str:
    name = rel_dir if rel_dir not in ("", ".") else root_name
    name = re.sub(r"[^A-Za-z0-9_\-./]", "_", name).strip("/.") or "stream"
    return check_stream_name(re.sub(r"/+", "/", name.replace("..", "_")))


class _BadMedia(ValueError):
    def __init__(self, path: Path, ext: str, why: str) -> None:
        super().__init__(why)
        self.path = path
        self.kind = "video_decode" if ext in VIDEO_EXTS else "audio_decode"


def _probe_seconds(path: Path, ext: str) -> float:
    """Duration of a media file; raises _BadMedia if it cannot be read."""
    try:
        if ext in AUDIO_EXTS:
            info = soundfile.info(str(path))
            if info.frames == 0:
                raise ValueError("no audio samples")
            return float(info.duration)
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            if container.duration:
                return float(container.duration) / 1e6
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            return 0.0
    except Exception as exc:  # noqa: BLE001 - libsndfile / FFmpeg errors vary
        raise _BadMedia(path, ext, f"unreadable media: {exc}") from exc


def _collect(src: Path) -> dict[tuple[str, str], dict[str, Path]]:
    groups: dict[tuple[str, str], dict[str, Path]] = defaultdict(dict)
    for dirpath, dirs, files in os.walk(src):
        dirs.sort()
        rel = Path(dirpath).relative_to(src).as_posix()
        for name in sorted(files):
            stem, dot_ext = os.path.splitext(name)
            ext = dot_ext[1:].lower()
            if ext in _MEDIA or ext == "json":
                groups[(rel, stem)][ext] = Path(dirpath) / name
    return groups


def pack_folder(src: str | Path, out: str, *, target_bytes: int = 64 << 20,
                kind: str = "discrete", endpoint_url: str | None = None,
                overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Pack the media under ``src`` into shards at ``out``.

    Returns:
        A summary: samples, streams, shards written and ``skipped`` counts by kind.

    Raises:
        ValueError: ``src`` is not a directory or holds no usable media.
    """
    root = Path(src)
    if not root.is_dir():
        raise ValueError(f"--from {src}: not a directory")
    if kind not in ("continuous", "discrete"):
        raise ValueError(f"kind must be continuous or discrete, got {kind!r}")
    skipped: dict[str, int] = defaultdict(int)

    def skip(what: str, path: Path, why: str) -> None:
        skipped[what] += 1
        log.warning("skipped %s (%s): %s", path, what, why)

    streams: dict[str, list[tuple[int | None, str, dict[str, Any], dict[str, Path]]]] = \
        defaultdict(list)
    for (rel, stem), files in tqdm(sorted(_collect(root).items()), desc="scanning",
                                   unit="clip", disable=not progress):
        media = {e: p for e, p in files.items() if e in _MEDIA}
        sidecar: dict[str, Any] = {}
        if "json" in files:
            try:
                sidecar = json.loads(files["json"].read_text("utf-8"))
                if not isinstance(sidecar, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                skip("json_malformed", files["json"], str(exc))
                continue
        if not media:
            skip("no_modality", files["json"], "sidecar without mp4/wav/flac")
            continue
        video = next((e for e in VIDEO_EXTS if e in media), None)
        audio = next((e for e in AUDIO_EXTS if e in media), None)
        chosen = {e: media[e] for e in (video, audio) if e is not None}
        try:
            seconds = max(_probe_seconds(p, e) for e, p in chosen.items())
        except _BadMedia as exc:
            skip(exc.kind, exc.path, str(exc))
            continue
        stream = sidecar.get("stream") or _stream_for(rel, root.resolve().name)
        sidecar.setdefault("duration", seconds)
        index = sidecar.get("index")
        streams[str(stream)].append((index if isinstance(index, int) else None, stem, sidecar,
                                     chosen))
    if not streams:
        raise ValueError(f"--from {src}: no usable mp4/wav/flac found "
                         f"(skipped: {dict(skipped) or 'none'})")
    with ShardWriter(out, target_bytes=target_bytes, endpoint_url=endpoint_url,
                     overwrite=overwrite) as writer:
        for stream in tqdm(sorted(streams), desc="packing", unit="stream",
                           disable=not progress):
            clips = sorted(streams[stream], key=lambda c: (c[0] is None, c[0] or 0, c[1]))
            samples, t0, used = [], 0.0, set()
            for position, (index, _stem, sidecar, chosen) in enumerate(clips):
                fields = dict(sidecar)
                fields["stream"] = stream
                fields["index"] = index if index is not None else position
                fields.setdefault("t0", t0)
                fields.setdefault("kind", kind)
                try:
                    meta = SampleMeta.from_dict(fields)
                    if meta.index in used:
                        raise ValueError(f"index {meta.index} used twice in stream {stream}")
                except ValueError as exc:
                    skip("json_malformed", next(iter(chosen.values())), str(exc))
                    continue
                used.add(meta.index)
                t0 = meta.t0 + meta.duration
                samples.append(Sample(meta, dict(chosen.items())))
            samples.sort(key=lambda s: s.meta.index)
            writer.write_stream(samples)
    return {"samples": writer.samples, "streams": len(writer.streams),
            "shards": list(writer.shards), "skipped": dict(skipped)}
