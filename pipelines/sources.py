"""Where shards come from: local paths, ``file://``, ``s3://`` and ``pipe:`` commands.

:func:`resolve_shards` turns a source into the ordered list of shard URLs, the
chains of shards that hold one stream (from ``index.json`` when there is one)
and the class vocabulary (from ``classes.json``, else the built-in one). A
source is a directory or S3 prefix of ``*.tar`` files, a single shard, or a
brace pattern (``s3://b/p/shard-{000000..000009}.tar``, ``pipe:cat x-{0..3}.tar``).

:func:`open_shard` opens one shard as a byte stream from a byte offset: a seek
on local files, an HTTP Range request on S3 (through the retrying
:mod:`obs_dist.storage`), and for ``pipe:`` the command's output with the first
bytes skipped.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from braceexpand import braceexpand

from obs_dist.storage import ObjectStore, S3Store, open_store
from pipelines.schema import (
    CLASSES,
    CLASSES_FILE,
    INDEX_FILE,
    parse_classes_json,
)
from pipelines.shards import local_path, parse_index, shard_chains


@dataclass
class ShardSet:
    """The shards of a source.

    Attributes:
        urls: shard URLs in order.
        chains: groups of shard positions that must be read in sequence by
            one reader (a stream split across shards); usually one shard each.
        classes: the class vocabulary.
        expected: per shard, what ``index.json`` says of it (``samples``,
            ``bytes``, the ``first`` and ``last`` keys, ``media_sha256``: the
            digest of its clips' media, None in older indexes); empty without
            an index.
        mismatches: shards whose size on a local disk differs from ``index.json``.
    """

    urls: list[str]
    chains: list[list[int]]
    classes: tuple[str, ...] = CLASSES
    expected: list[dict[str, Any]] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    class_ids: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("the data source holds no shards")
        self.class_ids = {name: i for i, name in enumerate(self.classes)}


def index_fingerprints(shards: ShardSet) -> dict[tuple[str, int, int], str | None]:
    """``(stream, samples, bytes)`` of every one-stream shard in ``index.json`` → ``media_sha256``.

    The digest is None for an index written before shards carried one. Empty
    without an index; shards holding several streams are left out.
    """
    out: dict[tuple[str, int, int], str | None] = {}
    for entry in shards.expected:
        first, last = entry.get("first"), entry.get("last")
        if not (isinstance(first, str) and isinstance(last, str) and "/" in first):
            continue
        stream = first.rsplit("/", 1)[0]
        if last.rsplit("/", 1)[0] == stream:
            digest = entry.get("media_sha256")
            out[(stream, int(entry.get("samples") or 0), int(entry.get("bytes") or 0))] = (
                digest if isinstance(digest, str) else None)
    return out


def shared_streams(first: ShardSet, second: ShardSet) -> list[str]:
    """Streams packed into both sources (the same recording packed twice), sorted.

    Packing is byte-reproducible, so the same recording packed twice gives the
    same stream name, sample count, size and digest. Two recordings that only
    share a name (``rec_000`` of two generated sets) can share the size too:
    clips of fixed size differ only by their sidecars' padding. So where both
    indexes carry digests they decide; where one does not (an older index), a
    matching size counts as shared, the safe side for a held-out check.
    """
    theirs = index_fingerprints(second)
    both = set()
    for key, digest in index_fingerprints(first).items():
        if key in theirs and (digest is None or theirs[key] is None or digest == theirs[key]):
            both.add(key[0])
    return sorted(both)


def _split_url(url: str) -> tuple[str, str]:
    """(store root, key) of a shard URL."""
    if url.startswith("s3://"):
        bucket, _, key = url[len("s3://"):].partition("/")
        return f"s3://{bucket}", key
    path = local_path(url)
    assert path is not None, url
    return str(path.parent), path.name


_STORES: dict[tuple[str, str | None, int, float], ObjectStore] = {}


def store_for(root: str, endpoint_url: str | None, retries: int = 5,
              patience_s: float = 0.0) -> ObjectStore:
    """A cached store per (root, endpoint, retry policy) — one S3 bucket check per process.

    Args:
        root: the store's root (a directory or ``s3://bucket``).
        endpoint_url: S3 endpoint, or None for the environment's.
        retries: retries of a transient S3 failure.
        patience_s: besides ``retries``, wait out an S3 outage this long.
    """
    key = (root, endpoint_url, retries, patience_s)
    if key not in _STORES:
        _STORES[key] = open_store(root, endpoint_url=endpoint_url, retries=retries,
                                  patience_s=patience_s)
    return _STORES[key]


def store_retries() -> int:
    """Transient S3 failures retried so far by this process's data stores (a metric)."""
    return sum(s.retried for s in _STORES.values() if isinstance(s, S3Store))


def _read_optional(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get_bytes(key)
    except FileNotFoundError:
        return None


def resolve_shards(source: str, endpoint_url: str | None = None, retries: int = 5,
                   patience_s: float = 0.0) -> ShardSet:
    """The shards, chains and classes of ``source``.

    Raises:
        ValueError: if the source is empty, malformed or holds no shards.
        obs_dist.storage.StorageError: if an S3 bucket is missing or access is refused.
    """
    if not source:
        raise ValueError("data source is empty: give a directory, s3://bucket/prefix, "
                         "a brace pattern or pipe:command")
    if "{" in source or source.startswith("pipe:") or source.endswith(".tar"):
        urls = list(braceexpand(source))
        classes: tuple[str, ...] = CLASSES
        first = urls[0]
        if not first.startswith("pipe:"):
            root, key = _split_url(first)
            store = store_for(root, endpoint_url, retries, patience_s)
            parent = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
            raw = _read_optional(store, parent + CLASSES_FILE)
            if raw is not None:
                classes = parse_classes_json(raw)
        return ShardSet(urls, [[i] for i in range(len(urls))], classes)
    path = local_path(source)
    if path is not None and not path.is_dir():
        raise ValueError(f"data source {source!r} is not a directory")
    store = store_for(source.rstrip("/"), endpoint_url, retries, patience_s)
    raw_classes = _read_optional(store, CLASSES_FILE)
    classes = parse_classes_json(raw_classes) if raw_classes is not None else CLASSES
    raw_index = _read_optional(store, INDEX_FILE)
    if raw_index is not None:
        entries = parse_index(raw_index)
        names = [e["name"] for e in entries]
        position = {name: i for i, name in enumerate(names)}
        chains = [[position[n] for n in chain] for chain in shard_chains(entries)]
    else:
        names = [k for k in store.list() if k.endswith(".tar") and "/" not in k]
        chains = [[i] for i in range(len(names))]
    if not names:
        raise ValueError(f"data source {source!r} holds no .tar shards")
    expected = ([{"samples": e.get("samples"), "bytes": e.get("bytes"), "first": e.get("first"),
                  "last": e.get("last"), "media_sha256": e.get("media_sha256")} for e in entries]
                if raw_index is not None else [])
    mismatches = _size_mismatches(path, names, expected) if path is not None else []
    return ShardSet([store.url_for(n) for n in names], chains, classes, expected, mismatches)


def _size_mismatches(root: Any, names: list[str], expected: list[dict[str, Any]]) -> list[str]:
    """Local shards whose size (or existence) disagrees with ``index.json``."""
    out = []
    for name, entry in zip(names, expected):
        want = entry.get("bytes")
        if not isinstance(want, int):
            continue
        shard = root / name
        have = shard.stat().st_size if shard.is_file() else None
        if have != want:
            out.append(f"{shard}: index.json lists {want} bytes, the shard "
                       + ("is missing" if have is None else f"has {have}"))
    return out


class _PipeReader(io.RawIOBase):
    """stdout of a shell command; a non-zero exit at EOF is an error, not a short shard."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        assert self.proc.stdout is not None
        n = self.proc.stdout.readinto(buffer)
        if n == 0:
            code = self.proc.wait()
            if code != 0:
                err = self.proc.stderr.read().decode("utf-8", "replace")[-300:] \
                    if self.proc.stderr else ""
                raise OSError(f"pipe:{self.command} exited with status {code}: {err.strip()}")
        return n

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        super().close()


def open_shard(url: str, start: int = 0, endpoint_url: str | None = None,
               retries: int = 5, patience_s: float = 0.0) -> BinaryIO:
    """Open a shard as a binary stream positioned at byte ``start``.

    On S3 the open and every read retry a transient failure ``retries`` times
    and for ``patience_s`` (:class:`obs_dist.storage.S3Store`), resuming at the
    byte where a read broke.
    """
    if url.startswith("pipe:"):
        reader = io.BufferedReader(_PipeReader(url[len("pipe:"):]), buffer_size=1 << 20)
        left = start
        while left:
            chunk = reader.read(min(left, 1 << 20))
            if not chunk:
                raise OSError(f"{url} ended before byte {start}")
            left -= len(chunk)
        return reader  # type: ignore[return-value]
    root, key = _split_url(url)
    return store_for(root, endpoint_url, retries, patience_s).open_read(key, start)
