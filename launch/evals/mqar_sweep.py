"""``obs eval --task mqar-sweep``: associative recall vs pairs, length and state size.

Zoology-style MQAR (vocabulary >= 256): every model is trained from scratch at
each ``(pairs, length)`` point for ``train.steps`` steps or ``seconds`` of wall
time, stopping early at ``train.target_accuracy``, and scored on the same
held-out batches. A second sweep trains OBS alone at ``state_point`` for each
size in ``state_sizes`` (accuracy vs state size N).

The Zoology protocol (Arora et al. 2023; ``configs/eval_mqar_zoology.toml``) is
a config of the same sweep: ``train_examples`` fixes the data (steps =
examples / batch, the same sequences for every model), ``widths`` gives the
baselines' ``d_model`` values instead of matching OBS's parameter count, and
``lrs`` trains every model at each learning rate; ``best`` keeps, per point,
model and width, the run with the highest held-out accuracy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from launch.evals import plots
from launch.evals.cell_pool import run_cells
from launch.evals.harness import (
    SuiteConfig,
    accuracy,
    build_learner,
    describe,
    fit,
    fixed_batches,
)
from launch.evals.recall_costs import recall_costs
from launch.evals.suite import Suite, verdict
from launch.runner import EVAL_SEED_OFFSET
from obs_dist.tasks import TaskConfig, task_batches

log = logging.getLogger("obs.eval")

QUICK = [
    "vocab=32", "batch=16", "points=[[4, 24]]", "state_sizes=[256, 1024]", "state_point=[4, 24]",
    "eval_batches=2", "state.nodes=256", "state.partitions=1", "model.d_model=32",
    "model.writer.k_max=8", "model.writer.active=8", "model.writer.key_dim=16",
    "baseline.layers=2", "baseline.heads=2", "train.steps=60", "train.lr=5e-3",
    "train.warmup=5", "train.eval_every=0", "train.progress=false",
]


@dataclass
class MQARSweepConfig(SuiteConfig):
    """The MQAR sweep.

    Attributes:
        vocab: MQAR vocabulary (>= 256 for reported figures).
        batch: sequences per batch.
        points: ``[pairs, length]`` points trained for every model.
        state_sizes: N values of the OBS-only state-size sweep (empty: none).
        state_point: ``[pairs, length]`` of the state-size sweep.
        seed: seed of the data.
        train_examples: training sequences per run (0: ``train.steps`` steps); the
            steps are ``ceil(train_examples / batch)``.
        widths: baseline ``d_model`` values (empty: matched to OBS's parameters).
        lrs: learning rates, each model trained at each (empty: ``train.lr`` and
            ``baseline_lr``).
        workers: training runs at once, one process each with ``threads`` threads
            (the runs are independent and seeded, so the rows equal one process's;
            :mod:`launch.evals.cell_pool`).
    """

    vocab: int = 256
    batch: int = 64
    points: list[list[int]] = field(default_factory=lambda: [[4, 64], [8, 64], [16, 128],
                                                             [32, 256], [64, 512]])
    state_sizes: list[int] = field(default_factory=list)
    state_point: list[int] = field(default_factory=lambda: [32, 256])
    seed: int = 0
    train_examples: int = 0
    widths: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    workers: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.train_examples < 0:
            raise ValueError(f"train_examples must be >= 0, got {self.train_examples}")
        if any(w < 1 for w in self.widths) or any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"widths must be >= 1 and lrs > 0, got {self.widths}, {self.lrs}")
        for point in [*self.points, self.state_point]:
            if len(point) != 2:
                raise ValueError(f"points must be [pairs, length] pairs, got {point}")
            self.task(*point)  # validates pairs against vocab and length
        for n in self.state_sizes:
            self.model.writer.check_nodes(n)

    def task(self, pairs: int, length: int) -> TaskConfig:
        """The MQAR task at one point."""
        return TaskConfig(name="mqar", vocab=self.vocab, seq_len=length, pairs=pairs,
                          batch=self.batch, seed=self.seed)


def _train_and_score(cfg: MQARSweepConfig, name: str, pairs: int, length: int,
                     nodes: int | None = None) -> dict[str, Any]:
    task = cfg.task(pairs, length)
    state = dataclasses.replace(cfg.state, nodes=nodes) if nodes else None
    learner = build_learner(name, cfg, task.input_vocab, task.vocab, commit=False, state=state)
    evals = task_batches(task, seed_offset=EVAL_SEED_OFFSET)
    held_out = fixed_batches(lambda: next(evals), cfg.eval_batches)
    probe = held_out[: max(1, min(2, len(held_out)))]
    res = fit(learner, task_batches(task), cfg.train.steps, cfg.seconds,
              evaluate=lambda: accuracy(learner, probe), eval_every=cfg.train.eval_every,
              target=cfg.train.target_accuracy, desc=f"{name} p{pairs} L{length}",
              progress=cfg.train.progress)
    return {**describe(learner), **recall_costs(learner, length), "pairs": pairs,
            "length": length, "steps": res.steps,
            "seconds": round(res.seconds, 1), "stopped": res.stopped,
            "train_accuracy": res.accuracy, "accuracy": accuracy(learner, held_out),
            "curve": res.curve}


def _variants(cfg: MQARSweepConfig, name: str) -> list[MQARSweepConfig]:
    """``cfg`` at each width (baselines) and learning rate, with steps from examples."""
    train = cfg.train
    if cfg.train_examples:
        train = dataclasses.replace(train, steps=math.ceil(cfg.train_examples / cfg.batch))
    base = dataclasses.replace(cfg, train=train)
    widths: list[int | None] = [None]
    if cfg.widths and not name.startswith("obs"):
        widths = list(cfg.widths)
    out = []
    for width in widths:
        at = base
        if width is not None:
            at = dataclasses.replace(base, match_parameters=False,
                                     baseline=dataclasses.replace(cfg.baseline, d_model=width))
        for lr in cfg.lrs or [None]:
            out.append(at if lr is None else dataclasses.replace(
                at, baseline_lr=lr, train=dataclasses.replace(at.train, lr=lr)))
    return out


def best_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ``(pairs, length, model, d_model)``, the row with the best held-out accuracy."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (row["pairs"], row["length"], row["model"], row.get("d_model"))
        if key not in best or row["accuracy"] > best[key]["accuracy"]:
            best[key] = row
    return list(best.values())


def run(cfg: MQARSweepConfig) -> dict[str, Any]:
    """Train and score every model (at each width and lr) at every point, then the N sweep.

    The runs go to ``cfg.workers`` processes at once; rows keep the sequential order.
    """
    cells = [(variant, name, pairs, length) for pairs, length in cfg.points
             for name in cfg.models for variant in _variants(cfg, name)]
    obs_name = next((m for m in cfg.models if m.startswith("obs")), "obs")
    state_cells = [(cfg, obs_name, *cfg.state_point, nodes) for nodes in cfg.state_sizes]
    done = run_cells(_train_and_score, cells + state_cells, cfg.workers, cfg.threads)
    rows = [{**row, "lr": variant.baseline_lr or variant.train.lr,
             "examples": row["steps"] * cfg.batch}
            for (variant, *_), row in zip(cells, done[: len(cells)], strict=True)]
    state_rows = done[len(cells):]
    return {"results": rows, "best": best_rows(rows) if cfg.lrs else [],
            "state_sweep": state_rows, "chance": 2.0 / cfg.vocab}


# Config keys a sweep may be split on across commands (each part trains a subset).
SPLIT_KEYS = ("models", "points", "lrs", "widths", "workers", "state_sizes")


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` → ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _union(lists: list[list[Any]]) -> list[Any]:
    out: list[Any] = []
    for values in lists:
        out.extend(v for v in values if v not in out)
    return out


def merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One sweep result from parts that split it by model, point, rate or width.

    Every part must be an ``mqar-sweep`` result whose config equals the others'
    outside :data:`SPLIT_KEYS` (same data, steps, sizes and seeds), and no run may
    appear twice. A field only one part's config has (added to the code after the
    other part ran) is not a difference; it is logged. A part that is itself a
    merge contributes its own parts' commands. Rows are concatenated in the
    parts' order and ``best`` is recomputed over all of them; the merged config
    lists the union of the split keys' values, ``parts`` keeps each part's
    command, ``wall_seconds`` is the longest part's and ``finished`` the last.

    Raises:
        ValueError: no parts, a part of another suite, configs that differ
            outside the split keys (named), or a run present in two parts.
    """
    if not parts:
        raise ValueError("merge needs at least one part")
    other = [p.get("suite") for p in parts if p.get("suite") != "mqar-sweep"]
    if other:
        raise ValueError(f"merge joins mqar-sweep parts only, got suite(s) {other}")
    shared = [{k: v for k, v in _flat(p["config"]).items() if k not in SPLIT_KEYS}
              for p in parts]
    for i, cfg in enumerate(shared[1:], start=1):
        differ = sorted(k for k in shared[0].keys() & cfg.keys() if shared[0][k] != cfg[k])
        one_sided = sorted(shared[0].keys() ^ cfg.keys())
        if one_sided:
            log.info("merge: config fields only in part 0 or part %d (added since): %s",
                     i, one_sided)
        if differ:
            raise ValueError(f"part {i} ({parts[i].get('command', '?')}) differs from part 0 in "
                             f"{differ}: only {list(SPLIT_KEYS)} may differ between parts")
    rows = [r for p in parts for r in p["results"]]
    seen: set[tuple[Any, ...]] = set()
    for r in rows:
        key = (r["pairs"], r["length"], r["model"], r.get("d_model"), r["lr"])
        if key in seen:
            raise ValueError(f"run {key} (pairs, length, model, d_model, lr) is in two parts")
        seen.add(key)
    config = {**parts[0]["config"],
              **{k: _union([p["config"][k] for p in parts]) for k in SPLIT_KEYS
                 if k != "workers" and k in parts[0]["config"]}}
    return {**parts[0], "config": config, "results": rows,
            "best": best_rows(rows) if config.get("lrs") else [],
            "state_sweep": [r for p in parts for r in p.get("state_sweep", [])],
            "parts": [c for p in parts for c in p.get("parts") or [p.get("command", "?")]],
            "wall_seconds": max(p.get("wall_seconds", 0.0) for p in parts),
            "finished": max(str(p.get("finished", "")) for p in parts)}


def targets(result: dict[str, Any]) -> list[str]:
    """The issue's target: OBS >= 0.99 at 32 pairs, length 256."""
    at = [r for r in result.get("results", []) if (r.get("pairs"), r.get("length")) == (32, 256)]
    obs = [r for r in at if r["model"] == "obs"]
    if not obs:
        return []
    others = ", ".join(f"{r['model']} {r['accuracy']:.3f}" for r in at if r["model"] != "obs")
    return [f"MQAR 32 pairs, length 256: OBS >= 0.99 — {verdict(obs[0]['accuracy'] >= 0.99)}"
            f" (OBS {obs[0]['accuracy']:.3f} in {obs[0]['steps']} steps / "
            f"{obs[0]['seconds']} s{'; ' + others if others else ''})"]


SUITE = Suite(name="mqar-sweep", title="MQAR sweep", config=MQARSweepConfig, run=run,
              quick=QUICK, targets=targets,
              figures=[("pairs", plots.mqar_pairs), ("costs", plots.mqar_costs),
                       ("state_size", plots.mqar_state)])
