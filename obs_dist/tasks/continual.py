"""Continual learning: sets of objects and their names, learned one after another.

A *world* holds ``sets`` disjoint sets of ``objects_per_set`` objects; every
object has a name drawn from a vocabulary of ``names`` words shared by all sets
(like new objects named with known words). Set ``s`` is learned for a while,
then set ``s + 1``, and so on; nothing of an earlier set is shown again (unless
a replay mechanism brings it back).

* **study sequences** (training): each object of the set followed by its name
  token (``gap`` distractors after each pair), then every object again as a
  query whose target is its name. Committing models write the associations into
  the big state at every window.
* **query sequences** (evaluation): only the objects of one set, each once, in
  random order, target = its name. No name is shown, so the answer must come
  from what the model keeps across sequences: the committed state (OBS) or the
  slow weights (every model).

After learning set ``i`` every set ``j`` is evaluated, giving the accuracy
matrix ``R[i, j]``; :func:`continual_metrics` turns it into average accuracy,
backward transfer and forgetting per set (Lopez-Paz & Ranzato; Chaudhry et al.).

Token layout: objects ``[0, sets·n)``, names ``[sets·n, sets·n + names)``,
distractors after them. Output classes are the ``names`` labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from obs_dist.tasks.mqar import IGNORE


@dataclass
class ContinualConfig:
    """The sequence of object sets.

    Attributes:
        sets: number of sets learned one after another.
        objects_per_set: objects (pairs) per set.
        names: size of the shared name vocabulary (the output classes).
        gap: distractor tokens after each study pair.
        distractors: size of the distractor token range.
        batch: sequences per batch.
        seed: seed of the world and of the streams.
    """

    sets: int = 10
    objects_per_set: int = 8
    names: int = 32
    gap: int = 0
    distractors: int = 8
    batch: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sets < 1:
            raise ValueError(f"sets must be >= 1, got {self.sets}")
        if self.objects_per_set < 1:
            raise ValueError(f"objects_per_set must be >= 1, got {self.objects_per_set}")
        if self.names < max(2, self.objects_per_set):
            raise ValueError(f"names ({self.names}) must be >= max(2, objects_per_set="
                             f"{self.objects_per_set}) so that a set's names are distinct")
        if self.gap < 0:
            raise ValueError(f"gap must be >= 0, got {self.gap}")
        if self.gap and self.distractors < 1:
            raise ValueError("distractors must be >= 1 when gap > 0")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")

    @property
    def num_objects(self) -> int:
        """Objects over all sets."""
        return self.sets * self.objects_per_set

    @property
    def input_vocab(self) -> int:
        """Objects, names and distractors."""
        return self.num_objects + self.names + self.distractors

    @property
    def classes(self) -> int:
        """Output classes: the names."""
        return self.names

    @property
    def study_length(self) -> int:
        """Steps of a study sequence."""
        return self.objects_per_set * (3 + self.gap)


@dataclass
class ContinualWorld:
    """Which objects form each set and what each object is called.

    Attributes:
        objects: ``[sets, n]`` object token ids.
        names: ``[sets, n]`` name labels in ``[0, names)`` (distinct within a set).
    """

    objects: torch.Tensor
    names: torch.Tensor


def make_world(cfg: ContinualConfig) -> ContinualWorld:
    """The seeded world of ``cfg``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = cfg.objects_per_set
    objects = torch.arange(cfg.num_objects).reshape(cfg.sets, n)
    names = torch.stack([torch.randperm(cfg.names, generator=gen)[:n] for _ in range(cfg.sets)])
    return ContinualWorld(objects, names)


def study_batch(cfg: ContinualConfig, world: ContinualWorld, set_index: int,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One training batch of set ``set_index``: study pairs, then queries.

    Returns:
        ``{"tokens": [B, L], "targets": [B, L]}`` with ``L = n·(3 + gap)``.
    """
    _check_set(cfg, set_index)
    bsz, n, gap = cfg.batch, cfg.objects_per_set, cfg.gap
    name_base = cfg.num_objects
    order = torch.argsort(torch.rand(bsz, n, generator=generator), dim=1)
    objs = world.objects[set_index][order]
    labels = world.names[set_index][order]
    stride = 2 + gap
    length = cfg.study_length
    if cfg.distractors:
        low = cfg.num_objects + cfg.names
        tokens = torch.randint(low, low + cfg.distractors, (bsz, length), generator=generator)
    else:
        tokens = torch.zeros(bsz, length, dtype=torch.long)
    targets = torch.full((bsz, length), IGNORE, dtype=torch.long)
    starts = torch.arange(n) * stride
    tokens[:, starts] = objs
    tokens[:, starts + 1] = labels + name_base
    q0 = n * stride
    reorder = torch.argsort(torch.rand(bsz, n, generator=generator), dim=1)
    tokens[:, q0:] = objs.gather(1, reorder)
    targets[:, q0:] = labels.gather(1, reorder)
    return {"tokens": tokens, "targets": targets}


def query_batch(cfg: ContinualConfig, world: ContinualWorld, set_index: int,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One evaluation batch of set ``set_index``: its objects only, targets their names."""
    _check_set(cfg, set_index)
    bsz, n = cfg.batch, cfg.objects_per_set
    order = torch.argsort(torch.rand(bsz, n, generator=generator), dim=1)
    return {"tokens": world.objects[set_index][order],
            "targets": world.names[set_index][order]}


def study_batches(cfg: ContinualConfig, world: ContinualWorld, set_index: int,
                  seed_offset: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches of one set."""
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * (set_index + 1) + seed_offset)
    while True:
        yield study_batch(cfg, world, set_index, gen)


def _check_set(cfg: ContinualConfig, set_index: int) -> None:
    if not 0 <= set_index < cfg.sets:
        raise ValueError(f"set index {set_index} out of range [0, {cfg.sets})")


def continual_metrics(matrix: list[list[float]]) -> dict[str, object]:
    """Summaries of the accuracy matrix ``R[i][j]`` (after learning set i, set j).

    Args:
        matrix: square ``S×S`` accuracies.

    Returns:
        ``average_accuracy`` (mean of the last row), ``backward_transfer``
        (mean over j < S−1 of ``R[S−1][j] − R[j][j]``; negative = forgetting),
        ``forgetting`` per set (``max_{j≤i<S−1} R[i][j] − R[S−1][j]``, 0 for the last),
        ``mean_forgetting``, ``first_set_curve`` (``R[i][0]`` for every i) and
        ``first_set_final`` (``R[S−1][0]``).
    """
    size = len(matrix)
    if size == 0 or any(len(row) != size for row in matrix):
        raise ValueError(f"the accuracy matrix must be square and non-empty, got {matrix}")
    last = matrix[-1]
    bwt = [last[j] - matrix[j][j] for j in range(size - 1)]
    forgetting = [max(matrix[i][j] for i in range(j, size - 1)) - last[j]
                  for j in range(size - 1)] + [0.0]
    return {
        "average_accuracy": sum(last) / size,
        "backward_transfer": sum(bwt) / len(bwt) if bwt else 0.0,
        "forgetting": forgetting,
        "mean_forgetting": sum(forgetting[:-1]) / max(size - 1, 1),
        "first_set_curve": [row[0] for row in matrix],
        "first_set_final": last[0],
    }
