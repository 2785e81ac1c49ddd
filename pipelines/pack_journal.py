"""The journal of a folder pack in progress: what ``obs make-shards --from DIR --resume`` continues.

Packing hundreds of hours of recordings takes hours (decoding and re-encoding
is ~10 clips/s a core), and a job can be killed at any point: a SLURM
preemption, a full disk, a lost S3 connection. Each recording starts a shard of
its own (:func:`pipelines.pack._write_unbounded`), so the pack is made of whole
recordings, and after each one the packer writes ``pack_journal.json`` next to
the shards: the settings, a fingerprint of the folder, how many recordings (in
the packer's own sorted order) are in finished shards, and the writer's state.
The journal is written after the shards it lists, so a shard that is in the
store but not in the journal belongs to an unfinished recording: ``--resume``
deletes it and cuts that recording again. The journal goes when ``index.json``
is written.

A resumed pack writes the same bytes as one that never stopped: the packer is
deterministic, the resumed writer numbers its shards on from the journal's, and
a recording's first shard never continues another's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from obs_dist.storage import ObjectStore
from pipelines.schema import INDEX_FILE

JOURNAL_FILE = "pack_journal.json"
_VERSION = 1


def visible_files(root: Path) -> Iterator[tuple[str, str, Path]]:
    """``(folder relative to root, file name, path)`` of every file the packer looks at.

    In a stable order; hidden files and folders (a leading dot) are left out. The
    packer's scan and :func:`folder_fingerprint` walk the folder through this one
    function, so the fingerprint covers exactly what is packed.
    """
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(files):
            if not name.startswith("."):
                yield rel, name, Path(dirpath) / name


def folder_fingerprint(root: Path) -> str:
    """A digest of every file the packer may look at under ``root``: path and size.

    Sizes, not modification times: a folder copied to scratch space keeps its
    fingerprint.
    """
    digest = hashlib.sha256()
    for rel, name, path in visible_files(root):
        digest.update(f"{rel}/{name}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


@dataclass
class PackJournal:
    """Where a folder pack stands.

    Attributes:
        settings: the options that decide the shards' bytes (clip length, frame
            size, kind, cut mode, shard size); a resume must use the same.
        folder: :func:`folder_fingerprint` of the source folder.
        clips_done: the pre-cut clips (packed before any recording) are in
            finished shards.
        recordings_done: this many recordings, in the packer's order, are in
            finished shards.
        packed: recordings among them that gave at least one clip.
        objects: object names seen in the packed clips' labels (for ``classes.json``).
        skipped: skip counts so far, by kind (the folder scan's included).
        writer: :meth:`pipelines.shards.ShardWriter.snapshot` after the last of them.
    """

    settings: dict[str, Any]
    folder: str
    clips_done: bool = False
    recordings_done: int = 0
    packed: int = 0
    objects: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    writer: dict[str, Any] = field(default_factory=dict)

    def save(self, store: ObjectStore) -> None:
        """Write the journal (after the shards it lists are in the store)."""
        # Keys in the order written: the shard entries go back into index.json as they are.
        doc = {"version": _VERSION, **asdict(self)}
        store.put_bytes(JOURNAL_FILE, json.dumps(doc, indent=1).encode())

    @staticmethod
    def load(store: ObjectStore, where: str) -> PackJournal:
        """The journal of the unfinished pack at ``where``.

        Raises:
            ValueError: there is none (a finished pack, or nothing), or it is not
                a journal this version writes.
        """
        if not store.exists(JOURNAL_FILE):
            if store.exists(INDEX_FILE):
                raise ValueError(f"{where} holds a finished pack ({INDEX_FILE}); there is "
                                 "nothing to resume")
            raise ValueError(f"{where} holds no {JOURNAL_FILE}: no pack was started there "
                             "(pack without --resume)")
        try:
            doc = json.loads(store.get_bytes(JOURNAL_FILE).decode("utf-8"))
            if not isinstance(doc, dict) or doc.pop("version", None) != _VERSION:
                raise ValueError(f"not a version {_VERSION} journal")
            return PackJournal(**doc)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{where}/{JOURNAL_FILE} cannot be read ({exc}); pack again "
                             "with --overwrite") from exc

    def check_matches(self, settings: dict[str, Any], folder: str, where: str) -> None:
        """Refuse to resume with other settings or from a changed folder.

        Raises:
            ValueError: naming the settings that differ, or saying the folder changed.
        """
        differ = sorted(k for k in set(settings) | set(self.settings)
                        if settings.get(k) != self.settings.get(k))
        if differ:
            said = ", ".join(f"{k}: {self.settings.get(k)!r} then, {settings.get(k)!r} now"
                             for k in differ)
            raise ValueError(f"the pack at {where} was started with other settings ({said}); "
                             "resume with the same options, or pack again with --overwrite")
        if folder != self.folder:
            raise ValueError(f"the source folder changed since the pack at {where} began "
                             "(files added, removed or resized): its shards would not be "
                             "the folder's; pack again with --overwrite")

    def discard(self, store: ObjectStore) -> None:
        """Remove the journal (the pack is finished)."""
        if store.exists(JOURNAL_FILE):
            store.delete(JOURNAL_FILE)
