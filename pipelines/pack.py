"""``obs make-shards --from DIR``: pack a folder of media into shards.

The folder may hold pre-cut clips, long recordings, or both.

*Pre-cut clips.* Files are grouped into samples by path without extension
(``a/clip7.mp4`` and ``a/clip7.wav`` are one clip; ``a/clip7.json`` is its
optional sidecar). The stream of a clip is its folder (relative to DIR; the
folder's own name for top-level files) unless the sidecar says otherwise;
clips of a stream are ordered by the sidecar's ``index`` when given, else by
file name. Missing ``t0``/``duration`` are filled from the media (durations
probed with soundfile/PyAV); missing ``kind`` comes from ``--kind`` (default
``discrete``). Each sample is re-keyed ``<stream>/<index:06d>``.

*Recordings* (``--cut``): with ``auto`` (the default) a media file is a
recording when it has no sidecar ``<stem>.json`` and it is longer than 1.5
clips, or when it is another video format than mp4 (mkv, webm, mov, avi, …: only
mp4 clips are stored as they are);
``always`` cuts every media file, ``never`` none. A recording is one stream
named by its path without extension, cut by :mod:`pipelines.recordings` into
``--clip-seconds`` clips of kind ``--kind`` (default ``continuous``), labelled
from the timed-label files beside it (:mod:`pipelines.transcripts`).

A file that cannot be used (unreadable media, malformed sidecar or label file,
sidecar without media, a recording cut short, a file of a kind this packer does
not read) is skipped, counted by kind and logged with its path; the rest is
packed. Hidden files (a leading dot) are not looked at. ``classes.json`` lists the object
names that occur in the packed clips' ``labels.object``, sorted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import re
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import soundfile
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from obs_dist.storage import open_store
from pipelines.pack_journal import JOURNAL_FILE, PackJournal, folder_fingerprint, visible_files
from pipelines.recordings import (
    RECORDING_VIDEO_EXTS,
    CutResult,
    RecordingError,
    cut_recording,
    embedded_audio,
)
from pipelines.schema import AUDIO_EXTS, VIDEO_EXTS, SampleMeta, check_stream_name
from pipelines.shards import Sample, ShardWriter
from pipelines.transcripts import (
    LABEL_JSON_STEMS,
    OBJECTS_SUFFIX,
    TRANSCRIPT_SUFFIXES,
    TelemetryTranscript,
    clip_labels,
    read_cues,
)

log = logging.getLogger(__name__)

# How recordings are cut: (clip_seconds, max_side, max_fps), as pack_folder takes them.
_Cutting = tuple[float, int, int | None]

_MEDIA = RECORDING_VIDEO_EXTS + AUDIO_EXTS
# Keys of the timed-label files in a group: the suffix after the stem, no leading dot.
_TRANSCRIPTS = tuple(s[1:] for s in TRANSCRIPT_SUFFIXES)
_LABEL_FILES = (*_TRANSCRIPTS, OBJECTS_SUFFIX[1:])
CUT_MODES = ("auto", "always", "never")
# Longest pre-cut clip packed as it is (the loader decodes a clip whole).
MAX_CLIP_SECONDS = 60.0


def _stream_for(rel_dir: str, root_name: str) -> str:
    name = rel_dir if rel_dir not in ("", ".") else root_name
    name = re.sub(r"[^A-Za-z0-9_\-./]", "_", name).strip("/.") or "stream"
    return check_stream_name(re.sub(r"/+", "/", name.replace("..", "_")))


class _BadMedia(ValueError):
    def __init__(self, path: Path, ext: str, why: str) -> None:
        super().__init__(why)
        self.path = path
        self.kind = "video_decode" if ext in RECORDING_VIDEO_EXTS else "audio_decode"


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


def _collect(src: Path) -> tuple[dict[tuple[str, str], dict[str, Path]], list[Path]]:
    """Files grouped by (folder, stem), and the files of no kind this packer reads.

    ``rec.objects.json`` joins ``rec`` as ``objects.json`` (and likewise the
    transcripts) unless media of its own stem make it a sidecar. Hidden files and
    folders (a leading dot) are not looked at.
    """
    groups: dict[tuple[str, str], dict[str, Path]] = defaultdict(dict)
    unused: list[Path] = []
    for rel, name, path in visible_files(src):
        stem, dot_ext = os.path.splitext(name)
        ext = dot_ext[1:].lower()
        if ext in _MEDIA or ext in ("json", "srt", "vtt"):
            groups[(rel, stem)][ext] = path
        else:
            unused.append(path)
    for (rel, stem), files in list(groups.items()):
        base, dot_kind = os.path.splitext(stem)
        if dot_kind.lower() in LABEL_JSON_STEMS and set(files) == {"json"} and base:
            groups[(rel, base)][dot_kind[1:].lower() + ".json"] = files["json"]
            del groups[(rel, stem)]
    return groups, unused


@dataclass
class _Recording:
    stream: str
    video: Path | None
    audio: Path | None
    labels: dict[str, Path] = field(default_factory=dict)
    original: str = ""  # its path under DIR without extension, before sanitising


class _Skips:
    """Skipped inputs counted by kind, each logged with its path (or, in a worker
    process, kept in ``events`` for the main process to count and log in order)."""

    def __init__(self, record: bool = False) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.record = record
        self.events: list[tuple[str, Path | None, str, int]] = []

    def __call__(self, what: str, path: Path | None, why: str, count: int = 1) -> None:
        if self.record:
            self.events.append((what, path, why, count))
            return
        self.counts[what] += count
        log.warning("skipped %s (%s): %s", path, what, why)


def pack_folder(src: str | Path, out: str, *, target_bytes: int = 64 << 20,
                kind: str | None = None, clip_seconds: float = 1.0, max_side: int = 256,
                max_fps: int | None = None, cut: str = "auto", endpoint_url: str | None = None,
                overwrite: bool = False,
                progress: bool = True, workers: int = 1, resume: bool = False
                ) -> dict[str, Any]:
    """Pack the clips and recordings under ``src`` into shards at ``out``.

    Args:
        src: the folder.
        out: destination (path, ``file://`` or ``s3://bucket/prefix``).
        target_bytes: target shard size.
        kind: ``kind`` of clips whose sidecar does not say, and of recordings'
            clips (default ``discrete`` for clips, ``continuous`` for recordings).
        clip_seconds: length of the clips a recording is cut into.
        max_side: recordings' frames are scaled so the long side is at most this.
        max_fps: frames a recording's clips keep per second at most (None: the
            recording's own rate). Training decodes a clip's frames up to the last
            one it uses, so 30 fps clips cost 30 frames' decoding for the 2 a model
            sees; fewer also pack faster and store less.
        cut: ``auto``, ``always`` or ``never`` (see the module docstring).
        endpoint_url: S3 endpoint.
        overwrite: replace shards already at ``out``.
        progress: show progress bars.
        workers: processes that cut recordings at once (decoding and re-encoding
            is the cost: ~10 clips/s a core for VGA video). Clips are written in
            recording order by this process, so the shards are the same bytes
            whatever the number.
        resume: continue the unfinished pack at ``out`` from its journal
            (:mod:`pipelines.pack_journal`): the same folder and settings are
            required; its finished recordings are kept, the rest is packed, and
            the shards are the bytes an uninterrupted pack writes.

    Returns:
        A summary: samples, streams, recordings, shards written and ``skipped``
        counts by kind.

    Raises:
        ValueError: bad arguments, or ``src`` is not a directory or holds no usable media.
    """
    root = Path(src)
    if not root.is_dir():
        raise ValueError(f"--from {src}: not a directory")
    if kind not in (None, "continuous", "discrete"):
        raise ValueError(f"kind must be continuous or discrete, got {kind!r}")
    if cut not in CUT_MODES:
        raise ValueError(f"cut must be one of {list(CUT_MODES)}, got {cut!r}")
    if not clip_seconds > 0 or max_side < 2:
        raise ValueError(f"need clip_seconds > 0 and max_side >= 2, got {clip_seconds}, "
                         f"{max_side}")
    if max_fps is not None and max_fps < 1:
        raise ValueError(f"max_fps must be >= 1 (frames a second), got {max_fps}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if resume and overwrite:
        raise ValueError("resume continues the pack at the destination, overwrite replaces "
                         "it: choose one")
    with logging_redirect_tqdm():  # warnings print above the bars, not through them
        return _pack(root, out, target_bytes, kind, (clip_seconds, max_side, max_fps), cut,
                     endpoint_url, overwrite, progress, workers, resume)


def _pack(root: Path, out: str, target_bytes: int, kind: str | None, cutting: _Cutting,
          cut: str, endpoint_url: str | None, overwrite: bool,
          progress: bool, workers: int, resume: bool) -> dict[str, Any]:
    clip_seconds, max_side, max_fps = cutting
    settings: dict[str, Any] = {"clip_seconds": clip_seconds, "max_side": max_side,
                                "kind": kind, "cut": cut, "target_bytes": target_bytes}
    if max_fps is not None:  # only when set: journals written before it still resume
        settings["max_fps"] = max_fps
    store = open_store(out, endpoint_url=endpoint_url)
    folder = folder_fingerprint(root)
    journal: PackJournal | None = None
    if resume:
        journal = PackJournal.load(store, out)
        journal.check_matches(settings, folder, out)
    elif not overwrite and store.exists(JOURNAL_FILE):
        raise ValueError(f"{out} holds an unfinished pack ({JOURNAL_FILE}): continue it with "
                         "--resume, or replace it with --overwrite")
    skip = _Skips()
    streams, recordings = _scan(root, cut, clip_seconds, skip, progress)
    if not streams and not recordings:
        raise ValueError(f"--from {root}: no usable media found "
                         f"(skipped: {dict(skip.counts) or 'none'})")
    if journal is None:
        journal = PackJournal(settings, folder, skipped=dict(skip.counts))
    else:  # the scan's skips are in the journal's counts already
        skip.counts = defaultdict(int, journal.skipped)
        log.info("resuming the pack at %s: %d of %d recordings are packed", out,
                 journal.recordings_done, len(recordings))
    objects = set(journal.objects)
    packed = journal.packed
    # A journal without a writer's state stopped before any shard was final: start over.
    with ShardWriter(out, target_bytes=target_bytes, endpoint_url=endpoint_url,
                     overwrite=overwrite or resume, resume=journal.writer or None) as writer:

        def finished() -> None:
            """The shards so far are final: say so in the journal, after them."""
            writer.new_shard()
            journal.objects, journal.packed = sorted(objects), packed
            journal.skipped, journal.writer = dict(skip.counts), writer.snapshot()
            journal.save(store)

        if not journal.clips_done:
            journal.save(store)
            for stream in tqdm(sorted(streams), desc="packing", unit="stream",
                               disable=not progress or not streams):
                samples = _clip_samples(stream, streams[stream], kind or "discrete", skip)
                objects.update(s.meta.labels["object"] or "" for s in samples)
                writer.write_stream(samples)
            journal.clips_done = True
            finished()
        bar = tqdm(total=len(recordings), initial=journal.recordings_done, desc="recordings",
                   unit="rec", disable=not progress or not recordings)
        clips, start = 0, time.perf_counter()

        def counted(samples: Iterable[Sample]) -> Iterator[Sample]:
            nonlocal clips
            for sample in samples:
                objects.add(sample.meta.labels["object"] or "")
                clips += 1
                if clips % 25 == 0:
                    bar.set_postfix(clips_per_s=f"{clips / (time.perf_counter() - start):.1f}")
                yield sample

        cuts = _cut_recordings(recordings[journal.recordings_done:], cutting,
                               kind or "continuous", skip, workers)
        for samples in cuts:
            before = writer.samples
            _write_unbounded(writer, counted(samples))
            packed += writer.samples > before
            journal.recordings_done += 1
            finished()
            bar.update(1)
        bar.close()
        objects.discard("")
        writer.classes = tuple(sorted(objects))  # classes.json, written on close
    journal.discard(store)
    return {"samples": writer.samples, "streams": len(writer.streams), "recordings": packed,
            "shards": list(writer.shards), "skipped": dict(skip.counts)}


_Clip = tuple[int | None, str, dict[str, Any], dict[str, Path | bytes]]


def _scan(root: Path, cut: str, clip_seconds: float, skip: _Skips, progress: bool,
          ) -> tuple[dict[str, list[_Clip]], list[_Recording]]:
    """Sort the groups of files under ``root`` into pre-cut clips (by stream) and recordings."""
    streams: dict[str, list[_Clip]] = defaultdict(list)
    recordings: list[_Recording] = []
    root_name = root.resolve().name
    folders: dict[str, str] = {}  # stream name → the folder that has it

    def folder_stream(rel: str) -> str:
        # Two folders whose names sanitise alike ("公园", "厨房": "__") must not
        # become one stream with their clips interleaved: the second one gets a
        # short hash of its own path, the same at every pack.
        name = _stream_for(rel, root_name)
        if folders.setdefault(name, rel) != rel:
            name = check_stream_name(
                f"{name}-{hashlib.sha1(rel.encode('utf-8')).hexdigest()[:8]}")
            folders.setdefault(name, rel)
        return name

    groups, unused = _collect(root)
    by_ext: dict[str, list[Path]] = defaultdict(list)
    for path in unused:
        by_ext[path.suffix.lower() or "(no extension)"].append(path)
    for ext, paths in sorted(by_ext.items()):
        # Counted per file, logged once per extension: a folder of .AVI files
        # from an unsupported camera must not vanish without a word.
        skip("unsupported_file", paths[0],
             f"{len(paths)} file(s) with extension {ext} are not media this packer reads "
             f"({'/'.join(_MEDIA)}, or json/srt/vtt labels)", count=len(paths))
    for (rel, stem), files in tqdm(sorted(groups.items()), desc="scanning",
                                   unit="file", disable=not progress):
        media = {e: p for e, p in files.items() if e in _MEDIA}
        labels = {e: p for e, p in files.items() if e in _LABEL_FILES}
        if not media:
            skip("no_modality", files.get("json") or next(iter(labels.values())),
                 f"sidecar or label file without media ({'/'.join(_MEDIA)})")
            continue
        video = next((e for e in RECORDING_VIDEO_EXTS if e in media), None)
        audio = next((e for e in AUDIO_EXTS if e in media), None)
        sidecar: dict[str, Any] | None = None
        if "json" in files and cut != "always":
            try:
                sidecar = json.loads(files["json"].read_text("utf-8"))
                if not isinstance(sidecar, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                skip("json_malformed", files["json"], str(exc))
                continue
        chosen: dict[str, Path | bytes] = {e: media[e] for e in (video, audio) if e is not None}
        seconds: float | None = None
        recording = cut == "always" or (cut == "auto" and sidecar is None and (
            video is not None and video not in VIDEO_EXTS))
        if cut == "auto" and sidecar is None and not recording:
            try:
                seconds = max(_probe_seconds(media[e], e) for e in chosen)
            except _BadMedia as exc:
                skip(exc.kind, exc.path, str(exc))
                continue
            recording = seconds > 1.5 * clip_seconds
        if recording:
            if "json" in files:
                log.warning("%s: not a clip sidecar with --cut always; ignored", files["json"])
            original = stem if rel == "." else f"{rel}/{stem}"
            recordings.append(_Recording(_stream_for(original, root_name),
                                         media.get(video) if video else None,
                                         media.get(audio) if audio else None, labels,
                                         original))
            continue
        if labels:
            log.warning("%s: timed labels apply to recordings only; ignored",
                        ", ".join(str(p) for p in labels.values()))
        if video is not None and video not in VIDEO_EXTS:
            skip("unsupported_clip", media[video], "only mp4 is stored as a pre-cut clip "
                 "(pack it as a recording with --cut auto/always)")
            del chosen[video]
            if not chosen:
                continue
        sidecar = sidecar or {}
        try:
            if seconds is None:
                seconds = max(_probe_seconds(media[e], e) for e in chosen)
        except _BadMedia as exc:
            skip(exc.kind, exc.path, str(exc))
            continue
        if seconds > MAX_CLIP_SECONDS:
            # The loader decodes a clip whole: an hour-long "clip" (a recording with a
            # metadata .json beside it, taken for a clip sidecar) would stall it.
            skip("clip_too_long", next(iter(media.values())),
                 f"a pre-cut clip of {seconds:.0f} s (more than {MAX_CLIP_SECONDS:.0f} s): "
                 f"a recording with a .json beside it? Pack it with --cut always (which "
                 f"ignores sidecars) or move the .json away")
            continue
        if "mp4" in chosen and audio is None:
            # A clip's sound inside its mp4 would be lost: the loader hears flac/wav.
            try:
                sound = embedded_audio(media["mp4"])
            except ValueError as exc:
                skip("audio_decode", media["mp4"], f"{exc}; the clip is packed without sound")
                sound = None
            if sound is not None:
                chosen["flac"] = sound
        stream = sidecar.get("stream") or folder_stream(rel)
        sidecar.setdefault("duration", seconds)
        index = sidecar.get("index")
        streams[str(stream)].append((index if isinstance(index, int) else None, stem, sidecar,
                                     chosen))
    kept: list[_Recording] = []
    taken = set(streams)
    for rec in recordings:
        if rec.stream in taken:
            # Names differ only where the stream alphabet cannot say it ("公园" and
            # "厨房" are both "__"), or clips already use the name: a short hash of
            # the file's own path tells the recording apart, the same at every pack.
            digest = hashlib.sha1(rec.original.encode("utf-8")).hexdigest()[:8]
            unique = check_stream_name(f"{rec.stream}-{digest}")
            log.info("%s: stream %r is taken; packed as %r", rec.video or rec.audio,
                     rec.stream, unique)
            rec = dataclasses.replace(rec, stream=unique)
        if rec.stream in taken:  # pragma: no cover - two paths with one sha1 prefix
            skip("stream_clash", rec.video or rec.audio,
                 f"stream {rec.stream!r} is already taken by other clips")
            continue
        taken.add(rec.stream)
        kept.append(rec)
    return streams, kept


def _clip_samples(stream: str, clips: list[_Clip], kind: str, skip: _Skips) -> list[Sample]:
    """The samples of a stream of pre-cut clips, in index order (t0 filled in)."""
    clips = sorted(clips, key=lambda c: (c[0] is None, c[0] or 0, c[1]))
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
    return samples


def _timed_labels(rec: _Recording, clip_seconds: float, skip: _Skips,
                  ) -> tuple[dict[int, str], dict[int, str]]:
    """(words, objects) by clip index from the recording's label files."""
    words: dict[int, str] = {}
    objects: dict[int, str] = {}
    transcripts = [rec.labels[k] for k in _TRANSCRIPTS if k in rec.labels]
    for extra in transcripts[1:]:
        log.warning("%s: %s is the transcript used; ignored", extra, transcripts[0])
    wanted = [(transcripts[0], words)] if transcripts else []
    if OBJECTS_SUFFIX[1:] in rec.labels:
        wanted.append((rec.labels[OBJECTS_SUFFIX[1:]], objects))
    for path, into in wanted:
        try:
            into.update(clip_labels(read_cues(path), clip_seconds))
        except TelemetryTranscript as exc:
            skip("transcript_telemetry", path, f"{exc}; the recording is packed without it")
        except (ValueError, OSError) as exc:
            skip("labels_malformed", path, f"{exc}; the recording is packed without it")
    return words, objects


def _recording_samples(rec: _Recording, cutting: _Cutting, kind: str,
                       skip: _Skips) -> Iterator[Sample]:
    """The clips of one recording as samples; its problems counted in ``skip``."""
    clip_seconds, max_side, max_fps = cutting
    words, objects = _timed_labels(rec, clip_seconds, skip)
    result = CutResult()
    try:
        for index, members in cut_recording(rec.video, rec.audio, clip_seconds=clip_seconds,
                                            max_side=max_side, max_fps=max_fps,
                                            result=result):
            labels = {"object": objects.get(index), "word": words.get(index) or None}
            meta = SampleMeta(rec.stream, index, index * clip_seconds, clip_seconds, kind,
                              labels)
            yield Sample(meta, members)
    except RecordingError as exc:  # nothing decodable: every unreadable input counted
        for what, path, why in result.errors or [(exc.kind, exc.path, str(exc))]:
            skip(what, path, why)
        return
    for what, path, why in result.errors:
        skip(what, path, f"{why}; the recording is packed without it")
    if result.damage is not None:
        skip("recording_truncated", rec.video or rec.audio,
             f"{result.damage}; {result.clips} clips packed, {result.lost} lost", result.lost)


def _cut_recordings(recordings: list[_Recording], cutting: _Cutting,
                    kind: str, skip: _Skips, workers: int) -> Iterator[Iterator[Sample]]:
    """Each recording's samples, in order; cut here, or by ``workers`` processes at once.

    A worker cuts a whole recording into a spool file (pickled samples, in a
    temporary folder under ``TMPDIR``), so memory holds one sample at a time
    whatever the recording's length; this process reads the spools back in
    recording order and replays each recording's skips into ``skip``. At most
    ``2 · workers`` recordings are handed out ahead of the one being written, so
    a slow destination (S3) bounds the spool instead of letting it grow to the
    whole folder.
    """
    if workers == 1:
        for rec in recordings:
            yield _recording_samples(rec, cutting, kind, skip)
        return
    # spawn: a fresh interpreter per worker, no forked FFmpeg or tqdm thread state.
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="obs-pack-") as spool, \
            context.Pool(workers) as pool:
        jobs = iter([(rec, cutting, kind, str(Path(spool) / f"{i}.pickle"))
                     for i, rec in enumerate(recordings)])
        ahead: deque[Any] = deque()
        while True:
            while len(ahead) < 2 * workers:
                job = next(jobs, None)
                if job is None:
                    break
                ahead.append(pool.apply_async(_cut_to_spool, (job,)))
            if not ahead:
                return
            path, events = ahead.popleft().get()
            yield _read_spool(path)
            os.remove(path)
            for what, where, why, count in events:
                skip(what, where, why, count)


def _cut_to_spool(job: tuple[_Recording, _Cutting, str, str]
                  ) -> tuple[str, list[tuple[str, Path | None, str, int]]]:
    """In a worker: one recording's samples pickled one after another into ``path``."""
    rec, cutting, kind, path = job
    skip = _Skips(record=True)
    with open(path, "wb") as fh:
        for sample in _recording_samples(rec, cutting, kind, skip):
            pickle.dump(sample, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path, skip.events


def _read_spool(path: str) -> Iterator[Sample]:
    """The samples a worker spooled (this program's own file, read back once)."""
    with open(path, "rb") as fh:
        while True:
            try:
                sample = pickle.load(fh)
            except EOFError:
                return
            assert isinstance(sample, Sample)
            yield sample


def _write_unbounded(writer: ShardWriter, samples: Iterable[Sample]) -> None:
    """Write a stream of unknown length as :meth:`ShardWriter.write_stream` would,
    holding at most one shard's worth of it in memory.

    A recording starts a shard of its own: each recording is then one chain of
    shards, which the loader gives to one lane, so a batch's rows follow
    different recordings side by side."""
    writer.new_shard()
    buffer: list[Sample] = []
    size = 0
    stream = iter(samples)
    for sample in stream:
        buffer.append(sample)
        size += sample.tar_size
        if size > writer.target_bytes:  # bigger than a shard alone: it will be split
            break
    writer.write_stream(buffer)
    for sample in stream:
        writer.write(sample)
