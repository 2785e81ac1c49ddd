"""The worker side of the loader: lanes that read streams in order, with a cursor.

A batch has ``streams`` rows; row ``b`` is a *lane* that reads one stream at a
time, clip after clip, so consecutive batches continue each row's stream (the
trainer carries per-row state across windows and resets it when ``reset`` is
set). Loader worker ``w`` of ``W`` owns lanes ``[w·B/W, (w+1)·B/W)`` and a
disjoint set of shard *units* (a unit is a chain of shards holding one long
stream, usually a single shard), so no sample is read twice.

Which units a worker gets:

* ``ordered``: units in order, split by rank then by worker (``[r::world][w::W]``);
* ``shuffled``: the same split of a permutation drawn from (seed, epoch);
* ``resampled``: every lane draws units with replacement, forever, from a
  generator seeded by (seed, rank, worker, lane, draw count).

The cursor of a lane is (unit, shard within the unit, byte offset of the next
unread sample) plus the stream it is in; a worker adds its queue position and
epoch. Every partial batch carries the state *after* it, so the main process
can save exactly what it consumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from obs_dist.storage import StoreUnavailable
from pipelines.decode import DecodedClip, SampleError, decode_sample
from pipelines.sources import ShardSet, open_shard, store_retries
from pipelines.tario import TarFormatError, TarSample, iter_samples

log = logging.getLogger(__name__)

# After this many draws/epochs without one usable clip a lane gives up (all data bad).
_MAX_FRUITLESS = 64


@dataclass
class LanePlan:
    """Everything a worker needs, picklable (sent to DataLoader workers)."""

    shards: ShardSet
    mode: str
    streams: int
    window: int
    workers: int
    rank: int
    world_size: int
    seed: int
    loop: bool
    frames: int
    image_size: int
    n_mels: int
    audio_frames: int
    endpoint_url: str | None
    retries: int
    patience_s: float = 0.0

    @property
    def lanes_per_worker(self) -> int:
        """Rows of the batch each worker fills."""
        return self.streams // self.workers


def worker_units(plan: LanePlan, worker: int, epoch: int) -> list[int]:
    """The units (chain positions) worker ``worker`` of this rank reads in ``epoch``."""
    order = np.arange(len(plan.shards.chains))
    if plan.mode == "shuffled":
        order = np.random.default_rng([plan.seed, epoch]).permutation(order)
    return [int(u) for u in order[plan.rank::plan.world_size][worker::plan.workers]]


def pass_batches(plan: LanePlan) -> int | None:
    """How many batches one pass over the data gives this rank (ordered/shuffled, no loop).

    The lanes are played out on the clip counts of ``index.json``, as
    :meth:`_Lane.fill_row` reads them: a lane takes the next unit of its
    worker's queue when its stream ends, a row never mixes two streams, and the
    pass ends when every lane found the queue empty. Exact when every sample
    decodes; None when it cannot be told: resampled or looping data, no
    ``index.json``, or a unit holding more than one stream (pre-cut clips of
    several streams in one shard), whose stream lengths the index does not give.
    """
    if plan.mode == "resampled" or plan.loop or not plan.shards.expected:
        return None
    sizes: dict[int, int] = {}
    for unit, chain in enumerate(plan.shards.chains):
        entries = [plan.shards.expected[i] for i in chain]
        keys = [e.get(k) for e in entries for k in ("first", "last")]
        counts = [e.get("samples") for e in entries]
        if not all(isinstance(k, str) for k in keys) or \
                not all(isinstance(n, int) for n in counts):
            return None
        if len({str(k).rsplit("/", 1)[0] for k in keys}) != 1:
            return None
        sizes[unit] = sum(int(n) for n in counts if isinstance(n, int))
    longest = 0
    for worker in range(plan.workers):
        queue = [sizes[u] for u in worker_units(plan, worker, 0)]
        remaining = [0] * plan.lanes_per_worker
        exhausted = [False] * plan.lanes_per_worker
        batches = 0
        while not all(exhausted):
            delivered = 0
            for lane in range(plan.lanes_per_worker):
                row = 0
                while row < plan.window and not exhausted[lane]:
                    if remaining[lane] == 0:
                        if not queue:
                            exhausted[lane] = True
                            break
                        remaining[lane] = queue.pop(0)
                        if row:  # the new stream's first clip waits for the next row
                            break
                        continue
                    take = min(plan.window - row, remaining[lane])
                    row += take
                    remaining[lane] -= take
                delivered += row
            batches += delivered > 0
        longest = max(longest, batches)
    return longest


@dataclass
class _Read:
    clip: DecodedClip
    offset: int
    end: int


class WorkerLanes:
    """The lanes of one worker and the queue of units they share."""

    def __init__(self, plan: LanePlan, worker: int, state: dict[str, Any] | None) -> None:
        self.plan = plan
        self.worker = worker
        state = state or {}
        self.epoch = int(state.get("epoch", 0))
        self.next_unit = int(state.get("next", 0))
        self.units = worker_units(plan, worker, self.epoch)
        lane_states = state.get("lanes") or [{} for _ in range(plan.lanes_per_worker)]
        assert len(lane_states) == plan.lanes_per_worker
        self.lanes = [_Lane(self, i, s) for i, s in enumerate(lane_states)]
        self.errors: dict[str, int] = {}
        # Label names outside classes.json, by label kind: counts since the last
        # partial batch, and each name's first sample (reported once per worker).
        self.unknown: dict[str, int] = {}
        self.unknown_new: list[tuple[str, str, str]] = []
        self._unknown_seen: set[tuple[str, str]] = set()
        self.fruitless_epochs = 0
        self._retries_reported = store_retries()

    def count_error(self, kind: str, where: str, message: str) -> None:
        """Count and log one skipped sample or shard."""
        self.errors[kind] = self.errors.get(kind, 0) + 1
        log.warning("skipped %s (%s): %s", where, kind, message)

    def count_unknown(self, kind: str, name: str, where: str) -> None:
        """Count one label ``name`` of ``kind`` that classes.json does not list."""
        self.unknown[kind] = self.unknown.get(kind, 0) + 1
        if (kind, name) not in self._unknown_seen:
            self._unknown_seen.add((kind, name))
            self.unknown_new.append((kind, name, where))

    def take_unit(self) -> int | None:
        """The next unit of the shared queue; a new epoch when looping."""
        if self.next_unit >= len(self.units):
            if not self.plan.loop or not self.units:
                return None
            # Rollovers with no clip decoded in between mean every unit is unusable.
            self.fruitless_epochs += 1
            if self.fruitless_epochs > 2:
                log.error("worker %d: a whole epoch without a usable sample; stopping",
                          self.worker)
                return None
            self.epoch += 1
            self.units = worker_units(self.plan, self.worker, self.epoch)
            self.next_unit = 0
        unit = self.units[self.next_unit]
        self.next_unit += 1
        return unit

    def state_dict(self) -> dict[str, Any]:
        """The worker's cursor (JSON-serialisable)."""
        return {"epoch": self.epoch, "next": self.next_unit,
                "lanes": [lane.state_dict() for lane in self.lanes]}

    def produce(self) -> dict[str, Any]:
        """The next partial batch: this worker's rows, T clips each (padded)."""
        p = self.plan
        rows, t = p.lanes_per_worker, p.window
        video = torch.zeros(rows, t, p.frames, 3, p.image_size, p.image_size, dtype=torch.uint8)
        audio = torch.zeros(rows, t, p.n_mels, p.audio_frames, dtype=torch.float32)
        video_mask = torch.zeros(rows, t, dtype=torch.bool)
        audio_mask = torch.zeros(rows, t, dtype=torch.bool)
        objects = torch.full((rows, t), -1, dtype=torch.int64)
        targets = torch.full((rows, t), -100, dtype=torch.int64)
        continuous = torch.zeros(rows, t, dtype=torch.bool)
        reset = torch.zeros(rows, dtype=torch.bool)
        keys = [[""] * t for _ in range(rows)]
        words = [[""] * t for _ in range(rows)]
        clips = nbytes = 0
        for r, lane in enumerate(self.lanes):
            row, reset[r] = lane.fill_row()
            for j, clip in enumerate(row):
                if clip.video is not None:
                    video[r, j] = clip.video
                    video_mask[r, j] = True
                if clip.audio is not None:
                    audio[r, j] = clip.audio
                    audio_mask[r, j] = True
                objects[r, j] = clip.object
                targets[r, j] = clip.target
                continuous[r, j] = clip.meta.kind == "continuous"
                keys[r][j] = clip.key
                words[r][j] = clip.meta.labels.get("word") or ""
                nbytes += clip.nbytes
            clips += len(row)
        errors, self.errors = self.errors, {}
        unknown, self.unknown = self.unknown, {}
        unknown_new, self.unknown_new = self.unknown_new, []
        retried = store_retries()
        retries, self._retries_reported = retried - self._retries_reported, retried
        return {"video": video, "video_mask": video_mask, "audio": audio,
                "audio_mask": audio_mask, "objects": objects, "targets": targets,
                "continuous": continuous, "reset": reset, "keys": keys, "words": words,
                "worker": self.worker, "state": self.state_dict(), "errors": errors,
                "unknown": unknown, "unknown_new": unknown_new, "clips": clips, "bytes": nbytes,
                "store_retries": retries,
                "exhausted": all(lane.exhausted for lane in self.lanes)}


class _Lane:
    """One row of the batch: reads units sample by sample, one stream at a time."""

    def __init__(self, owner: WorkerLanes, index: int, state: dict[str, Any]) -> None:
        self.owner = owner
        self.plan = owner.plan
        self.index = index
        self.unit: int | None = state.get("unit")
        self.shard = int(state.get("shard", 0))
        self.offset = int(state.get("offset", 0))
        self.stream: str | None = state.get("stream")
        self.last_index = int(state.get("last_index", -1))
        self.draws = int(state.get("draws", 0))
        self.exhausted = bool(state.get("exhausted", False))
        self.fruitless = 0
        self.samples: Any = None
        self.handle: Any = None
        self.pending: _Read | None = None
        # Samples read of the current shard, when its read started at byte 0
        # (None otherwise): compared with index.json at the shard's end.
        self.read_count: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "shard": self.shard, "offset": self.offset,
                "stream": self.stream, "last_index": self.last_index, "draws": self.draws,
                "exhausted": self.exhausted}

    def _choose_unit(self) -> int | None:
        n_units = len(self.plan.shards.chains)
        if self.plan.mode != "resampled":
            return self.owner.take_unit()
        if self.fruitless > _MAX_FRUITLESS + 4 * n_units:
            log.error("lane %d: %d draws without a usable sample; stopping", self.index,
                      self.fruitless)
            return None
        rng = np.random.default_rng([self.plan.seed, self.plan.rank, self.owner.worker,
                                     self.index, self.draws])
        self.draws += 1
        return int(rng.integers(n_units))

    def _close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.handle = self.samples = None

    def _advance(self) -> None:
        """Move past the current shard: the next shard of the unit, else no unit."""
        self._close()
        assert self.unit is not None
        if self.shard + 1 < len(self.plan.shards.chains[self.unit]):
            self.shard += 1
        else:
            self.unit = None
            self.shard = 0
        self.offset = 0

    def _url(self) -> str:
        assert self.unit is not None
        return self.plan.shards.urls[self.plan.shards.chains[self.unit][self.shard]]

    def _next_raw(self) -> TarSample | None:
        while True:
            if self.unit is None:
                self.unit = self._choose_unit()
                self.shard, self.offset = 0, 0
                if self.unit is None:
                    self.exhausted = True
                    return None
                self.fruitless += 1
            url = self._url()
            try:
                if self.samples is None:
                    self.handle = open_shard(url, self.offset, self.plan.endpoint_url,
                                             self.plan.retries, self.plan.patience_s)
                    # A shard listed in index.json was written whole, end marker included.
                    self.samples = iter_samples(self.handle, self.offset,
                                                require_end=self._indexed())
                    self.read_count = 0 if self.offset == 0 else None
                raw = next(self.samples)
                if self.read_count is not None:
                    self.read_count += 1
                return raw
            except StopIteration:
                self._check_count(url)
                self._advance()
            except StoreUnavailable:
                # An outage beyond data.patience_s: stop, for a skipped shard would
                # change the data order (a resume continues at this lane's cursor).
                raise
            except (TarFormatError, OSError, ValueError) as exc:
                # A damaged or missing shard: count it, keep the run going.
                self.owner.count_error("shard_read", url, str(exc))
                if isinstance(exc, TarFormatError):
                    self._check_count(url)  # a truncated shard lost samples
                self._advance()

    def _indexed(self) -> bool:
        """Whether ``index.json`` lists the current shard."""
        assert self.unit is not None
        position = self.plan.shards.chains[self.unit][self.shard]
        return position < len(self.plan.shards.expected)

    def _check_count(self, url: str) -> None:
        """At a shard's end: count a ``shard_mismatch`` if index.json lists another count."""
        expected = self.plan.shards.expected
        assert self.unit is not None
        position = self.plan.shards.chains[self.unit][self.shard]
        want = expected[position].get("samples") if position < len(expected) else None
        if self.read_count is not None and isinstance(want, int) and want != self.read_count:
            self.owner.count_error("shard_mismatch", url, f"index.json lists {want} samples, "
                                   f"the shard holds {self.read_count}")

    def next_clip(self) -> _Read | None:
        """The next decodable sample, skipping (and counting) bad ones."""
        while True:
            raw = self._next_raw()
            if raw is None:
                return None
            p = self.plan
            try:
                clip = decode_sample(raw.key, raw.members, frames=p.frames,
                                     image_size=p.image_size, n_mels=p.n_mels,
                                     audio_frames=p.audio_frames, classes=p.shards.class_ids)
            except SampleError as exc:
                self.owner.count_error(exc.kind, f"sample {raw.key} of {self._url()}", str(exc))
                self.offset = raw.end
                continue
            name = clip.meta.labels.get("object")
            if name is not None and clip.object < 0:
                self.owner.count_unknown("object", name, f"sample {raw.key} of {self._url()}")
            self.fruitless = 0
            self.owner.fruitless_epochs = 0
            return _Read(clip, raw.offset, raw.end)

    def fill_row(self) -> tuple[list[DecodedClip], bool]:
        """Up to ``window`` clips of one stream, and whether the row starts a stream."""
        row: list[DecodedClip] = []
        reset = False
        while len(row) < self.plan.window and not self.exhausted:
            item = self.pending or self.next_clip()
            self.pending = None
            if item is None:
                break
            meta = item.clip.meta
            if meta.stream != self.stream or meta.index <= self.last_index:
                if row:  # a row never mixes two streams: finish it padded
                    self.pending = item
                    self.offset = item.offset
                    break
                reset = True
                self.stream = meta.stream
            self.last_index = meta.index
            self.offset = item.end
            row.append(item.clip)
        return row, reset
