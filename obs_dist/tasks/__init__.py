"""Synthetic tasks: configuration and batch streams.

A task stream yields batch dictionaries with ``tokens`` ``[B, L]`` and
``targets`` ``[B, L]`` (``-100`` where a position is not scored). Audio-visual
data comes from :mod:`pipelines` instead and uses ``name = "av"`` (labelled query
clips) or ``name = "av-stream"`` (long recordings, no labels: the label-free
objective of :class:`~obs_dist.model.av_stream.AVStreamModel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from obs_dist.tasks.association import association_batch, association_mapping
from obs_dist.tasks.mqar import IGNORE, mqar_batch

__all__ = ["IGNORE", "ResumableTaskStream", "TaskConfig", "task_batches"]


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

    name: Literal["mqar", "association", "av", "av-stream"] = "mqar"
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
        if self.name not in ("mqar", "association", "av", "av-stream"):
            raise ValueError(f"name must be mqar, association, av or av-stream, got "
                             f"{self.name!r}")
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
        return self.name in ("av", "av-stream") or (self.name == "association"
                                                    and self.fixed_mapping)

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


class ResumableTaskStream:
    """The synthetic task's endless batch stream, with a position a checkpoint can hold.

    Deterministic from ``cfg.seed + seed_offset``; ``state_dict()`` holds the
    generator state and the batch count, so a resumed stream continues exactly.

    Args:
        cfg: the task (not ``av``: shards have their own cursor).
        seed_offset: added to ``cfg.seed`` (per rank, or an eval stream).
    """

    def __init__(self, cfg: TaskConfig, seed_offset: int = 0) -> None:
        if cfg.name in ("av", "av-stream"):
            raise ValueError("task.name = 'av' reads shards through the data pipeline, not here")
        self.cfg = cfg
        self.seed = cfg.seed + seed_offset
        self.generator = torch.Generator().manual_seed(self.seed)
        self.mapping = association_mapping(cfg.vocab, cfg.seed) if cfg.fixed_mapping else None
        self.batches = 0

    def __iter__(self) -> ResumableTaskStream:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if cfg.name == "mqar":
            batch = mqar_batch(cfg.batch, cfg.vocab, cfg.seq_len, cfg.pairs, self.generator)
        else:
            batch = association_batch(cfg.batch, cfg.vocab, cfg.pairs, cfg.gap, cfg.delay,
                                      cfg.distractors, self.generator, self.mapping)
        self.batches += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Seed, batches drawn so far and the generator state."""
        return {"task": self.cfg.name, "seed": self.seed, "batches": self.batches,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the saved stream stopped.

        Raises:
            ValueError: the saved stream is of another task or seed.
        """
        if state["task"] != self.cfg.name or state["seed"] != self.seed:
            raise ValueError(f"checkpointed data stream is task {state['task']!r} seed "
                             f"{state['seed']}, this run has {self.cfg.name!r} seed {self.seed}")
        self.generator.set_state(state["generator"])
        self.batches = int(state["batches"])


def task_batches(cfg: TaskConfig, seed_offset: int = 0) -> ResumableTaskStream:
    """An endless stream of synthetic batches, deterministic from ``cfg.seed``.

    Args:
        cfg: the task.
        seed_offset: added to the seed (different ranks or an eval stream).
    """
    return ResumableTaskStream(cfg, seed_offset)
