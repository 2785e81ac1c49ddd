"""``obs eval --task state-tracking``: parity and modular arithmetic, short to long.

Every model is trained on sequences of at most ``task.train_max_len`` tokens
(40 by default) and tested at every length in ``task.test_lengths`` (up to
256), for each kind in ``kinds``. Reported per length: accuracy over all scored
positions, at the last position, and over the positions beyond the training
length; plus the per-position accuracy curve at the longest length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from launch.evals import plots
from launch.evals.harness import SuiteConfig, build_learner, describe, fit, score
from launch.evals.suite import Suite
from obs_dist.tasks.state_tracking import StateTrackingConfig, test_batches, train_batches

QUICK = [
    "kinds=['parity']", "task.train_min_len=4", "task.train_max_len=12",
    "task.test_lengths=[12, 24]", "task.batch=16", "eval_batches=1", "state.nodes=256",
    "state.partitions=1", "model.d_model=32", "model.writer.k_max=8",
    "model.writer.active=8", "model.writer.key_dim=16", "baseline.heads=2",
    "train.steps=30", "train.lr=5e-3", "train.warmup=5", "train.eval_every=0",
    "train.progress=false",
]


@dataclass
class StateTrackingSuiteConfig(SuiteConfig):
    """The state-tracking suite.

    Attributes:
        kinds: tasks to run (``parity``, ``modular``).
        task: lengths, modulus and batch (``kind`` is set per entry of ``kinds``).
    """

    kinds: list[str] = field(default_factory=lambda: ["parity", "modular"])
    task: StateTrackingConfig = field(default_factory=StateTrackingConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        for kind in self.kinds:
            dataclasses.replace(self.task, kind=kind)  # type: ignore[arg-type]


def _score_lengths(learner: Any, task: StateTrackingConfig, count: int
                   ) -> tuple[list[dict[str, Any]], list[float]]:
    rows = []
    curve: list[float] = []
    for length in task.test_lengths:
        right = total = last_right = last_total = beyond_right = beyond_total = 0
        pos_right = torch.zeros(length)
        pos_total = torch.zeros(length)
        for batch in test_batches(task, length, count):
            correct, scored = score(learner.predict(batch), batch["targets"])
            right += int(correct.sum())
            total += int(scored.sum())
            # The last scored position of each row (modular ends on an operator when even).
            last = scored.long().cumsum(1).argmax(1)
            rows_idx = torch.arange(correct.shape[0])
            last_right += int(correct[rows_idx, last].sum())
            last_total += correct.shape[0]
            beyond = slice(task.train_max_len, length)
            beyond_right += int(correct[:, beyond].sum())
            beyond_total += int(scored[:, beyond].sum())
            pos_right += correct.float().sum(0)
            pos_total += scored.float().sum(0)
        rows.append({"length": length, "accuracy": right / max(total, 1),
                     "last_accuracy": last_right / max(last_total, 1),
                     "beyond_train_accuracy": beyond_right / beyond_total
                     if beyond_total else float("nan")})
        if length == max(task.test_lengths):
            curve = (pos_right / pos_total.clamp_min(1)).tolist()
    return rows, curve


def run(cfg: StateTrackingSuiteConfig) -> dict[str, Any]:
    """Train every model on short sequences of each kind; score long ones."""
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[float]]] = {}
    for kind in cfg.kinds:
        task = dataclasses.replace(cfg.task, kind=kind)  # type: ignore[arg-type]
        curves[kind] = {}
        for name in cfg.models:
            learner = build_learner(name, cfg, task.input_vocab, task.classes, commit=False)
            res = fit(learner, train_batches(task), cfg.train.steps, cfg.seconds,
                      desc=f"{name} {kind}", progress=cfg.train.progress)
            by_length, curve = _score_lengths(learner, task, cfg.eval_batches)
            curves[kind][name] = curve
            for r in by_length:
                rows.append({**describe(learner), "kind": kind, "steps": res.steps,
                             "seconds": round(res.seconds, 1), **r})
    return {"results": rows, "curves": curves, "train_max_len": cfg.task.train_max_len,
            "chance": {k: 1.0 / dataclasses.replace(cfg.task, kind=k).classes  # type: ignore[arg-type]
                       for k in cfg.kinds}}


SUITE = Suite(name="state-tracking", title="State tracking", config=StateTrackingSuiteConfig,
              run=run, quick=QUICK, figures=[("positions", plots.state_tracking)])
