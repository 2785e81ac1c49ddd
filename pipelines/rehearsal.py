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

The stage is deterministic from its seed and the stream. Its buffer (clips, so
hundreds of MB) is not checkpointed: a resumed run starts with an empty buffer,
so rehearsal draws after a resume differ from an uninterrupted run's
(``docs/decisions.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


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


def _detach_cpu(batch: dict[str, Any]) -> dict[str, Any]:
    """A copy of a batch that does not pin the loader's buffers (tensors cloned)."""
    out = {}
    for key, value in batch.items():
        if key in ("reset", "replay", "replay_over_state"):
            continue  # a rehearsed window starts afresh and is marked below
        out[key] = value.clone() if isinstance(value, torch.Tensor) else value
    return out


class Rehearsal:
    """Wraps an iterator of batches: each new batch, then ``ratio`` rehearsed ones.

    Args:
        batches: the chronological stream (ends when the data ends).
        cfg: ratio, capacity and seed.
    """

    def __init__(self, batches: Iterator[dict[str, Any]], cfg: RehearsalConfig) -> None:
        self.batches = batches
        self.cfg = cfg
        self.rng = np.random.default_rng([cfg.seed, 17])
        self.buffer: list[dict[str, Any]] = []
        self.seen = 0
        self.rehearsed = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._run()

    def _keep(self, batch: dict[str, Any]) -> None:
        """Reservoir sampling: every past batch stays with probability capacity/seen."""
        self.seen += 1
        if len(self.buffer) < self.cfg.capacity:
            self.buffer.append(_detach_cpu(batch))
            return
        j = int(self.rng.integers(0, self.seen))
        if j < self.cfg.capacity:
            self.buffer[j] = _detach_cpu(batch)

    def _run(self) -> Iterator[dict[str, Any]]:
        for batch in self.batches:
            yield batch
            if self.cfg.ratio == 0:
                continue
            self._keep(batch)
            for _ in range(self.cfg.ratio):
                past = self.buffer[int(self.rng.integers(0, len(self.buffer)))]
                self.rehearsed += 1
                yield {**past, "replay": True, "replay_over_state": self.cfg.over_state}
        if self.cfg.ratio:
            log.info("stream ended after %d new batches and %d rehearsed ones",
                     self.seen, self.rehearsed)
