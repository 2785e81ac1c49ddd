"""Learners: OBS and the baselines behind one train/predict interface.

A *learner* owns a model and its optimiser and offers

* ``train_step(batch) -> {"loss", "accuracy"}``: one optimiser step;
* ``predict(batch) -> logits [B, T, classes]``: no gradient, no commits;
* ``parameters``: trainable slow-weight count (the big state is not a parameter).

:class:`OBSLearner` drives the project's :class:`~obs_dist.trainer.Trainer`
(windows, truncated BPTT, commits, ``on_step`` hooks) exactly as ``obs train``
does; :class:`BaselineLearner` runs the same loss (:func:`masked_loss`) and the
same optimiser (:class:`TorchSlowWeights`: AdamW, warm-up, cosine) on a
``batch → logits`` baseline. So every model sees the same batches, loss and
schedule, and only the sequence mechanism differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import nn

from obs_dist.baselines import BaselineConfig, build_baseline, count_parameters
from obs_dist.model.model import Carry, ModelConfig, OBSModel
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.window import WindowMemory
from obs_dist.replay import ReplayConfig, ReplayHook
from obs_dist.trainer import TorchSlowWeights, TrainConfig, Trainer, masked_loss

# Batch entries that only the harness reads (scoring, plots); models never see them.
SCORING_KEYS = ("candidates", "delay_index", "words", "objects", "keys")


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without the harness-only entries."""
    return {k: v for k, v in batch.items() if k not in SCORING_KEYS}


class Learner(Protocol):
    """What the harness needs from a model under evaluation."""

    name: str
    parameters: int

    @property
    def model(self) -> nn.Module: ...

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]: ...

    def predict(self, batch: dict[str, Any]) -> torch.Tensor: ...


class OBSLearner:
    """OBS through the project's trainer.

    Args:
        name: label in results.
        state_cfg: the big state.
        model_cfg: slow weights (``vocab``/``classes`` must be resolved).
        train_cfg: loop settings (steps set the learning-rate schedule).
        commit: commit window deltas (continual tasks) or keep memory per sequence.
        replay: if given, a :class:`ReplayHook` is attached as the ``replay`` hook
            (``on_step``, stage ``state``).
        prepare: called on the model before its optimizer is built (e.g. to fit a
            front end in it).
    """

    def __init__(self, name: str, state_cfg: StateConfig, model_cfg: ModelConfig,
                 train_cfg: TrainConfig, commit: bool,
                 replay: ReplayConfig | None = None,
                 prepare: Callable[[nn.Module], None] | None = None) -> None:
        self.name = name
        self.device = torch.device(train_cfg.device)
        torch.manual_seed(train_cfg.seed)
        self.model = OBSModel(model_cfg, state_cfg.nodes).to(self.device)
        if prepare is not None:
            prepare(self.model)
        self.state = BigState(state_cfg, device=self.device)
        self.trainer = Trainer(train_cfg, self.model, self.state, commit=commit,
                               penalty=state_cfg.penalty)
        self.replay: ReplayHook | None = None
        if replay is not None:
            self.replay = ReplayHook(replay, self.trainer)
            self.trainer.hooks.add("replay", self.replay, stage="state")
        self.parameters = count_parameters(self.model)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One :meth:`Trainer.train_step`, then the trainer's ``on_step`` hooks."""
        out = self.trainer.train_step(model_inputs(batch))
        self.trainer.hooks.run("on_step", self.trainer, out)
        return out

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits of every step, reading the state as it is (nothing committed).

        Each evaluation batch starts from no active nodes: across-batch carry
        belongs to the training stream.
        """
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                  for k, v in model_inputs(batch).items()}
        targets = inputs["targets"]
        bsz, length = targets.shape
        self.model.eval()
        try:
            carry: Carry = self.model.initial_carry(bsz, self.device)
            memory = WindowMemory(self.state.matrix(), bsz, shared=self.trainer.shared)
            outs = []
            for s, e in self.trainer.windows(length):
                part = {k: (v[:, s:e] if isinstance(v, torch.Tensor) and v.dim() >= 2
                            and v.shape[:2] == (bsz, length) else v) for k, v in inputs.items()}
                if s > 0:
                    part.pop("reset", None)
                logits, carry, _ = self.model.forward_window(part, memory, carry)
                outs.append(logits)
                memory = memory.carry()
            return torch.cat(outs, dim=1).cpu()
        finally:
            self.model.train()

    @torch.no_grad()
    def expose(self, batch: dict[str, Any]) -> int:
        """Run a batch forward and commit its writes, with no gradient step.

        Used to write experience into the state of a trained model (e.g. to draw
        the circuits a set of episodes wires). Returns the committed entries.
        """
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                  for k, v in model_inputs(batch).items()}
        bsz = inputs["targets"].shape[0]
        self.model.eval()
        try:
            memory = WindowMemory(self.state.matrix(), bsz, shared=self.trainer.shared)
            self.model.forward_window(inputs, memory, self.model.initial_carry(bsz, self.device))
            delta = memory.to_delta()
            return delta.nnz if self.trainer.commit(delta) else 0
        finally:
            self.model.train()


class BaselineLearner:
    """A ``batch → logits`` baseline with the same loss and optimiser as OBS.

    Args:
        name: label in results.
        cfg: the baseline.
        vocab: input tokens.
        classes: output classes.
        train_cfg: loop settings (learning rate, schedule, clipping, device, seed).
        prepare: called on the model before its optimizer is built.
    """

    def __init__(self, name: str, cfg: BaselineConfig, vocab: int, classes: int,
                 train_cfg: TrainConfig,
                 prepare: Callable[[nn.Module], None] | None = None) -> None:
        self.name = name
        self.config = cfg
        self.device = torch.device(train_cfg.device)
        torch.manual_seed(train_cfg.seed)
        self.model = build_baseline(cfg, vocab, classes).to(self.device)
        if prepare is not None:
            prepare(self.model)
        self.slow = TorchSlowWeights(self.model, train_cfg)
        self.parameters = count_parameters(self.model)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Forward, masked cross-entropy, backward, optimiser step."""
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                  for k, v in model_inputs(batch).items()}
        logits = self.model(inputs)
        loss, count, correct = masked_loss(logits, inputs["targets"])
        self.slow.backward(loss / max(count, 1))
        self.slow.step()
        return {"loss": float(loss.detach()) / max(count, 1),
                "accuracy": correct / max(count, 1), "scored": float(count)}

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits of every step."""
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                  for k, v in model_inputs(batch).items()}
        self.model.eval()
        try:
            return self.model(inputs).cpu()
        finally:
            self.model.train()


def matched_baseline(template: BaselineConfig, budget: int, vocab: int, classes: int,
                     step: int = 8, max_width: int = 2048) -> BaselineConfig:
    """``template`` with the ``d_model`` whose parameter count is closest to ``budget``.

    Widths are multiples of ``lcm(step, heads)`` (attention also needs an even
    head width); the count grows monotonically with the width, so the search
    stops at the first width over budget.

    Raises:
        ValueError: if ``budget`` is not positive.
    """
    if budget < 1:
        raise ValueError(f"parameter budget must be >= 1, got {budget}")
    unit = step
    while unit % template.heads or (unit // template.heads) % 2:
        unit += step
    best: tuple[int, BaselineConfig] | None = None
    width = unit
    while width <= max_width:
        cfg = dataclasses.replace(template, d_model=width)
        count = count_parameters(build_baseline(cfg, vocab, classes))
        gap = abs(count - budget)
        if best is None or gap < best[0]:
            best = (gap, cfg)
        if count > budget:
            break
        width += unit
    assert best is not None
    return best[1]
