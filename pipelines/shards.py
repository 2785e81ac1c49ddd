"""Writing WebDataset tar shards of clips, plus the shard directory's index.

A shard is a plain tar (``tar -tf`` lists it, ``webdataset.WebDataset`` reads
it) whose members are ``<stream>/<index:06d>.{json,mp4,flac|wav}``, written with
fixed owners and mtime so the same samples give byte-identical shards.

Next to the shards the writer puts ``classes.json`` (the class vocabulary) and
``index.json``: per shard its name, sample count, size, first and last key and
whether its first sample continues the stream of the previous shard. The
ordered reader uses that flag to keep the shards of one long stream together
(a *chain*), so a stream's clips are never read out of order by two readers.
:meth:`ShardWriter.write_stream` closes a shard before a stream that would not
fit, so a stream is split only when it alone exceeds the target size.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obs_dist.storage import ObjectStore, open_store
from pipelines.schema import (
    AUDIO_EXTS,
    CLASSES,
    CLASSES_FILE,
    INDEX_FILE,
    META_EXT,
    VIDEO_EXTS,
    SampleMeta,
    classes_json,
)

log = logging.getLogger(__name__)

SHARD_PATTERN = "shard-{:06d}.tar"
_BLOCK = 512


@dataclass
class Sample:
    """One clip to write: its metadata and its media members.

    Attributes:
        meta: the ``json`` member (its key names the sample).
        members: extension → bytes, or a local file path read when written.
    """

    meta: SampleMeta
    members: dict[str, bytes | Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for ext in self.members:
            if ext not in VIDEO_EXTS + AUDIO_EXTS:
                raise ValueError(f"sample {self.meta.key}: unsupported member .{ext} "
                                 f"(use one of {list(VIDEO_EXTS + AUDIO_EXTS)})")
        if not self.members:
            raise ValueError(f"sample {self.meta.key} has neither video nor audio")

    def member_bytes(self) -> list[tuple[str, bytes]]:
        """(extension, payload) pairs in write order: json first, then media."""
        out = [(META_EXT, self.meta.to_json())]
        for ext in sorted(self.members):
            value = self.members[ext]
            out.append((ext, value.read_bytes() if isinstance(value, Path) else value))
        return out

    @property
    def tar_size(self) -> int:
        """Bytes this sample takes in a tar (headers and padding included)."""
        sizes = [len(self.meta.to_json())]
        for value in self.members.values():
            sizes.append(value.stat().st_size if isinstance(value, Path) else len(value))
        return sum(_BLOCK + -(-s // _BLOCK) * _BLOCK for s in sizes)


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0  # reproducible shards: same samples, same bytes
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Write samples into size-bounded tar shards in a local directory or S3 prefix.

    Args:
        out: destination (path, ``file://`` or ``s3://bucket/prefix``).
        target_bytes: a shard is closed before a sample that would take it past this.
        classes: the class vocabulary written to ``classes.json``.
        endpoint_url: S3 endpoint (else from the environment).
        overwrite: replace shards already there instead of refusing.
        resume: a :meth:`snapshot` of a writer that stopped at ``out``: its shards
            are kept, any other shard there is deleted (written after the
            snapshot), and writing goes on as that writer would have.
    """

    def __init__(self, out: str, *, target_bytes: int = 64 << 20,
                 classes: Sequence[str] = CLASSES, endpoint_url: str | None = None,
                 overwrite: bool = False, resume: dict[str, Any] | None = None) -> None:
        if target_bytes < 4 * _BLOCK:
            raise ValueError(f"target shard size must be at least 2 KiB, got {target_bytes}")
        self.store: ObjectStore = open_store(out, endpoint_url=endpoint_url)
        kept = {str(s["name"]) for s in resume["shards"]} if resume else set()
        existing = [k for k in self.store.list() if k.endswith(".tar") or k == INDEX_FILE]
        missing = sorted(kept - set(existing))
        if missing:
            raise ValueError(f"{out} lacks {missing[0]}, a shard its pack journal lists; "
                             "pack again with --overwrite")
        existing = [k for k in existing if k not in kept]
        if existing and not overwrite and resume is None:
            raise ValueError(f"{out} already holds shards ({existing[0]} …); "
                             "choose an empty destination or overwrite (--overwrite)")
        for key in existing:
            self.store.delete(key)
        self.target_bytes = target_bytes
        self.classes = tuple(classes)
        self.shards: list[dict[str, Any]] = []
        self._tmpdir = tempfile.TemporaryDirectory(prefix="obs-shards-")
        self._tar: tarfile.TarFile | None = None
        self._tar_path: Path | None = None
        self._current: dict[str, Any] = {}
        self._media = hashlib.sha256()
        self._last_stream: str | None = None
        self._last_key: str | None = None
        self._last_index = -1
        self.samples = 0
        self.streams: set[str] = set()
        if resume:
            self.shards = [dict(entry) for entry in resume["shards"]]
            self.samples = int(resume["samples"])
            self.streams = set(resume["streams"])
            self._last_stream, self._last_key = resume["last_stream"], resume["last_key"]
            self._last_index = int(resume["last_index"])

    def snapshot(self) -> dict[str, Any]:
        """The state a writer needs to go on from here (``resume``): call between shards.

        Raises:
            ValueError: a shard is open (end it with :meth:`new_shard` first).
        """
        if self._tar is not None:
            raise ValueError("a shard is open: end it (new_shard) before a snapshot")
        return {"shards": [dict(entry) for entry in self.shards], "samples": self.samples,
                "streams": sorted(self.streams), "last_stream": self._last_stream,
                "last_key": self._last_key, "last_index": self._last_index}

    @property
    def _size(self) -> int:
        return int(self._current.get("bytes", 0))

    def _open(self) -> None:
        name = SHARD_PATTERN.format(len(self.shards))
        self._tar_path = Path(self._tmpdir.name) / name
        # Closed in _close_shard: a shard stays open across many write() calls.
        self._tar = tarfile.open(self._tar_path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._current = {"name": name, "samples": 0, "bytes": 0, "first": None, "last": None,
                         "continues": False}
        # What the shard's clips hold: shards of fixed-size clips differ in size only
        # by their sidecars' padding, so a size cannot tell two recordings apart.
        self._media = hashlib.sha256()

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        assert self._tar_path is not None
        self._current["bytes"] = self._tar_path.stat().st_size
        self._current["media_sha256"] = self._media.hexdigest()
        self.store.put_file(self._current["name"], self._tar_path)
        self._tar_path.unlink()
        self.shards.append(self._current)
        log.debug("wrote %s (%d samples)", self._current["name"], self._current["samples"])
        self._tar, self._tar_path = None, None

    def write(self, sample: Sample) -> None:
        """Append one sample, starting a new shard when the current one is full."""
        size = sample.tar_size
        if self._tar is not None and self._size and self._size + size > self.target_bytes:
            self._close_shard()
        if self._tar is None:
            self._open()
            self._current["continues"] = self._last_stream == sample.meta.stream
        assert self._tar is not None
        key = sample.meta.key
        if self._last_stream == sample.meta.stream and sample.meta.index <= self._last_index:
            raise ValueError(f"sample {key} written after {self._last_key}: clips of a stream "
                             "must be written in increasing index order")
        for ext, payload in sample.member_bytes():
            self._tar.addfile(_tar_info(f"{key}.{ext}", len(payload)), io.BytesIO(payload))
            if ext != META_EXT:  # labels may be re-derived (a transcript fixed); media not
                self._media.update(payload)
        cur = self._current
        cur["samples"] += 1
        cur["bytes"] += size
        cur["first"] = cur["first"] or key
        cur["last"] = key
        self._last_stream, self._last_key = sample.meta.stream, key
        self._last_index = sample.meta.index
        self.samples += 1
        self.streams.add(sample.meta.stream)

    def new_shard(self) -> None:
        """End the current shard (if it holds anything): the next sample opens a new one."""
        if self._tar is not None and self._size:
            self._close_shard()

    def write_stream(self, samples: Sequence[Sample]) -> None:
        """Append a whole stream, in a fresh shard if it does not fit in the current one.

        A stream larger than the target size is split over consecutive shards
        (marked ``continues`` in the index).
        """
        total = sum(s.tar_size for s in samples)
        if self._tar is not None and self._size and self._size + total > self.target_bytes:
            self._close_shard()
        for sample in samples:
            self.write(sample)

    def close(self) -> dict[str, Any]:
        """Finish the last shard and write ``index.json`` and ``classes.json``.

        Returns:
            The index document.
        """
        self._close_shard()
        index = {"version": 1, "samples": self.samples, "streams": len(self.streams),
                 "shards": self.shards}
        self.store.put_bytes(CLASSES_FILE, classes_json(self.classes))
        self.store.put_bytes(INDEX_FILE, json.dumps(index, indent=1).encode())
        self._tmpdir.cleanup()
        return index

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._tmpdir.cleanup()


def parse_index(raw: bytes) -> list[dict[str, Any]]:
    """The shard entries of an ``index.json`` document.

    Raises:
        ValueError: if the document is not a valid index.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{INDEX_FILE} is not valid JSON: {exc}") from exc
    shards = doc.get("shards") if isinstance(doc, dict) else None
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) for s in shards):
        raise ValueError(f'{INDEX_FILE} must hold {{"shards": [{{"name": ...}}, ...]}}')
    return shards


def shard_chains(shards: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Group shard names into chains: a shard that continues a stream joins the previous one."""
    chains: list[list[str]] = []
    for entry in shards:
        if entry.get("continues") and chains:
            chains[-1].append(entry["name"])
        else:
            chains.append([entry["name"]])
    return chains


def local_path(url: str) -> Path | None:
    """The local directory of a path or ``file://`` URL, None for remote URLs."""
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    if "://" in url or url.startswith("pipe:"):
        return None
    return Path(os.path.expanduser(url))
