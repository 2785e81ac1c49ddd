"""The evaluation harness: one way to build, train and score every model.

Every suite describes its task and calls the same three steps for each model
name in its config:

1. :func:`build_learner` — OBS (optionally with replay) from the ``state``,
   ``model`` and ``train`` sections, or a baseline from the ``baseline``
   template whose width is matched to OBS's trainable-parameter count (the
   *same parameter budget*; the big state is fast memory, not a parameter);
2. :func:`fit` — the same batches, loss and optimiser schedule, for
   ``train.steps`` steps or until ``seconds`` of wall time (the *same wall
   time*), optionally stopping early once an evaluation reaches a target;
3. :func:`score` / :func:`accuracy` — argmax over the classes, or over the
   episode's candidates where the batch names them (nearest-study-clip answers).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from launch.evals.learners import BaselineLearner, Learner, OBSLearner, matched_baseline
from obs_dist.baselines import BaselineConfig
from obs_dist.model.model import ModelConfig
from obs_dist.model.state import StateConfig
from obs_dist.replay import ReplayConfig
from obs_dist.tasks import IGNORE
from obs_dist.trainer import TrainConfig

log = logging.getLogger("obs.eval")

MODEL_NAMES = ("obs", "obs-replay", "attention", "deltanet", "gated_deltanet", "longhorn",
               "gru")


def _default_train() -> TrainConfig:
    return TrainConfig(steps=200, lr=3e-3, warmup=10, eval_every=25, eval_batches=4,
                       progress=True)


@dataclass
class SuiteConfig:
    """What every suite shares: which models, how they are built and trained.

    Attributes:
        models: model names among ``obs``, ``obs-replay``, ``attention``,
            ``deltanet``, ``gated_deltanet``, ``longhorn``, ``gru``.
        seconds: wall-time cap of one model's training (0: no cap).
        match_parameters: size baselines to OBS's trainable-parameter count.
        baseline_lr: learning rate of the baselines (0: ``train.lr``).
        eval_batches: batches per reported figure.
        threads: torch intra-op threads (1 is fastest on a shared 2-core machine:
            with 2 threads and other jobs running, steps were 10x slower).
        state: OBS's big state.
        model: OBS's slow weights (``vocab``/``classes`` are set by the suite).
        baseline: template of the baselines (``d_model`` is matched when
            ``match_parameters``; ``kind`` is set per model).
        train: the loop shared by all models (``steps``, ``lr``, ``window``, ``eval_every``,
            ``target_accuracy``, …).
        replay: replay of the ``obs-replay`` model.
    """

    models: list[str] = field(default_factory=lambda: ["obs", "attention", "deltanet",
                                                       "longhorn", "gru"])
    seconds: float = 0.0
    match_parameters: bool = True
    baseline_lr: float = 0.0
    eval_batches: int = 4
    threads: int = 1
    state: StateConfig = field(default_factory=StateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    train: TrainConfig = field(default_factory=_default_train)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown or not self.models:
            raise ValueError(f"models must be a non-empty list of {list(MODEL_NAMES)}, "
                             f"got {self.models}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must not repeat, got {self.models}")
        if self.seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {self.seconds}")
        if self.baseline_lr < 0:
            raise ValueError(f"baseline_lr must be >= 0, got {self.baseline_lr}")
        if self.eval_batches < 1:
            raise ValueError(f"eval_batches must be >= 1, got {self.eval_batches}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        self.model.writer.check_nodes(self.state.nodes)


def obs_model_config(cfg: SuiteConfig, vocab: int, classes: int) -> ModelConfig:
    """The suite's OBS model section with the task's vocabulary and classes."""
    return dataclasses.replace(cfg.model, vocab=vocab, classes=classes)


def build_learner(name: str, cfg: SuiteConfig, vocab: int, classes: int, commit: bool,
                  state: StateConfig | None = None,
                  prepare: Callable[[nn.Module], None] | None = None) -> Learner:
    """The learner ``name`` for a task of ``vocab`` inputs and ``classes`` outputs.

    Args:
        name: one of :data:`MODEL_NAMES`.
        cfg: the suite's model sections.
        vocab: input tokens (ignored by an ``av`` encoder).
        classes: output classes.
        commit: OBS commits window deltas (continual tasks).
        state: override of ``cfg.state`` (e.g. a state-size sweep).
        prepare: called on the model before its optimizer is built.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {list(MODEL_NAMES)}")
    state_cfg = state or cfg.state
    model_cfg = obs_model_config(cfg, vocab, classes)
    if name in ("obs", "obs-replay"):
        return OBSLearner(name, state_cfg, model_cfg, cfg.train, commit,
                          replay=cfg.replay if name == "obs-replay" else None, prepare=prepare)
    template = dataclasses.replace(cfg.baseline, kind=name,  # type: ignore[arg-type]
                                   encoder=cfg.model.encoder, n_mels=cfg.model.n_mels,
                                   image_size=cfg.model.image_size)
    if cfg.match_parameters:
        budget = obs_parameter_count(state_cfg, model_cfg)
        template = matched_baseline(template, budget, vocab, classes)
    train = cfg.train
    if cfg.baseline_lr:
        train = dataclasses.replace(train, lr=cfg.baseline_lr)
    return BaselineLearner(name, template, vocab, classes, train, prepare=prepare)


def obs_parameter_count(state: StateConfig, model: ModelConfig) -> int:
    """Trainable parameters of OBS with these sections (built on the meta device)."""
    from obs_dist.model.model import OBSModel

    with torch.device("meta"):
        obs = OBSModel(model, state.nodes)
    return sum(p.numel() for p in obs.parameters() if p.requires_grad)


def score(logits: torch.Tensor, targets: torch.Tensor,
          candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which scored positions are right.

    Args:
        logits: ``[B, T, C]``.
        targets: ``[B, T]`` (``-100`` = not scored).
        candidates: optional ``[B, C]`` bool: the answer must be one of these
            (the episode's study clips); other classes are ruled out.

    Returns:
        ``(correct [B, T] bool, scored [B, T] bool)``.
    """
    if candidates is not None:
        logits = logits.masked_fill(~candidates.to(logits.device)[:, None, :], -math.inf)
    scored = targets != IGNORE
    correct = (logits.argmax(-1) == targets.to(logits.device)) & scored
    return correct, scored


def accuracy(learner: Learner, batches: Iterable[dict[str, Any]]) -> float:
    """Accuracy over every scored position of ``batches``."""
    right = total = 0
    for batch in batches:
        correct, scored = score(learner.predict(batch), batch["targets"],
                                batch.get("candidates"))
        right += int(correct.sum())
        total += int(scored.sum())
    return right / max(total, 1)


@dataclass
class FitResult:
    """How a training run went.

    Attributes:
        steps: optimiser steps taken.
        seconds: wall time of training (evaluations excluded).
        loss: mean training loss over the last 10 steps.
        accuracy: mean training accuracy over the last 10 steps.
        curve: ``(step, eval accuracy)`` at every evaluation.
        stopped: ``steps``, ``seconds`` or ``target``.
    """

    steps: int = 0
    seconds: float = 0.0
    loss: float = float("nan")
    accuracy: float = float("nan")
    curve: list[tuple[int, float]] = field(default_factory=list)
    stopped: str = "steps"


def fit(learner: Learner, batches: Iterator[dict[str, Any]], steps: int, seconds: float = 0.0,
        evaluate: Callable[[], float] | None = None, eval_every: int = 0,
        target: float | None = None, desc: str = "train",
        progress: bool = True) -> FitResult:
    """Train ``learner`` for ``steps`` steps or ``seconds`` of training time.

    Args:
        learner: the model.
        batches: training batches.
        steps: most optimiser steps.
        seconds: most seconds of training (0: no cap); evaluations do not count.
        evaluate: returns an accuracy; called every ``eval_every`` steps.
        eval_every: steps between evaluations (0: none during training).
        target: stop once an evaluation reaches this accuracy.
        desc: progress-bar label.
        progress: show a progress bar (stderr).
    """
    result = FitResult()
    recent: list[tuple[float, float]] = []
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, dynamic_ncols=True,
               leave=False)
    try:
        while result.steps < steps:
            t0 = time.perf_counter()
            out = learner.train_step(next(batches))
            result.seconds += time.perf_counter() - t0
            result.steps += 1
            recent = (recent + [(out["loss"], out["accuracy"])])[-10:]
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.3f}", acc=f"{out['accuracy']:.3f}")
            if evaluate is not None and eval_every and result.steps % eval_every == 0:
                acc = evaluate()
                result.curve.append((result.steps, acc))
                log.info("%s step %d eval accuracy %.4f", desc, result.steps, acc)
                if target is not None and acc >= target:
                    result.stopped = "target"
                    break
            if seconds and result.seconds >= seconds:
                result.stopped = "seconds"
                break
    finally:
        bar.close()
    if recent:
        result.loss = sum(r[0] for r in recent) / len(recent)
        result.accuracy = sum(r[1] for r in recent) / len(recent)
    return result


def fixed_batches(make: Callable[[], dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` batches drawn once, so every model is scored on the same data."""
    return [make() for _ in range(count)]


def describe(learner: Learner) -> dict[str, Any]:
    """Model facts for result rows: name, parameters and (baselines) width."""
    row: dict[str, Any] = {"model": learner.name, "params": learner.parameters}
    if isinstance(learner, BaselineLearner):
        row["d_model"] = learner.config.d_model
    if isinstance(learner, OBSLearner):
        row["nodes"] = learner.state.num_nodes
        row["d_model"] = learner.model.config.d_model
    return row
