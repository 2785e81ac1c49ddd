"""Checkpoints in an object store: layout, manifest, writing, verified reading, retention.

Layout under the store's root (``NNNNNNNNNN`` = a step, zero-padded)::

    manifests/NNNNNNNNNN.json                 one per complete checkpoint, written last
    state/base-NNNNNNNNNN/part-PPPP.safetensors   a full base of the big state, per partition
    state/log-NNNNNNNNNN.safetensors          entries changed since the previous checkpoint
    step-NNNNNNNNNN/rank-RRRRR.json           per-rank state: the JSON half of the tree
    step-NNNNNNNNNN/rank-RRRRR.safetensors    per-rank state: its tensors
    step-NNNNNNNNNN/rank-RRRRR.index.json     sizes and hashes of that rank's objects
    objects/NAME/rank-RRRRR/IIIIIIIIII.safetensors   a write-once object of component NAME
                                              (e.g. a rehearsal batch), shared by checkpoints

A manifest lists *every* object needed to restore its checkpoint — the base
partitions, every log since the base in order, and each rank's objects — with
size and SHA-256, and its own hash. It is written after everything it lists
(atomically on a local disk, one PUT on S3), so a checkpoint whose writer died
half way simply has no manifest and is never chosen. Reading verifies each
object against the manifest before using it; a mismatch raises
:class:`CheckpointCorrupt` naming the object, and the caller falls back to an
older checkpoint. Nothing read from the store is unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from obs_dist.checkpoint.codec import (
    bytes_to_tensors,
    json_bytes,
    parse_json,
    sha256_hex,
    tensors_to_bytes,
)
from obs_dist.checkpoint.delta_log import apply_log
from obs_dist.model.sharded_state import ShardedState
from obs_dist.model.state import BigState
from obs_dist.storage import LocalStore, ObjectStore

log = logging.getLogger("obs.checkpoint")

FORMAT = "obs-checkpoint"
VERSION = 1
# Larger objects go to S3 through a temporary file and multipart upload.
LARGE_OBJECT = 64 * 1024 * 1024
# Write-once objects of registered components (:mod:`obs_dist.checkpoint.side_objects`).
OBJECTS_PREFIX = "objects/"
_STEP_IN_KEY = re.compile(r"(?:^manifests/|base-|log-|^step-)(\d{10})")


class CheckpointCorrupt(ValueError):
    """A checkpoint cannot be used: an object is missing, truncated or altered."""


# ---------------------------------------------------------------------- layout
def manifest_key(step: int) -> str:
    """Key of the manifest of the checkpoint at ``step``."""
    return f"manifests/{step:010d}.json"


def base_key(step: int, partition: int) -> str:
    """Key of partition ``partition`` of the base taken at ``step``."""
    return f"state/base-{step:010d}/part-{partition:04d}.safetensors"


def log_key(step: int) -> str:
    """Key of the log of entries changed up to ``step`` since the previous checkpoint."""
    return f"state/log-{step:010d}.safetensors"


def rank_keys(step: int, rank: int) -> tuple[str, str, str]:
    """Keys of a rank's JSON document, tensors and index at ``step``."""
    stem = f"step-{step:010d}/rank-{rank:05d}"
    return f"{stem}.json", f"{stem}.safetensors", f"{stem}.index.json"


def object_key(component: str, rank: int, oid: int) -> str:
    """Key of the write-once object ``oid`` of a registered component of ``rank``."""
    return f"{OBJECTS_PREFIX}{component}/rank-{rank:05d}/{oid:010d}.safetensors"


def step_of_key(key: str) -> int | None:
    """The step a checkpoint object belongs to, or None for a foreign key."""
    match = _STEP_IN_KEY.search(key)
    return int(match.group(1)) if match else None


# -------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """What one complete checkpoint consists of.

    Attributes:
        step: the trainer step the checkpoint was taken after.
        base_step: the step of the base this checkpoint's state builds on.
        world_size: number of ranks that wrote per-rank state.
        state: shape of the big state (nodes, partitions, dtype, bounds, nbytes).
        base: keys of the base partitions, in partition order.
        logs: keys of the logs to replay over the base, oldest first.
        objects: every object of the checkpoint → ``{"size", "sha256"}``.
        log_bytes: bytes of all logs since the base (decides when to rebase).
        touched: entries in this checkpoint's own log (0 for a base).
        created: Unix time at which the manifest was written.
        counters: the trainer's counters (for people reading ``obs ckpt``).
        config: the run's resolved configuration.
        run_id: the run that wrote it (:mod:`obs_dist.checkpoint.lease`; ''
            in checkpoints written before run ids existed).
    """

    step: int
    base_step: int
    world_size: int
    state: dict[str, Any]
    base: list[str]
    logs: list[str]
    objects: dict[str, dict[str, Any]]
    log_bytes: int = 0
    touched: int = 0
    created: float = field(default_factory=time.time)
    counters: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""

    @property
    def kind(self) -> str:
        """``base`` when this checkpoint wrote a full base, else ``incremental``."""
        return "base" if self.base_step == self.step else "incremental"

    @property
    def total_bytes(self) -> int:
        """Bytes of every object the checkpoint needs (base and logs included)."""
        return sum(int(o["size"]) for o in self.objects.values())

    def own_bytes(self) -> int:
        """Bytes written for this checkpoint alone (objects keyed by its own step)."""
        return sum(int(o["size"]) for k, o in self.objects.items()
                   if step_of_key(k) == self.step)

    def to_bytes(self) -> bytes:
        """Canonical JSON, including the SHA-256 of the rest of the document."""
        body = {"format": FORMAT, "version": VERSION, **asdict(self)}
        body["manifest_sha256"] = sha256_hex(json_bytes(body))
        return json_bytes(body)

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> Manifest:
        """Parse and self-check a manifest.

        Raises:
            CheckpointCorrupt: not JSON, wrong format, or its own hash does not match.
        """
        try:
            body = parse_json(data, what)
        except ValueError as exc:
            raise CheckpointCorrupt(str(exc)) from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise CheckpointCorrupt(f"{what} is not an {FORMAT} manifest")
        if body.get("version") != VERSION:
            raise CheckpointCorrupt(f"{what} has format version {body.get('version')}, "
                                    f"this code reads version {VERSION}")
        claimed = body.pop("manifest_sha256", None)
        if claimed != sha256_hex(json_bytes(body)):
            raise CheckpointCorrupt(f"{what} fails its own checksum (altered or damaged)")
        body.pop("format")
        body.pop("version")
        try:
            return cls(**body)
        except TypeError as exc:
            raise CheckpointCorrupt(f"{what} has unexpected fields: {exc}") from None


def state_shape(state: BigState | ShardedState) -> dict[str, Any]:
    """The facts about a state that a checkpoint must match to be loaded into it."""
    return {"nodes": state.num_nodes, "partitions": len(state.parts),
            "dtype": str(state.dtype).removeprefix("torch."), "bounds": list(state.bounds),
            "nbytes": state.nbytes}


# Config keys (dotted; a key ends in "." for a whole section) that may change on
# resume: where output, metrics and checkpoints go and how often they are
# reported or written, and I/O patience. Everything else is a hyperparameter or
# decides what the run computes, and must equal the checkpoint's.
RESUME_MAY_CHANGE = (
    "name", "out_dir", "metrics.", "history.", "make_synthetic",
    "train.progress", "train.log_every", "train.moments_every",
    "checkpoint.every", "checkpoint.url", "checkpoint.endpoint_url", "checkpoint.retries",
    "checkpoint.patience_s", "checkpoint.lease_s", "checkpoint.keep_bases", "checkpoint.shared",
    "data.endpoint_url", "data.retries", "data.patience_s", "data.prefetch", "dist.timeout_s",
)


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as ``{"a.b.c": value}``."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten_config(value, f"{prefix}{key}."))
    return out


def may_change_on_resume(key: str, config: dict[str, Any]) -> bool:
    """Whether config ``key`` may differ from the checkpoint's (:data:`RESUME_MAY_CHANGE`).

    ``train.steps`` may change only when the learning-rate schedule does not
    depend on it: ``train.schedule_steps`` set explicitly (and unchanged).
    """
    if key == "train.steps":
        return bool(config.get("train", {}).get("schedule_steps"))
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)


def config_changes(saved: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """The keys whose value differs between a checkpoint's config and this run's.

    Keys the checkpoint does not have (settings added since it was written) and
    keys of :func:`may_change_on_resume` are not compared.

    Returns:
        ``"key (saved → live)"`` strings, sorted by key.
    """
    old, new = flatten_config(saved), flatten_config(live)
    return [f"{key} ({old[key]!r} → {new.get(key)!r})" for key in sorted(old)
            if key in new and old[key] != new[key] and not may_change_on_resume(key, live)]


def check_compatible(manifest: Manifest, state: BigState | ShardedState, world_size: int,
                     config: dict[str, Any] | None = None) -> None:
    """Refuse to load a checkpoint into a differently shaped or configured run.

    Args:
        manifest: the checkpoint.
        state: this run's big state.
        world_size: this run's number of ranks.
        config: this run's resolved config (None: not compared).

    Raises:
        ValueError: naming the first mismatch (state size, partitions, dtype, world
            size), or every config key that differs from the checkpoint's.
    """
    if config and manifest.config:
        changed = config_changes(manifest.config, config)
        if changed:
            raise ValueError(
                f"cannot resume from the checkpoint at step {manifest.step}: this run's "
                f"config differs from the checkpoint's in {', '.join(changed)}. Only "
                f"{', '.join(RESUME_MAY_CHANGE)} (and train.steps with an explicit "
                f"train.schedule_steps) may change on resume; use the checkpoint's values, "
                f"or start a new run (--resume never, or another checkpoint.url)")
    live = state_shape(state)
    for key in ("nodes", "partitions", "dtype"):
        if manifest.state.get(key) != live[key]:
            raise ValueError(f"checkpoint at step {manifest.step} has state.{key} = "
                             f"{manifest.state.get(key)!r}, this run has {live[key]!r}")
    if manifest.world_size != world_size:
        raise ValueError(f"checkpoint at step {manifest.step} was written by "
                         f"{manifest.world_size} rank(s), this run has {world_size}; resume "
                         "with the same number of processes")


# ------------------------------------------------------------------- writing
def put_object(store: ObjectStore, key: str, data: bytes) -> dict[str, Any]:
    """Store ``data`` under ``key``; returns its ``{"size", "sha256"}`` record."""
    if len(data) > LARGE_OBJECT and not isinstance(store, LocalStore):
        # boto3's multipart upload works from a file; one PUT is capped at 5 GiB.
        fd, tmp = tempfile.mkstemp(prefix="obs-ckpt-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            store.put_file(key, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    else:
        store.put_bytes(key, data)
    return {"size": len(data), "sha256": sha256_hex(data)}


def write_base(store: ObjectStore, state: BigState, step: int) -> dict[str, dict[str, Any]]:
    """Write every partition of ``state`` as the base of ``step``."""
    objects = {}
    for p, part in enumerate(state.parts):
        data = tensors_to_bytes({"partition": part.detach().cpu()},
                                metadata={"partition": str(p), "row_start": str(state.bounds[p]),
                                          "row_end": str(state.bounds[p + 1])})
        objects[base_key(step, p)] = put_object(store, base_key(step, p), data)
    return objects


def write_rank(store: ObjectStore, step: int, rank: int, document: bytes,
               tensors: bytes, shared: dict[str, dict[str, Any]] | None = None
               ) -> dict[str, dict[str, Any]]:
    """Write one rank's state, then its index (the rank's 'done' marker).

    Args:
        store: the checkpoint store.
        step: the checkpoint's step.
        rank: the writing rank.
        document: the JSON half of the rank's tree.
        tensors: its safetensors half.
        shared: write-once objects (already stored, possibly by earlier
            checkpoints) that this checkpoint needs too; listed in the index,
            so the manifest lists, verifies and retains them.
    """
    doc_key, tensor_key, index_key = rank_keys(step, rank)
    objects = {doc_key: put_object(store, doc_key, document),
               tensor_key: put_object(store, tensor_key, tensors)}
    store.put_bytes(index_key, json_bytes({**(shared or {}), **objects}))
    return objects


def read_rank_index(store: ObjectStore, step: int, rank: int) -> dict[str, dict[str, Any]]:
    """The objects a rank wrote for ``step``, its index included.

    Raises:
        FileNotFoundError: the rank did not finish writing.
    """
    key = rank_keys(step, rank)[2]
    data = store.get_bytes(key)
    index = parse_json(data, store.url_for(key))
    if not isinstance(index, dict):
        raise ValueError(f"{store.url_for(key)} is not a rank index")
    index[key] = {"size": len(data), "sha256": sha256_hex(data)}
    return index


def write_manifest(store: ObjectStore, manifest: Manifest) -> None:
    """Write the manifest: from now on the checkpoint exists."""
    store.put_bytes(manifest_key(manifest.step), manifest.to_bytes())


# ------------------------------------------------------------------- reading
def list_steps(store: ObjectStore) -> list[int]:
    """Steps that have a manifest, oldest first (complete checkpoints, unverified)."""
    steps = []
    for key in store.list("manifests/"):
        name = key[len("manifests/"):]
        if re.fullmatch(r"\d{10}\.json", name):
            steps.append(int(name[:10]))
    return sorted(steps)


def read_manifest(store: ObjectStore, step: int) -> Manifest:
    """Read and self-check the manifest of ``step``.

    Raises:
        CheckpointCorrupt: missing or damaged manifest.
    """
    key = manifest_key(step)
    try:
        data = store.get_bytes(key)
    except FileNotFoundError:
        raise CheckpointCorrupt(f"{store.url_for(key)} is missing") from None
    manifest = Manifest.from_bytes(data, store.url_for(key))
    if manifest.step != step:
        raise CheckpointCorrupt(f"{store.url_for(key)} describes step {manifest.step}")
    return manifest


def get_verified(store: ObjectStore, manifest: Manifest, key: str) -> bytes:
    """Read one object and check it against the manifest.

    Raises:
        CheckpointCorrupt: naming the object if it is missing, unlisted, or its
            size or SHA-256 differs from the manifest's record.
    """
    info = manifest.objects.get(key)
    where = store.url_for(key)
    if info is None:
        raise CheckpointCorrupt(f"{where} is not listed in the manifest of step {manifest.step}")
    try:
        data = store.get_bytes(key)
    except FileNotFoundError:
        raise CheckpointCorrupt(f"{where} is missing (checkpoint step {manifest.step})") from None
    if len(data) != int(info["size"]):
        raise CheckpointCorrupt(f"{where} has {len(data)} bytes, the manifest of step "
                                f"{manifest.step} says {info['size']}")
    if sha256_hex(data) != info["sha256"]:
        raise CheckpointCorrupt(f"{where} fails its SHA-256 check (checkpoint step "
                                f"{manifest.step}): the object was altered or damaged")
    return data


def hash_object(store: ObjectStore, key: str) -> tuple[int, str] | None:
    """``(size, sha256)`` of a stored object, streamed; None if it is missing."""
    digest = hashlib.sha256()
    size = 0
    try:
        with store.open_read(key) as fh:
            while chunk := fh.read(8 << 20):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return None
    return size, digest.hexdigest()


def verify(store: ObjectStore, manifest: Manifest,
           cache: dict[str, tuple[int, str] | None] | None = None) -> list[str]:
    """Re-hash every object of a checkpoint; returns one message per problem.

    Args:
        store: where the checkpoint lives.
        manifest: the checkpoint.
        cache: hashes already computed (objects shared by several checkpoints,
            such as a base, are then read once).
    """
    cache = {} if cache is None else cache
    problems = []
    for key, info in sorted(manifest.objects.items()):
        where = store.url_for(key)
        if key not in cache:
            cache[key] = hash_object(store, key)
        found = cache[key]
        if found is None:
            problems.append(f"{where}: missing")
            continue
        size, sha = found
        if size != int(info["size"]):
            problems.append(f"{where}: {size} bytes, manifest says {info['size']}")
        elif sha != info["sha256"]:
            problems.append(f"{where}: SHA-256 mismatch (altered or damaged)")
    return problems


def load_state(store: ObjectStore, manifest: Manifest, state: BigState) -> int:
    """Load the base partitions, then replay the logs in order; every object verified.

    Returns:
        The number of log entries replayed.

    Raises:
        CheckpointCorrupt: an object fails verification (the state is then
            partly overwritten; load another checkpoint into it).
    """
    if len(manifest.base) != len(state.parts):
        raise CheckpointCorrupt(f"manifest of step {manifest.step} lists {len(manifest.base)} "
                                f"base partitions for a state of {len(state.parts)}")
    for p, key in enumerate(manifest.base):
        tensors = bytes_to_tensors(get_verified(store, manifest, key), store.url_for(key))
        if "partition" not in tensors:
            raise CheckpointCorrupt(f"{store.url_for(key)} holds no 'partition' tensor")
        try:
            state.load_partition(p, tensors["partition"])
        except ValueError as exc:
            raise CheckpointCorrupt(f"{store.url_for(key)}: {exc}") from None
    replayed = 0
    for key in manifest.logs:
        data = get_verified(store, manifest, key)
        try:
            replayed += apply_log(state, data, store.url_for(key))
        except ValueError as exc:
            raise CheckpointCorrupt(str(exc)) from None
    return replayed


def read_rank(store: ObjectStore, manifest: Manifest, rank: int) -> tuple[bytes, bytes]:
    """A rank's verified ``(json, safetensors)`` objects."""
    doc_key, tensor_key, _ = rank_keys(manifest.step, rank)
    return get_verified(store, manifest, doc_key), get_verified(store, manifest, tensor_key)


# ------------------------------------------------------------------ retention
def _readable_manifests(store: ObjectStore) -> tuple[list[Manifest], list[int]]:
    good, bad = [], []
    for step in list_steps(store):
        try:
            good.append(read_manifest(store, step))
        except CheckpointCorrupt:
            bad.append(step)
    return good, bad


def apply_retention(store: ObjectStore, keep_bases: int, current: Manifest) -> list[str]:
    """Keep the newest ``keep_bases`` bases (up to ``current``'s) and every checkpoint on them.

    Manifests are deleted before their objects, so an interrupted clean-up never
    leaves a manifest pointing at deleted data. Objects no kept manifest needs
    and older than the oldest kept checkpoint (e.g. from an upload that died
    before its manifest) are swept too, and so are write-once component objects
    (``objects/``) that no manifest left in the store lists: every rank's
    objects of ``current`` are in its manifest, and a rank writes the next
    checkpoint's only after the collectives of the steps in between. Checkpoints
    newer than ``current`` (left by a run that was rolled back) are not touched.

    Returns:
        The deleted keys.
    """
    if keep_bases < 1:
        raise ValueError(f"keep_bases must be >= 1, got {keep_bases}")
    manifests, unreadable = _readable_manifests(store)
    bases = sorted({m.base_step for m in manifests if m.base_step <= current.base_step}
                   | {current.base_step})
    kept_bases = set(bases[-keep_bases:])
    kept = [m for m in manifests if m.base_step in kept_bases or m.step > current.step]
    kept_steps = {m.step for m in kept}
    dropped = [m for m in manifests if m.step not in kept_steps]
    referenced = {key for m in kept for key in m.objects} | {manifest_key(m.step) for m in kept}
    oldest_kept = min(m.step for m in kept) if kept else current.step
    deleted: list[str] = []
    for m in dropped:
        store.delete(manifest_key(m.step))
        deleted.append(manifest_key(m.step))
    for m in dropped:
        for key in sorted(set(m.objects) - referenced):
            store.delete(key)
            deleted.append(key)
    for bad in unreadable:
        if bad < oldest_kept:
            store.delete(manifest_key(bad))
            deleted.append(manifest_key(bad))
    done = set(deleted)
    for key in store.list():
        owner = step_of_key(key)
        if key in referenced or key in done:
            continue
        if key.startswith(OBJECTS_PREFIX):
            if any(bad >= oldest_kept for bad in unreadable):
                continue  # an unreadable manifest left in the store might list it
        elif owner is None or owner >= oldest_kept:
            continue
        store.delete(key)
        deleted.append(key)
    if deleted:
        log.info("retention: kept bases %s, deleted %d object(s)", sorted(kept_bases),
                 len(deleted))
    return deleted
