"""``obs eval --task continual``: object sets learned one after another, with commits.

Each model learns set 1, then set 2, … (``train.steps`` steps each, the same
batches for every model), and after every set all sets are scored with
query-only sequences (:mod:`obs_dist.tasks.continual`): the accuracy matrix
``R[i][j]``. Reported: average accuracy and backward transfer after the last
set, forgetting per set, and the first set's accuracy after every set (the
forgetting curve). OBS commits every window's deltas into its state;
``obs-replay`` additionally runs the :class:`~obs_dist.replay.ReplayHook`
(consolidation that replays stored firing sequences), so the two OBS rows
measure the effect of replay on forgetting.

The learning rate is constant after warm-up (no cosine decay over the run), so
later sets are not learned with a smaller step than earlier ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from launch.evals import plots
from launch.evals.harness import SuiteConfig, accuracy, build_learner, describe, fit
from launch.evals.learners import OBSLearner
from launch.evals.suite import Suite, verdict
from obs_dist.tasks.continual import (
    ContinualConfig,
    continual_metrics,
    make_world,
    query_batch,
    study_batches,
)

QUICK = [
    "task.sets=3", "task.objects_per_set=4", "task.names=8", "task.distractors=4",
    "task.batch=16", "eval_batches=1", "state.nodes=256", "state.partitions=1",
    "model.d_model=32", "model.writer.k_max=8", "model.writer.active=8",
    "model.writer.key_dim=16", "baseline.heads=2", "replay.every=5", "replay.replays=8",
    "train.steps=15", "train.lr=5e-3", "train.warmup=5", "train.eval_every=0",
    "train.progress=false",
]


def _default_models() -> list[str]:
    return ["obs", "obs-replay", "attention", "deltanet", "longhorn", "gru"]


@dataclass
class ContinualSuiteConfig(SuiteConfig):
    """The continual-learning suite (``train.steps`` = steps per set).

    Attributes:
        task: the sets and their names.
        freeze_after_first: parameter-name prefixes frozen once the first set is
            learned, for every model that has them (e.g. ``writer``: OBS keeps
            addressing an input with the same nodes, so what the state stored
            about it stays reachable — the fixed-recurrence idea of seed ``002``;
            ``encoder`` also matches the baselines' input embeddings).
    """

    models: list[str] = field(default_factory=_default_models)
    task: ContinualConfig = field(default_factory=ContinualConfig)
    freeze_after_first: list[str] = field(default_factory=list)


def freeze(module: torch.nn.Module, prefixes: list[str]) -> int:
    """Stop training parameters whose names start with one of ``prefixes``; returns the count."""
    count = 0
    for name, param in module.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            param.requires_grad_(False)
            param.grad = None
            count += param.numel()
    return count


def run(cfg: ContinualSuiteConfig) -> dict[str, Any]:
    """Learn the sets in order with every model; score all sets after each one."""
    task = cfg.task
    world = make_world(task)
    gen = torch.Generator().manual_seed(task.seed + 1_000_003)
    queries = [[query_batch(task, world, s, gen) for _ in range(cfg.eval_batches)]
               for s in range(task.sets)]
    # A constant rate after warm-up: the schedule must not favour the first sets.
    steady = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=10**9))
    rows: list[dict[str, Any]] = []
    matrices: dict[str, list[list[float]]] = {}
    for name in cfg.models:
        learner = build_learner(name, steady, task.input_vocab, task.classes, commit=True)
        matrix: list[list[float]] = []
        seconds = steps = 0.0
        frozen = 0
        study = []
        for s in range(task.sets):
            if isinstance(learner, OBSLearner) and learner.replay is not None:
                learner.replay.set_tag(s)
            res = fit(learner, study_batches(task, world, s), cfg.train.steps,
                      cfg.seconds / task.sets if cfg.seconds else 0.0,
                      desc=f"{name} set {s + 1}/{task.sets}", progress=cfg.train.progress)
            seconds += res.seconds
            steps += res.steps
            if s == 0 and cfg.freeze_after_first:
                frozen = freeze(learner.model, cfg.freeze_after_first)
            study.append(res.accuracy)
            matrix.append([accuracy(learner, queries[j]) for j in range(task.sets)])
        matrices[name] = matrix
        summary = continual_metrics(matrix)
        row = {**describe(learner), "steps": int(steps), "seconds": round(seconds, 1),
               "first_set_final": summary["first_set_final"],
               "average_accuracy": summary["average_accuracy"],
               "backward_transfer": summary["backward_transfer"],
               "mean_forgetting": summary["mean_forgetting"],
               "study_accuracy": sum(study) / len(study), "frozen_params": frozen}
        if isinstance(learner, OBSLearner) and learner.replay is not None:
            row["replay_consolidations"] = learner.replay.consolidations
            row["replay_entries"] = learner.replay.replayed_entries
        rows.append(row)
    details = {name: {"matrix": m, **continual_metrics(m)} for name, m in matrices.items()}
    return {"results": rows, "details": details, "chance": 1.0 / task.names}


def targets(result: dict[str, Any]) -> list[str]:
    """The issue's target: first-set accuracy >= 0.8 after the last set, above every baseline."""
    rows = result.get("results", [])
    best = max((r["first_set_final"] for r in rows if not r["model"].startswith("obs")),
               default=0.0)
    out = []
    for r in rows:
        if r["model"].startswith("obs"):
            ok = r["first_set_final"] >= 0.8 and r["first_set_final"] > best
            out.append(f"Continual, {r['model']}: first-set accuracy after the last set >= 0.8"
                       f" and above every baseline — {verdict(ok)} ({r['first_set_final']:.3f}"
                       f" vs best baseline {best:.3f})")
    return out


SUITE = Suite(name="continual", title="Continual learning", config=ContinualSuiteConfig,
              run=run, quick=QUICK, targets=targets,
              figures=[("forgetting", plots.continual_curves)])
