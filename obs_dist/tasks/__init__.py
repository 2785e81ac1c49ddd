"""Synthetic tasks: configuration and batch streams.

A task stream yields batch dictionaries with ``tokens`` ``[B, L]`` and
``targets`` ``[B, L]`` (``-100`` where a position is not scored). Audio-visual
data comes from :mod:`pipelines` instead and uses ``name = "av"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from obs_dist.tasks.association import association_batch, association_mapping
from obs_dist.tasks.mqar import IGNORE, mqar_batch

__all__ = ["IGNORE", "TaskConfig", "task_batches"]


@dataclass
class TaskConfig:
    """What the model is trained on.

    Attributes:
        name: ``mqar``, ``association`` or ``av`` (audio-visual shards).
        vocab: item vocabulary (also the number of output classes of synthetic tasks).
        seq_len: MQAR sequence length.
        pairs: pairs per sequence.
        gap: association: distractors after each pair.
        delay: association: distractors before the queries.
        distractors: association: size of the distractor token range.
        fixed_mapping: association: one fixed world A → B (continual variant).
        batch: streams per batch (B).
        commit: commit window deltas to the big state; default: only for
            ``av`` and ``fixed_mapping`` (per-sequence memory otherwise).
        seed: seed of the data stream.
    """

    name: Literal["mqar", "association", "av"] = "mqar"
    vocab: int = 256
    seq_len: int = 64
    pairs: int = 8
    gap: int = 0
    delay: int = 0
    distractors: int = 16
    fixed_mapping: bool = False
    batch: int = 64
    commit: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ("mqar", "association", "av"):
            raise ValueError(f"name must be mqar, association or av, got {self.name!r}")
        if self.vocab < 4:
            raise ValueError(f"vocab must be >= 4, got {self.vocab}")
        if self.pairs < 1:
            raise ValueError(f"pairs must be >= 1, got {self.pairs}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        for key in ("gap", "delay", "distractors"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.name == "mqar" and self.seq_len < 3 * self.pairs:
            raise ValueError(f"seq_len ({self.seq_len}) must be >= 3 * pairs ({3 * self.pairs})")
        if self.name == "mqar" and self.pairs >= self.vocab // 2:
            raise ValueError(f"pairs ({self.pairs}) must be < vocab/2 ({self.vocab // 2})")
        if self.name == "association" and self.pairs > self.vocab // 2:
            raise ValueError(f"pairs ({self.pairs}) must be <= vocab/2 ({self.vocab // 2})")

    @property
    def commits(self) -> bool:
        """Whether window deltas are committed to the big state."""
        if self.commit is not None:
            return self.commit
        return self.name == "av" or (self.name == "association" and self.fixed_mapping)

    @property
    def input_vocab(self) -> int:
        """Tokens the encoder must embed."""
        return self.vocab + (self.distractors if self.name == "association" else 0)

    @property
    def length(self) -> int:
        """Steps per sequence."""
        if self.name == "association":
            return self.pairs * (2 + self.gap) + self.delay + self.pairs
        return self.seq_len


def task_batches(cfg: TaskConfig, seed_offset: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """An endless stream of synthetic batches, deterministic from ``cfg.seed``.

    Args:
        cfg: the task.
        seed_offset: added to the seed (different ranks or an eval stream).
    """
    if cfg.name == "av":
        raise ValueError("task.name = 'av' reads shards through the data pipeline, not here")
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
    mapping = association_mapping(cfg.vocab, cfg.seed) if cfg.fixed_mapping else None
    while True:
        if cfg.name == "mqar":
            yield mqar_batch(cfg.batch, cfg.vocab, cfg.seq_len, cfg.pairs, gen)
        else:
            yield association_batch(cfg.batch, cfg.vocab, cfg.pairs, cfg.gap, cfg.delay,
                                    cfg.distractors, gen, mapping)
