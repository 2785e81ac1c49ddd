"""Write-once objects of a component's state, stored once and shared by checkpoints.

Some per-rank state is large and changes a little at a time: the rehearsal
stage's reservoir of past batches (``pipelines/rehearsal.py``) holds hundreds of
batches of clips and replaces at most one per new batch. Writing it whole into
every checkpoint would cost far more than the step's own changes, so, like the
big state's logs (Check-N-Run), it is stored incrementally: each piece (one
reservoir batch) is an immutable object written once, under
``objects/NAME/rank-RRRRR/IIIIIIIIII.safetensors`` (component ``NAME``, the
writing rank, the piece's id, e.g. the batch's sequence number), and each
checkpoint's rank state lists slot → object key. The rank's index puts these
objects into the manifest, so resume verifies them (size and SHA-256) like
every other object, and retention deletes those that no kept checkpoint lists
(:func:`obs_dist.checkpoint.format.apply_retention`).

A component takes part by implementing :class:`ObjectBacked` besides the
``state_dict``/``load_state_dict`` of every registered component; its
``state_dict`` then stays small (positions, generator state, which id is in
which slot). An object is one safetensors blob: the piece's tensors exactly,
and the rest of its tree as JSON in the header's metadata (no pickle).

An object counts as stored only once a checkpoint listing it is complete: after
a failed save it is written again (same key, same bytes) by the next one, so
retention may sweep the leftovers of failed or killed saves.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from obs_dist.checkpoint.codec import (
    bytes_to_tensors,
    decode_tree,
    encode_tree,
    json_bytes,
    tensors_to_bytes,
)
from obs_dist.checkpoint.format import (
    CheckpointCorrupt,
    Manifest,
    get_verified,
    object_key,
    put_object,
)
from obs_dist.storage import ObjectStore

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_TREE_KEY = "obs_tree"


@runtime_checkable
class ObjectBacked(Protocol):
    """A registered component part of whose state lives in write-once objects."""

    def state_dict(self) -> dict[str, Any]:
        """The small part of the state (it names the objects by id)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the small part; :meth:`load_objects` follows with the objects."""
        ...

    def object_ids(self) -> list[int]:
        """The ids of the objects the current state needs, in slot order."""
        ...

    def object_tree(self, oid: int) -> Any:
        """The content of object ``oid`` (tensors, numbers, strings; never changes)."""
        ...

    def load_objects(self, trees: Mapping[int, Any]) -> None:
        """Receive the objects the state just loaded needs (id → content)."""
        ...


def encode_object(tree: Any) -> bytes:
    """One object as a safetensors blob: tensors as tensors, the rest as metadata JSON."""
    document, tensors = encode_tree(tree)
    return tensors_to_bytes(tensors, metadata={_TREE_KEY: json_bytes(document).decode()})


def decode_object(data: bytes, what: str) -> Any:
    """Inverse of :func:`encode_object`.

    Raises:
        ValueError: not a safetensors blob written by :func:`encode_object`.
    """
    tensors = bytes_to_tensors(data, what)
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size].decode())
        document = json.loads(header["__metadata__"][_TREE_KEY])
    except (struct.error, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{what} has no object tree in its metadata: {exc}") from None
    return decode_tree(document, tensors)


class SideObjects:
    """This rank's write-once objects: writing the missing ones, reading them back.

    Args:
        components: the registered components (those that are :class:`ObjectBacked`
            take part).
        rank: this process's rank (part of every key).

    Raises:
        ValueError: a taking-part component's name is not ``[a-z][a-z0-9_]*``.
    """

    def __init__(self, components: Mapping[str, Any], rank: int) -> None:
        self.components = {name: c for name, c in components.items()
                           if isinstance(c, ObjectBacked)}
        for name in self.components:
            if not _NAME.match(name):
                raise ValueError(f"component name {name!r} cannot name checkpoint objects "
                                 "(lowercase letters, digits and _ only)")
        self.rank = rank
        self.stored: dict[str, dict[str, Any]] = {}  # key → record, in a complete checkpoint

    def write(self, store: ObjectStore) -> tuple[dict[str, list[str]],
                                                 dict[str, dict[str, Any]], int]:
        """Write every object the components need that is not stored yet.

        Returns:
            The listing (component → object key per slot), the records of every
            listed object (for the rank's index), and the bytes written now.
        """
        listing: dict[str, list[str]] = {}
        records: dict[str, dict[str, Any]] = {}
        written = 0
        for name, component in self.components.items():
            keys = []
            for oid in component.object_ids():
                key = object_key(name, self.rank, int(oid))
                if key not in records:
                    record = self.stored.get(key)
                    if record is None:
                        record = put_object(store, key, encode_object(component.object_tree(oid)))
                        written += int(record["size"])
                    records[key] = record
                keys.append(key)
            listing[name] = keys
        return listing, records, written

    def committed(self, records: Mapping[str, dict[str, Any]]) -> None:
        """A checkpoint listing ``records`` is complete: they are stored (the rest may go)."""
        self.stored = dict(records)

    def read(self, store: ObjectStore, manifest: Manifest, listing: Any
             ) -> dict[str, dict[int, Any]]:
        """The listed objects of this rank, each verified against the manifest.

        Raises:
            CheckpointCorrupt: an object is missing, damaged or not what its key says.
        """
        out: dict[str, dict[int, Any]] = {}
        if not isinstance(listing, dict):
            raise CheckpointCorrupt(f"checkpoint at step {manifest.step}: rank {self.rank}'s "
                                    "object listing is not a table")
        for name in self.components:
            trees: dict[int, Any] = {}
            for key in listing.get(name, []):
                oid = int(str(key).rsplit("/", 1)[-1].split(".", 1)[0])
                if key != object_key(name, self.rank, oid):
                    raise CheckpointCorrupt(f"checkpoint at step {manifest.step} lists {key} "
                                            f"for {name!r} of rank {self.rank}")
                data = get_verified(store, manifest, key)
                try:
                    trees[oid] = decode_object(data, store.url_for(key))
                except ValueError as exc:
                    raise CheckpointCorrupt(str(exc)) from None
            out[name] = trees
        return out

    def adopt(self, trees: Mapping[str, Mapping[int, Any]], manifest: Manifest | None) -> None:
        """Hand the read objects to their components (after ``load_state_dict``).

        Args:
            trees: what :meth:`read` returned.
            manifest: the checkpoint, when it is in this run's own store (its
                objects then count as stored); None for another store's.
        """
        for name, component in self.components.items():
            if name in trees:
                component.load_objects(trees[name])
        self.stored = {} if manifest is None else {
            key: manifest.objects[key] for name in self.components
            for key in (object_key(name, self.rank, oid) for oid in trees.get(name, {}))}
