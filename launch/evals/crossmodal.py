"""``obs eval --task crossmodal``: retrieve what a spoken name looked like, through the state.

Episodes (:mod:`obs_dist.tasks.crossmodal`): study clips pair a word's audio with
an object's video, ``delay`` distractor clips follow, then audio-only queries;
the answer is the nearest study clip (argmax over the episode's objects).
Every model is trained once on a mix of episode sizes and delays, then scored
on a grid: accuracy vs objects per episode (at ``primary[1]`` delay) and vs
delay (at ``primary[0]`` objects).

Two data paths:

* the **stand-in** (default): word audio and object video are token ids through
  two embedding ranges, with per-episode random names (``task.binding``), so
  the binding can only live in the state;
* **real shards** (``shards = "<dir>"``): ``pipelines.loader`` batches of the
  ``obs make-shards --synthetic`` streams, every study clip split into an audio
  step and a video step, the :class:`~obs_dist.model.av_encoders.AVEncoder` as encoder
  (see :mod:`launch.evals.crossmodal_shards`).

For OBS the suite also draws the state's strongest circuits (see
:mod:`launch.evals.circuits`): after scoring, episodes with fixed names are
committed into the state and the entries between word-audio nodes and
object-video nodes are read out.
"""

from __future__ import annotations

from typing import Any

from launch.evals.circuits import circuits
from launch.evals.crossmodal_config import CrossmodalSuiteConfig
from launch.evals.crossmodal_shards import run_shards
from launch.evals.harness import accuracy, build_learner, describe, fit
from launch.evals.learners import Learner, OBSLearner
from obs_dist.tasks.crossmodal import eval_episodes, train_episodes

NAME = "crossmodal"

QUICK = [
    "task.objects=16", "task.words=16", "task.per_episode=4", "task.train_per_episode=[2, 4]",
    "task.delay=4", "task.train_max_delay=6", "task.batch=16", "objects_grid=[2, 4]",
    "delays=[0, 4]", "primary=[4, 4]", "eval_batches=1", "circuits_objects=4",
    "circuits_exposures=2", "state.nodes=256", "state.partitions=1", "model.d_model=32",
    "model.writer.k_max=8", "model.writer.active=8", "model.writer.key_dim=16",
    "baseline.heads=2", "train.steps=40", "train.lr=5e-3", "train.warmup=5",
    "train.eval_every=0", "train.progress=false",
]


def _grid(cfg: CrossmodalSuiteConfig, learner: Any) -> list[dict[str, Any]]:
    """Accuracy at every scored (objects, delay) point."""
    n0, d0 = cfg.primary
    points = sorted({(n, d0) for n in cfg.objects_grid} | {(n0, d) for d in cfg.delays}
                    | {(n0, d0)})
    rows = []
    for n, d in points:
        batches = eval_episodes(cfg.task, n, d, cfg.eval_batches)
        rows.append({"objects": n, "delay": d, "accuracy": accuracy(learner, batches),
                     "chance": 1.0 / n})
    return rows


def run(cfg: CrossmodalSuiteConfig) -> dict[str, Any]:
    """Train every model on the episodes, score the grid, draw OBS's circuits."""
    if cfg.shards:
        return run_shards(cfg)
    task = cfg.task
    rows: list[dict[str, Any]] = []
    grids: dict[str, list[dict[str, Any]]] = {}
    picture: dict[str, Any] | None = None
    n0, d0 = cfg.primary
    for name in cfg.models:
        learner = build_learner(name, cfg, task.input_vocab, task.classes, commit=False)
        probe = eval_episodes(task, n0, d0, 1, seed_offset=77)

        def check(learner: Learner = learner, probe: list = probe) -> float:
            return accuracy(learner, probe)

        res = fit(learner, train_episodes(task), cfg.train.steps, cfg.seconds, evaluate=check,
                  eval_every=cfg.train.eval_every, target=cfg.train.target_accuracy,
                  desc=f"{name} crossmodal", progress=cfg.train.progress)
        grid = _grid(cfg, learner)
        grids[name] = grid
        headline = next(r["accuracy"] for r in grid if (r["objects"], r["delay"]) == (n0, d0))
        rows.append({**describe(learner), "steps": res.steps, "seconds": round(res.seconds, 1),
                     "stopped": res.stopped, "objects": n0, "delay": d0,
                     "accuracy": headline})
        if isinstance(learner, OBSLearner) and picture is None:
            picture = circuits(learner, task, cfg.circuits_objects, cfg.circuits_exposures)
    return {"results": rows, "grid": grids, "circuits": picture, "path": "stand-in",
            "primary": cfg.primary}
