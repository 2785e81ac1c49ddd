"""Rehearsal: one chronological pass over the data, with past windows replayed between.

Continual learning from one child's recordings sees every moment once. A small
encoder learns little from one look at each window, so, as BabyCL does for
CVCL, the stream is interleaved with *rehearsals*: after each new batch, ``ratio``
batches drawn uniformly from a bounded buffer of past batches (reservoir
sampling keeps a uniform sample of the whole past once the buffer is full).

A rehearsed batch carries ``replay = True``. The trainer trains the slow weights
on it over an empty state and neither commits it nor lets it touch the
stream's carried activity: the big state still sees every moment exactly once
and in order, while the encoders and the writer get ``1 + ratio`` optimizer
steps per new window.

The stage is deterministic from its seed and the stream, and checkpointed
exactly, so a run resumed from a checkpoint rehearses the same batches in the
same order as an uninterrupted one (``docs/decisions.md`` §8). Its small state
(:meth:`Rehearsal.state_dict`: draws so far, the generator's state, where in
the new-batch/rehearsal cycle it is, which batch is in which slot) goes into the
rank's checkpoint tree; the reservoir's batches (clips, so hundreds of MB) are
write-once objects (:class:`obs_dist.checkpoint.side_objects.ObjectBacked`),
each stored once, keyed by its sequence number in the stream and the rank, and
shared by every checkpoint whose reservoir holds it (``docs/checkpoints.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_STATE_VERSION = 1


@dataclass
class RehearsalConfig:
    """Rehearsal of past batches between new ones.

    Attributes:
        ratio: rehearsed batches after each new one (0: off).
        capacity: past batches kept (a uniform reservoir sample of the stream).
        seed: seed of the draws.
        over_state: a rehearsed batch reads the state as it is now (its own moment's
            links included, as a held-out recording's words are scored after its
            study pass) instead of an empty one; it is never committed either way.
    """

    ratio: int = 0
    capacity: int = 256
    seed: int = 0
    over_state: bool = False

    def __post_init__(self) -> None:
        if self.ratio < 0:
            raise ValueError(f"rehearsal.ratio must be >= 0, got {self.ratio}")
        if self.capacity < 1:
            raise ValueError(f"rehearsal.capacity must be >= 1, got {self.capacity}")


# Per clip, what a kept batch holds beside its video and audio: masks, labels,
# targets and its kind (bool/int64 tensors), and its key and word (Python strings).
_CLIP_OVERHEAD_BYTES = 256


def batch_bytes(streams: int, window: int, frames: int, image_size: int, n_mels: int,
                audio_frames: int) -> int:
    """Host bytes of one loader batch as the reservoir keeps it (a copy of each tensor).

    Video is uint8 ``[B, T, F, 3, H, W]``, audio float32 ``[B, T, n_mels, A]``.
    """
    clips = streams * window
    return clips * (frames * 3 * image_size * image_size + 4 * n_mels * audio_frames
                    + _CLIP_OVERHEAD_BYTES)


def reservoir_bytes(cfg: RehearsalConfig, one_batch: int, new_batches: int | None) -> int:
    """Host bytes the reservoir reaches: ``capacity`` batches, or every new batch of a
    shorter pass (``new_batches``, when known); 0 without rehearsal."""
    if cfg.ratio == 0:
        return 0
    kept = cfg.capacity if new_batches is None else min(cfg.capacity, new_batches)
    return kept * one_batch


def _detach_cpu(batch: dict[str, Any]) -> dict[str, Any]:
    """A copy of a batch that does not pin the loader's buffers (tensors cloned)."""
    out = {}
    for key, value in batch.items():
        if key in ("reset", "replay", "replay_over_state"):
            continue  # a rehearsed window starts afresh and is marked below
        out[key] = value.clone() if isinstance(value, torch.Tensor) else value
    return out


class Rehearsal:
    """An iterator of batches: each new batch, then ``ratio`` rehearsed ones.

    Its state is checkpointed through ``state_dict``/``load_state_dict`` and the
    write-once objects of :class:`obs_dist.checkpoint.side_objects.ObjectBacked`
    (one per reservoir batch, named by the batch's sequence number).

    Args:
        batches: the chronological stream (ends when the data ends); its own
            position is checkpointed by its owner (the loader's cursor).
        cfg: ratio, capacity and seed.
    """

    def __init__(self, batches: Iterator[dict[str, Any]], cfg: RehearsalConfig) -> None:
        self.batches = batches
        self.cfg = cfg
        self.rng = np.random.default_rng([cfg.seed, 17])
        self.buffer: list[dict[str, Any]] = []
        self.slots: list[int] = []  # sequence number (0-based) of the batch in each slot
        self.seen = 0
        self.rehearsed = 0
        self.pending = 0  # rehearsals still due after the last new batch
        self.ended = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.pending:
            self.pending -= 1
            past = self.buffer[int(self.rng.integers(0, len(self.buffer)))]
            self.rehearsed += 1
            return {**past, "replay": True, "replay_over_state": self.cfg.over_state}
        batch = next(self.batches, None)
        if batch is None:
            if self.cfg.ratio and not self.ended:
                log.info("stream ended after %d new batches and %d rehearsed ones",
                         self.seen, self.rehearsed)
            self.ended = True
            raise StopIteration
        if self.cfg.ratio:
            # Kept before it is trained on: the draws come in the same order as if it
            # were kept after, and a checkpoint after its step already holds it.
            self._keep(batch)
            self.pending = self.cfg.ratio
        return batch

    def _keep(self, batch: dict[str, Any]) -> None:
        """Reservoir sampling: every past batch stays with probability capacity/seen."""
        seq = self.seen
        self.seen += 1
        if len(self.buffer) < self.cfg.capacity:
            self.buffer.append(_detach_cpu(batch))
            self.slots.append(seq)
            return
        j = int(self.rng.integers(0, self.seen))
        if j < self.cfg.capacity:
            self.buffer[j] = _detach_cpu(batch)
            self.slots[j] = seq

    # ------------------------------------------------------------ checkpoint
    def _config(self) -> dict[str, Any]:
        return {"ratio": self.cfg.ratio, "capacity": self.cfg.capacity, "seed": self.cfg.seed,
                "over_state": self.cfg.over_state}

    def state_dict(self) -> dict[str, Any]:
        """Everything but the reservoir's batches (JSON: numbers, the generator's state)."""
        return {"version": _STATE_VERSION, "config": self._config(), "seen": self.seen,
                "rehearsed": self.rehearsed, "pending": self.pending, "ended": self.ended,
                "rng": self.rng.bit_generator.state, "slots": list(self.slots)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; :meth:`load_objects` then fills the reservoir.

        Raises:
            ValueError: not a rehearsal state of this version, or saved with
                another ratio, capacity, seed or ``over_state``.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"rehearsal state must be a dict of version {_STATE_VERSION}")
        saved = state.get("config", {})
        for key, value in self._config().items():
            if saved.get(key) != value:
                raise ValueError(f"rehearsal state was saved with {key}={saved.get(key)!r} "
                                 f"but this run has {key}={value!r}; resume needs the same")
        self.seen = int(state["seen"])
        self.rehearsed = int(state["rehearsed"])
        self.pending = int(state["pending"])
        self.ended = bool(state["ended"])
        self.rng.bit_generator.state = state["rng"]
        self.slots = [int(s) for s in state["slots"]]
        self.buffer = []

    def object_ids(self) -> list[int]:
        """The sequence numbers of the batches in the reservoir, in slot order."""
        return list(self.slots)

    def object_tree(self, oid: int) -> dict[str, Any]:
        """The reservoir batch with sequence number ``oid``.

        Raises:
            ValueError: no slot holds that batch.
        """
        if oid not in self.slots:
            raise ValueError(f"the reservoir holds no batch {oid}")
        return self.buffer[self.slots.index(oid)]

    def load_objects(self, trees: Mapping[int, Any]) -> None:
        """The reservoir's batches, by sequence number (after :meth:`load_state_dict`).

        Raises:
            ValueError: a slot's batch is missing.
        """
        missing = [seq for seq in self.slots if seq not in trees]
        if missing:
            raise ValueError(f"rehearsal batches {missing[:5]} of the checkpoint are missing")
        self.buffer = [dict(trees[seq]) for seq in self.slots]
