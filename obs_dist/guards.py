"""Run guards: conditions that must stop a run with a message and a non-zero exit.

A run that diverged or learns nothing must not go on quietly for hours and then
report success. The guards here are ``on_step`` hooks (stage ``state``, so they
run before the step's checkpoint) and plain checks the checkpointer calls before
it writes anything:

* :class:`DivergenceGuard` stops the run after ``train.max_nonfinite_steps``
  consecutive steps whose loss or slow weights are NaN/inf.
* :func:`require_scored` refuses a batch stream whose first batches score no
  target at all (e.g. every label is unknown to the model's classes), before
  the first optimizer step; with ``count=audio_clip_count`` it refuses a
  label-free audio-visual stream none of whose first clips has sound.
* :func:`require_scored_in_run` fails a run whose training steps all scored
  nothing (a label-free stream whose speech gate never opened).
* :func:`nonfinite_path` names the first NaN/inf tensor of a checkpoint tree,
  so that no checkpoint of diverged weights or state is ever written.

Every stop raises a :class:`RunFailed`, which ``obs`` prints as
``obs: error: …`` with exit code 1. With several ranks each guard decides
through a collective, so every rank stops at the same step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import torch

from obs_dist.engine.collectives import any_rank
from obs_dist.tasks import IGNORE

log = logging.getLogger("obs.guards")

GUARD_STAGE = "state"


class RunFailed(RuntimeError):
    """A run that must end with a non-zero exit code (the message says why)."""


class Diverged(RunFailed):
    """Loss or slow weights stayed NaN/inf for too many consecutive steps."""


class NothingScored(RunFailed):
    """The first training batches scored no target: the run would learn nothing."""


class _Guarded(Protocol):
    """What the guards read of a trainer."""

    @property
    def step(self) -> int: ...

    @property
    def model(self) -> torch.nn.Module: ...


def tensors_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every floating-point tensor of ``tensors`` is free of NaN/inf."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point() and t.numel()]
    return bool(torch.stack(flags).all()) if flags else True


def nonfinite_path(tree: Any, path: str = "") -> str | None:
    """The path of the first NaN/inf tensor or float in a nested state tree, else None.

    Args:
        tree: dicts, lists and tuples of tensors, numbers and strings (what
            :func:`obs_dist.checkpoint.rank_state.capture_rank` returns).
        path: the path of ``tree`` itself, for the answer.
    """
    if isinstance(tree, torch.Tensor):
        return None if tensors_finite([tree]) else (path or "/")
    if isinstance(tree, float):
        return None if math.isfinite(tree) else (path or "/")
    if isinstance(tree, Mapping):
        items: Iterable[tuple[Any, Any]] = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return None
    for key, value in items:
        found = nonfinite_path(value, f"{path}/{key}")
        if found is not None:
            return found
    return None


class DivergenceGuard:
    """An ``on_step`` hook: stop after ``limit`` consecutive non-finite steps.

    A step is non-finite when its loss is NaN/inf on some rank or some slow
    weight is. One bad batch is forgiven (the count resets on a finite step);
    ``limit`` in a row raise :class:`Diverged`. The metric
    ``nonfinite_steps`` is the current run of bad steps.

    Args:
        limit: consecutive non-finite steps that stop the run (>= 1).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {limit}")
        self.limit = limit
        self.consecutive = 0
        self.first_bad: int | None = None

    def __call__(self, trainer: _Guarded, metrics: dict[str, float]) -> None:
        loss = float(metrics.get("loss", 0.0))
        weights_ok = tensors_finite(trainer.model.parameters())
        local = not (math.isfinite(loss) and weights_ok)
        bad = any_rank(local) if getattr(trainer, "spans_ranks", True) else local
        if not bad:
            self.consecutive, self.first_bad = 0, None
            metrics["nonfinite_steps"] = 0.0
            return
        self.consecutive += 1
        if self.first_bad is None:
            self.first_bad = trainer.step
        metrics["nonfinite_steps"] = float(self.consecutive)
        what = "loss" if weights_ok else "slow weights"
        log.warning("step %d: non-finite %s (%d consecutive step(s) of %d allowed)",
                    trainer.step, what, self.consecutive, self.limit)
        if self.consecutive >= self.limit:
            raise Diverged(
                f"training diverged: loss or slow weights are NaN/inf at steps "
                f"{self.first_bad}..{trainer.step} ({self.consecutive} consecutive steps, "
                f"train.max_nonfinite_steps = {self.limit}); the last finite checkpoint is "
                f"kept. Lower train.lr or raise train.grad_clip, then resume or restart")


# Tasks whose batches carry ``targets`` with scored positions by design. A task
# not listed (e.g. the label-free ``av-stream``) is never refused for scoring nothing.
SCORING_TASKS = ("mqar", "association", "av")


def task_scores_targets(task_name: str) -> bool:
    """Whether batches of ``task_name`` score class targets by design (:data:`SCORING_TASKS`).

    Only for those does :func:`require_scored` make sense; the runner skips it
    for every other task.
    """
    return task_name in SCORING_TASKS


def scored_count(batch: Mapping[str, Any]) -> int:
    """The number of scored positions of ``batch`` (``targets`` other than IGNORE)."""
    targets = batch.get("targets")
    if not isinstance(targets, torch.Tensor):
        return 0
    return int((targets != IGNORE).sum())


def audio_clip_count(batch: Mapping[str, Any]) -> int:
    """The number of clips of ``batch`` that have an audio track (``audio_mask``)."""
    mask = batch.get("audio_mask")
    if not isinstance(mask, torch.Tensor):
        return 0
    return int(mask.sum())


def require_scored(batches: Iterator[dict[str, Any]], explain: Callable[[], str],
                   first: int = 3, count: Callable[[Mapping[str, Any]], int] = scored_count,
                   what: str = "no target was scored") -> Iterator[dict[str, Any]]:
    """The same batches, refusing a stream whose first ``first`` batches score nothing.

    The leading batches are looked at before any is trained on (at most
    ``first`` are held back, only while they score nothing), so a run that
    would learn nothing stops before its first optimizer step. With several
    ranks the decision is collective: the stream stops if no rank scored.

    Args:
        batches: the training batches (each with ``targets``).
        explain: the likely cause (e.g. the unknown labels), called only when refusing.
        first: how many leading batches may all score nothing.
        count: what a batch scores (default: its scored targets).
        what: the message's opening, saying what was missing.

    Raises:
        NothingScored: when iterated, if the first ``first`` batches score nothing.
    """
    if first < 1:
        raise ValueError(f"first must be >= 1, got {first}")
    held: list[dict[str, Any]] = []
    for batch in batches:
        held.append(batch)
        if any_rank(count(batch) > 0):
            break
        if len(held) >= first:
            raise NothingScored(
                f"{what} in the first {len(held)} training batches, so the "
                f"run would learn nothing: {explain()}")
    yield from held
    yield from batches


def require_scored_in_run(scored_total: float, steps: int, explain: str) -> None:
    """Fail a run whose ``steps`` training steps scored nothing at all (collective).

    Args:
        scored_total: this rank's scored positions over the run (the trainer's
            ``scored_total`` counter).
        steps: training steps taken (0: nothing to judge).
        explain: the likely cause.

    Raises:
        NothingScored: no rank scored anything in ``steps > 0`` steps.
    """
    if steps > 0 and not any_rank(scored_total > 0):
        raise NothingScored(f"no position was scored in {steps} training steps, so the run "
                            f"learned nothing from its objective: {explain}")
