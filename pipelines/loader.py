"""The trainer's data loader: batches of ``streams × window`` clips with an exact cursor.

``build_loader(cfg, rank, world_size)`` returns a :class:`StreamLoader`, an
iterable of batch dictionaries (see :meth:`StreamLoader.__iter__`). Rows are
lanes that follow one stream each (:mod:`pipelines.lanes`); loader workers are
``torch.utils.data`` worker processes, each filling a fixed block of rows from
its own shards. The DataLoader hands out worker results strictly round-robin
(no worker ever stops: an exhausted one sends empty rows), so the main process
takes one partial batch from each worker in turn and stacks them; each carries
its worker's cursor after it, which is what :meth:`StreamLoader.state_dict`
saves. A resumed loader continues at the exact next sample of every row.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from obs_dist.storage import StoreUnavailable
from pipelines.decode import audio_frames
from pipelines.lanes import LanePlan, WorkerLanes, pass_batches
from pipelines.sources import resolve_shards

log = logging.getLogger(__name__)

MODES = ("ordered", "shuffled", "resampled")
_STATE_VERSION = 1
# Settings a saved cursor depends on: resuming with others would not be exact.
_CURSOR_KEYS = ("source", "mode", "streams", "window", "workers", "seed", "loop")


@dataclass
class DataConfig:
    """The data pipeline of a training run.

    Attributes:
        source: shards: a directory, ``file://``, ``s3://bucket/prefix``, a
            brace pattern or ``pipe:command``.
        streams: B, rows (streams) per batch.
        window: T, clips per row per batch.
        mode: ``ordered`` (streams in temporal order, for the sequential
            phase), ``shuffled`` (shard order reshuffled per epoch) or
            ``resampled`` (shards drawn with replacement, endless; parallel phase).
        workers: loader worker processes (0 reads in the calling process);
            ``streams`` must be a multiple of it.
        seed: seed of shuffling and resampling.
        frames: video frames per clip.
        image_size: frame height and width after resizing.
        n_mels: mel bands of the audio features.
        audio_seconds: audio per clip (log-mel frames = seconds·100 + 1).
        endpoint_url: S3 endpoint (else ``OBS_S3_ENDPOINT_URL``/``AWS_ENDPOINT_URL``).
        loop: start a new epoch instead of ending (ordered/shuffled).
        prefetch: partial batches each worker prepares ahead.
        retries: retries of transient S3 errors.
        patience_s: besides ``retries``, keep retrying a failing S3 read until
            it has been failing this long (an outage): training waits at the
            exact byte rather than skip a shard; past it the run stops
            (:class:`obs_dist.storage.StoreUnavailable`). 0: ``retries`` only.
        eval_source: shards of held-out streams for evaluation (same forms as
            ``source``; empty: no evaluation). Read in order from the start each time.
    """

    source: str = ""
    streams: int = 8
    window: int = 16
    mode: str = "ordered"
    workers: int = 2
    seed: int = 0
    frames: int = 8
    image_size: int = 64
    n_mels: int = 64
    audio_seconds: float = 1.0
    endpoint_url: str | None = None
    loop: bool = False
    prefetch: int = 2
    retries: int = 5
    patience_s: float = 120.0
    eval_source: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        for name in ("streams", "window", "frames", "n_mels", "prefetch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0 or self.retries < 0:
            raise ValueError(f"workers and retries must be >= 0, got {self.workers}, "
                             f"{self.retries}")
        if self.workers and self.streams % self.workers:
            raise ValueError(f"streams ({self.streams}) must be a multiple of workers "
                             f"({self.workers}): each worker fills the same number of rows")
        if not self.patience_s >= 0:
            raise ValueError(f"patience_s must be >= 0, got {self.patience_s}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.audio_seconds <= 0:
            raise ValueError(f"audio_seconds must be > 0, got {self.audio_seconds}")

    @property
    def audio_frames(self) -> int:
        """A, the log-mel frames per clip."""
        return audio_frames(self.audio_seconds)


class _PartialBatches(IterableDataset):  # type: ignore[type-arg]
    """Endless partial batches of one worker (the worker id picks rows and shards)."""

    def __init__(self, plan: LanePlan, states: list[dict[str, Any] | None]) -> None:
        self.plan = plan
        self.states = states

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        lanes = WorkerLanes(self.plan, worker, self.states[worker])
        while True:
            if info is not None:
                try:
                    part = lanes.produce()
                except StoreUnavailable as exc:
                    # DataLoader would re-raise it as "Caught StoreUnavailable in
                    # DataLoader worker process 0." and lose the message (the
                    # endpoint, how long): the main process raises it as it was.
                    yield {"worker": worker, "store_unavailable": str(exc)}
                    return
                yield part
                continue
            # In the caller's process: decode on one thread (as DataLoader workers
            # do), then give the trainer its threads back. Per-clip STFTs are too
            # small to split, and idle intra-op threads spinning on a busy
            # machine made decoding 7x slower.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                part = lanes.produce()
            finally:
                torch.set_num_threads(threads)
            yield part


class StreamLoader:
    """Iterable of batches (see :meth:`__iter__`) with an exact, saveable cursor.

    Attributes:
        errors: skipped samples by kind, cumulative over the run (resumed too).
        store_retries: transient S3 failures retried by the workers in this process
            (I/O, not data position: not in the cursor, so a run that waited out
            an outage saves the same state as one that did not).
        clips_seen: clips delivered in batches so far.
        bytes_seen: compressed bytes of those clips.
        batches: batches delivered so far.
    """

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        shards = resolve_shards(cfg.source, cfg.endpoint_url, cfg.retries, cfg.patience_s)
        self.classes = shards.classes
        workers = max(1, cfg.workers)
        self.plan = LanePlan(shards, cfg.mode, cfg.streams, cfg.window, workers, rank,
                             world_size, cfg.seed, cfg.loop, cfg.frames, cfg.image_size,
                             cfg.n_mels, cfg.audio_frames, cfg.endpoint_url, cfg.retries,
                             cfg.patience_s)
        units = len(shards.chains)
        if cfg.mode != "resampled" and units < world_size * cfg.streams:
            log.warning("%d shard chains for %d ranks × %d rows: some rows stay empty; write "
                        "smaller shards for full batches", units, world_size, cfg.streams)
        self._states: list[dict[str, Any] | None] = [None] * workers
        self.errors: dict[str, int] = {}
        self.store_retries = 0
        # Labels outside classes.json by kind (``object``): counts, and the names in
        # the order they were first seen.
        self.unknown_labels: dict[str, int] = {}
        self.unknown_names: dict[str, dict[str, None]] = {}
        for problem in shards.mismatches:  # checked against index.json (local sources)
            self.errors["shard_mismatch"] = self.errors.get("shard_mismatch", 0) + 1
            log.warning("shard does not match index.json (shard_mismatch): %s", problem)
        self.clips_seen = 0
        self.bytes_seen = 0
        self.batches = 0

    def pass_batches(self) -> int | None:
        """Batches in one pass over this rank's data, when ``index.json`` tells
        (:func:`pipelines.lanes.pass_batches`); None for endless or untold data."""
        return pass_batches(self.plan)

    @property
    def num_classes(self) -> int:
        """Size of the class vocabulary (for the trainer's head)."""
        return len(self.classes)

    def _cursor_config(self) -> dict[str, Any]:
        out = {key: getattr(self.cfg, key) for key in _CURSOR_KEYS}
        out["workers"] = self.plan.workers
        out.update(rank=self.rank, world_size=self.world_size)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The position after the last delivered batch (JSON-serialisable)."""
        return {"version": _STATE_VERSION, "config": self._cursor_config(),
                "workers": copy.deepcopy(self._states), "errors": dict(self.errors),
                "unknown_labels": dict(self.unknown_labels),
                "clips_seen": self.clips_seen, "bytes_seen": self.bytes_seen,
                "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict` of an identical setup).

        Raises:
            ValueError: if the state belongs to a different source, mode, batch
                shape, worker count, seed, rank or world size.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"loader state must be a dict of version {_STATE_VERSION}")
        saved, now = state.get("config", {}), self._cursor_config()
        for key, value in now.items():
            if saved.get(key) != value:
                raise ValueError(f"loader state was saved with {key}={saved.get(key)!r} but "
                                 f"this loader has {key}={value!r}; resume needs the same")
        workers = state.get("workers")
        if not isinstance(workers, list) or len(workers) != self.plan.workers:
            raise ValueError("loader state has no cursor per worker")
        self._states = copy.deepcopy(workers)
        self.errors = {str(k): int(v) for k, v in state.get("errors", {}).items()}
        self.unknown_labels = {str(k): int(v)
                               for k, v in state.get("unknown_labels", {}).items()}
        self.clips_seen = int(state.get("clips_seen", 0))
        self.bytes_seen = int(state.get("bytes_seen", 0))
        self.batches = int(state.get("batches", 0))

    def _parts(self) -> Iterator[dict[str, Any]]:
        dataset = _PartialBatches(self.plan, self._states)
        if self.cfg.workers == 0:
            yield from dataset
            return
        # A private generator: a DataLoader draws its workers' base seed when its
        # iterator starts, from the global generator otherwise. A resumed run starts
        # its iterator at the checkpoint's step, not at step 0, so that draw would
        # move every later global draw (augmentation, contrastive views) off the
        # uninterrupted run's. The workers draw nothing from it.
        loader = DataLoader(dataset, batch_size=None, num_workers=self.cfg.workers,
                            prefetch_factor=self.cfg.prefetch, persistent_workers=False,
                            generator=torch.Generator().manual_seed(self.cfg.seed))
        yield from loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield batches until the data ends (forever in resampled or loop mode).

        Each batch is a dict: ``video`` uint8 [B, T, F, 3, H, W], ``video_mask``
        bool [B, T], ``audio`` float32 [B, T, n_mels, A], ``audio_mask`` bool
        [B, T], ``objects`` int64 [B, T] (-1 unknown), ``targets`` int64 [B, T]
        (object id at query clips, -100 elsewhere), ``continuous`` bool [B, T],
        ``reset`` bool [B] (row starts a new stream), ``keys`` list[list[str]]
        ('' where a row is padded), ``words`` list[list[str]] (the spoken word
        of the clip's ``word`` label, '' if none). After the data ends the cursor moves to the
        start of the next epoch, so iterating again gives the next epoch.
        """
        parts = self._parts()
        workers = self.plan.workers
        try:
            while True:
                round_ = [next(parts) for _ in range(workers)]
                for p in round_:
                    if "store_unavailable" in p:
                        raise StoreUnavailable(p["store_unavailable"])
                assert [p["worker"] for p in round_] == list(range(workers)), \
                    "worker results out of round-robin order"
                if all(p["exhausted"] and p["clips"] == 0 for p in round_):
                    for p in round_:
                        self._add_counts(p)
                    self._states = [{"epoch": int((s or {}).get("epoch", 0)) + 1}
                                    for s in self._states]
                    return
                batch = _stack(round_)
                for i, p in enumerate(round_):
                    self._states[i] = p["state"]
                    self._add_counts(p)
                    self.clips_seen += p["clips"]
                    self.bytes_seen += p["bytes"]
                self.batches += 1
                yield batch
        finally:
            parts.close()

    def _add_counts(self, part: dict[str, Any]) -> None:
        """A partial batch's skipped samples and unknown labels (each name logged once)."""
        for kind, n in part["errors"].items():
            self.errors[kind] = self.errors.get(kind, 0) + int(n)
        self.store_retries += int(part.get("store_retries", 0))
        for kind, n in part.get("unknown", {}).items():
            self.unknown_labels[kind] = self.unknown_labels.get(kind, 0) + int(n)
        for kind, name, where in part.get("unknown_new", []):
            names = self.unknown_names.setdefault(kind, {})
            if name not in names:
                names[name] = None
                log.warning("labels.%s %r of %s is not in classes.json of %s: such clips "
                            "score no target", kind, name, where, self.cfg.source)

    def explain_unscored(self) -> str:
        """Why no target may be scored: the unknown ``labels.object`` names, if any."""
        names = list(self.unknown_names.get("object", {}))
        if names:
            examples = ", ".join(repr(n) for n in names[:3])
            return (f"no sample's labels.object is in classes.json of {self.cfg.source} "
                    f"({len(names)} unknown names, e.g. {examples})")
        return (f"no query clip of {self.cfg.source} has a labels.object listed in its "
                f"classes.json ({self.clips_seen} clips read)")


_TENSOR_KEYS = ("video", "video_mask", "audio", "audio_mask", "objects", "targets",
                "continuous", "reset")


def _stack(parts: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {k: torch.cat([p[k] for p in parts]) for k in _TENSOR_KEYS}
    batch["keys"] = [row for p in parts for row in p["keys"]]
    batch["words"] = [row for p in parts for row in p["words"]]
    return batch


def build_loader(cfg: DataConfig, rank: int = 0, world_size: int = 1) -> StreamLoader:
    """The loader of ``cfg`` for one rank.

    Args:
        cfg: the data configuration.
        rank: this process's rank (its share of the shards).
        world_size: number of ranks.

    Raises:
        ValueError: bad configuration or a source without shards.
        obs_dist.storage.StorageError: an S3 bucket is missing or access is refused.
    """
    return StreamLoader(cfg, rank, world_size)
