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
  step and a video step, the :class:`~obs_dist.av_encoders.AVEncoder` as encoder
  (see :mod:`launch.evals.crossmodal_shards`).

For OBS the suite also draws the state's strongest circuits (see
:mod:`launch.evals.circuits`): after scoring, episodes with fixed names are
committed into the state and the entries between word-audio nodes and
object-video nodes are read out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from launch.evals.circuits import circuits
from launch.evals.harness import (
    SuiteConfig,
    accuracy,
    build_learner,
    describe,
    fit,
)
from launch.evals.learners import Learner, OBSLearner
from obs_dist.tasks.crossmodal import CrossmodalConfig, eval_episodes, train_episodes

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


@dataclass
class CrossmodalSuiteConfig(SuiteConfig):
    """The cross-modal association suite.

    Attributes:
        task: the stand-in episodes (training distribution and pools).
        objects_grid: objects per episode scored (at delay ``primary[1]``).
        delays: delays scored (at ``primary[0]`` objects per episode).
        primary: ``[objects, delay]`` of the headline figure.
        shards: directory of audio-visual shards (empty: the token stand-in).
        shards_eval: held-out shards for the real-shard path (empty: other draws
            of ``shards``); must share ``shards``' classes.
        shards_window: clips per row of a real-shard batch.
        shards_workers: loader worker processes of the real-shard path.
        audio_words_steps: real-shard path: steps of training a word recognizer on
            the spoken words of the training shards; every model then hears words
            through it, frozen (:mod:`launch.evals.front_ends`). 0: the models'
            own audio encoders.
        audio_words_utterances: utterances gathered to train the recognizer.
        audio_words_temperature: temperature of the recognizer's posterior.
        video_objects_steps: real-shard path: steps of training an object recognizer
            on the object labels of the training shards' video clips; every model
            then sees objects through it, frozen. 0: the models' own video encoders.
        video_objects_clips: video clips gathered to train the object recognizer.
        video_objects_temperature: temperature of its posterior.
        circuits_objects: objects whose word→object circuits are drawn (OBS).
        circuits_exposures: batches of fixed-name episodes committed before drawing.
    """

    task: CrossmodalConfig = field(default_factory=lambda: CrossmodalConfig(
        train_per_episode=[4, 8, 16], train_max_delay=48))
    objects_grid: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    delays: list[int] = field(default_factory=lambda: [0, 8, 16, 32, 64])
    primary: list[int] = field(default_factory=lambda: [16, 32])
    shards: str = ""
    shards_eval: str = ""
    shards_window: int = 32
    shards_workers: int = 0
    audio_words_steps: int = 0
    audio_words_utterances: int = 32768
    audio_words_temperature: float = 0.05
    video_objects_steps: int = 0
    video_objects_clips: int = 32768
    video_objects_temperature: float = 0.05
    circuits_objects: int = 16
    circuits_exposures: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.primary) != 2:
            raise ValueError(f"primary must be [objects, delay], got {self.primary}")
        for n in [*self.objects_grid, self.primary[0]]:
            dataclasses.replace(self.task, per_episode=n)  # validated there
        if any(d < 0 for d in [*self.delays, self.primary[1]]):
            raise ValueError(f"delays must be >= 0, got {self.delays}")
        if not 1 <= self.circuits_objects <= min(self.task.objects, self.task.words):
            raise ValueError(f"circuits_objects must be in [1, min(task.objects, task.words)]"
                             f", got {self.circuits_objects}")
        if self.circuits_exposures < 0:
            raise ValueError(f"circuits_exposures must be >= 0, got {self.circuits_exposures}")
        if self.shards_eval and not self.shards:
            raise ValueError("shards_eval needs shards (the training shards) set too")
        if self.shards_window < 2 or self.shards_workers < 0:
            raise ValueError("shards_window must be >= 2 and shards_workers >= 0")
        if self.audio_words_steps < 0 or self.audio_words_utterances < 10:
            raise ValueError("audio_words_steps must be >= 0 and audio_words_utterances >= 10")
        if self.video_objects_steps < 0 or self.video_objects_clips < 10:
            raise ValueError("video_objects_steps must be >= 0 and video_objects_clips >= 10")
        for key in ("audio_words_temperature", "video_objects_temperature"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("audio_words_steps", "video_objects_steps"):
            if getattr(self, key) and not self.shards:
                raise ValueError(f"{key} needs shards (the real-shard path)")


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
        from launch.evals.crossmodal_shards import run_shards

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
