"""Replay and consolidation: store firing sequences, replay them during consolidation.

Replay is the reactivation of activity patterns seen during past experience;
in brains it happens offline (sleep) and consolidates memories, in artificial
networks it fights catastrophic forgetting (seed ``004``; State Memory Replay,
seed ``003``, replays stored states of an SSM). Here the pattern is a *firing
sequence*: for every step of a past window, the nodes that fired (were written)
and their coefficients — exactly the rank-1 blocks ``Δ[R, C] += a ⊗ b`` the
window recorded — plus the window's inputs.

* :class:`FiringRecorder` attaches to a model and, after every training
  window, copies a few streams' firing sequences into a :class:`ReplayBuffer`
  (reservoir sampling: a uniform sample of all history, of fixed size).
* :class:`ReplayHook` is an ``on_step`` hook of the
  :class:`~obs_dist.trainer.Trainer` (stage ``state``: it changes the state).
  Every ``every`` optimizer steps it runs a *consolidation window* that replays
  ``replays`` stored sequences:

  - ``writes``: their blocks are written again into the big state (scaled by
    ``gain``), through :meth:`Trainer.commit` so the sync across ranks and the
    non-finite guard apply; the old associations are reinforced against the
    interference of newer writes;
  - ``train``: their inputs are replayed as one extra training batch (gradient
    step on the slow weights, commits as usual), so the writer keeps addressing
    old inputs the way the state remembers them;
  - ``both``.

A scheduler decides *when* to consolidate by calling :meth:`ReplayHook.consolidate`
itself (e.g. between data phases) instead of, or as well as, the periodic hook.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from obs_dist.model.delta import SparseDelta
from obs_dist.model.model import OBSModel

if TYPE_CHECKING:
    from obs_dist.model.model import Carry, Memory
    from obs_dist.trainer import Trainer

log = logging.getLogger("obs.replay")

MODES = ("writes", "train", "both")


@dataclass
class ReplayConfig:
    """Replay and consolidation.

    Attributes:
        capacity: firing sequences kept (one per stream and window).
        streams_per_window: streams of each training window that are recorded.
        every: optimizer steps between consolidations (0: only when called).
        replays: stored sequences replayed per consolidation.
        gain: scale of replayed writes (``writes`` mode).
        mode: ``writes``, ``train`` or ``both``.
        seed: seed of the reservoir and of the replay draws.
    """

    capacity: int = 512
    streams_per_window: int = 4
    every: int = 10
    replays: int = 16
    gain: float = 1.0
    mode: Literal["writes", "train", "both"] = "writes"
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("capacity", "streams_per_window", "replays"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.every < 0:
            raise ValueError(f"every must be >= 0, got {self.every}")
        if not self.gain > 0:
            raise ValueError(f"gain must be > 0, got {self.gain}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")


@dataclass
class FiringSequence:
    """One stream's firing during one window.

    Attributes:
        blocks: per write kind, ``(rows [T, r], a [T, r], cols [T, c], b [T, c])``.
        inputs: the stream's per-step batch entries in that window (``[T, …]``).
        tag: caller's label (e.g. the task or set being learned when recorded).
    """

    blocks: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    tag: int = 0

    @property
    def steps(self) -> int:
        """Window length T."""
        return next(iter(self.blocks.values()))[0].shape[0] if self.blocks else 0


class ReplayBuffer:
    """A fixed-size uniform sample of every firing sequence offered (reservoir sampling).

    Args:
        capacity: sequences kept.
        seed: seed of the reservoir decisions and of :meth:`sample`.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.items: list[FiringSequence] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: FiringSequence) -> None:
        """Offer one sequence; kept with probability ``capacity / seen``."""
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.capacity:
            self.items[slot] = item

    def sample(self, count: int) -> list[FiringSequence]:
        """Up to ``count`` distinct stored sequences, uniformly."""
        return self._rng.sample(self.items, min(count, len(self.items)))

    def tags(self) -> dict[int, int]:
        """How many stored sequences carry each tag."""
        out: dict[int, int] = {}
        for item in self.items:
            out[item.tag] = out.get(item.tag, 0) + 1
        return out


WindowFn = Callable[[dict[str, Any], "Memory", "Carry"],
                    tuple[torch.Tensor, "Carry", dict[str, float]]]


class FiringRecorder:
    """Records firing sequences of training windows into a buffer.

    Args:
        buffer: where sequences go.
        streams_per_window: streams recorded per window (the first ones; batches
            are shuffled data, so this is a sample).
    """

    def __init__(self, buffer: ReplayBuffer, streams_per_window: int) -> None:
        self.buffer = buffer
        self.streams = streams_per_window
        self.tag = 0
        self.enabled = True

    def attach(self, model: OBSModel) -> None:
        """Wrap ``model.forward_window`` so training windows are recorded after they run."""
        inner: WindowFn = model.forward_window

        def recording(batch: dict[str, Any], memory: Memory, carry: Carry
                      ) -> tuple[torch.Tensor, Carry, dict[str, float]]:
            out = inner(batch, memory, carry)
            if self.enabled and model.training:
                self.record(batch, memory)
            return out

        # An instance attribute shadows the method: the trainer calls it unchanged.
        setattr(model, "forward_window", recording)  # noqa: B010

    def record(self, batch: dict[str, Any], memory: object) -> int:
        """Copy this window's blocks of the first streams into the buffer.

        Returns:
            Number of sequences offered (0 if the memory keeps no blocks).
        """
        seqs = getattr(memory, "seqs", None)
        if not seqs:
            return 0
        per_kind = {}
        for kind, seq in seqs.items():
            live = seq.step >= 0
            if bool(live.any()):
                per_kind[kind] = (seq.rows[:, live], seq.a[:, live], seq.cols[:, live],
                                  seq.b[:, live])
        if not per_kind:
            return 0
        bsz = next(iter(per_kind.values()))[0].shape[0]
        steps = next(iter(per_kind.values()))[0].shape[1]
        count = min(self.streams, bsz)
        for s in range(count):
            blocks = {k: tuple(t[s].detach().cpu() for t in v) for k, v in per_kind.items()}
            inputs = {k: v[s].detach().cpu() for k, v in batch.items()
                      if isinstance(v, torch.Tensor) and v.dim() >= 2
                      and v.shape[:2] == (bsz, steps)}
            self.buffer.add(FiringSequence(blocks, inputs, self.tag))
        return count


def firing_delta(items: list[FiringSequence], nodes: int, gain: float) -> SparseDelta:
    """The writes of ``items`` again, scaled by ``gain``, summed and coalesced."""
    rows, cols, vals = [], [], []
    for item in items:
        for r, a, c, b in item.blocks.values():
            v = gain * a[:, :, None].float() * b[:, None, :].float()  # [T, r, c]
            rows.append(r[:, :, None].expand_as(v).reshape(-1))
            cols.append(c[:, None, :].expand_as(v).reshape(-1))
            vals.append(v.reshape(-1))
    if not vals:
        empty = torch.empty(0, dtype=torch.int64)
        return SparseDelta.from_indices(empty, empty, torch.empty(0), nodes)
    v_all = torch.cat(vals)
    keep = v_all != 0
    delta = SparseDelta.from_indices(torch.cat(rows)[keep], torch.cat(cols)[keep], v_all[keep],
                                     nodes)
    return delta.coalesce()


def replay_batch(items: list[FiringSequence]) -> dict[str, torch.Tensor] | None:
    """Stack the inputs of the largest group of equally long sequences into a batch."""
    groups: dict[int, list[FiringSequence]] = {}
    for item in items:
        if "targets" in item.inputs:
            groups.setdefault(item.steps, []).append(item)
    if not groups:
        return None
    best = max(groups.values(), key=len)
    keys = set.intersection(*(set(i.inputs) for i in best))
    return {k: torch.stack([i.inputs[k] for i in best]) for k in sorted(keys)}


class ReplayHook:
    """``on_step`` hook: record training windows and consolidate every ``every`` steps.

    Args:
        cfg: replay settings.
        trainer: the trainer whose model is recorded and whose state is consolidated.
    """

    def __init__(self, cfg: ReplayConfig, trainer: Trainer) -> None:
        self.cfg = cfg
        self.buffer = ReplayBuffer(cfg.capacity, cfg.seed)
        self.recorder = FiringRecorder(self.buffer, cfg.streams_per_window)
        if not isinstance(trainer.model, OBSModel):
            raise ValueError("replay consolidation records OBSModel firing; the av-stream model "
                             "rehearses batches instead (rehearsal.ratio)")
        self.recorder.attach(trainer.model)
        self.consolidations = 0
        self.replayed_entries = 0
        self.replayed_steps = 0

    def set_tag(self, tag: int) -> None:
        """Label the sequences recorded from now on (e.g. the current task)."""
        self.recorder.tag = tag

    def __call__(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Consolidate when due; report the replay counters in ``metrics``."""
        if self.cfg.every and trainer.step % self.cfg.every == 0:
            self.consolidate(trainer)
        metrics["replay_consolidations_total"] = float(self.consolidations)
        metrics["replay_entries_total"] = float(self.replayed_entries)
        metrics["replay_buffer_size"] = float(len(self.buffer))

    def consolidate(self, trainer: Trainer) -> dict[str, float]:
        """One consolidation window: replay stored sequences as writes and/or training.

        Returns:
            ``{"entries": …, "train_loss": …}`` of what was replayed.
        """
        items = self.buffer.sample(self.cfg.replays)
        out: dict[str, float] = {"entries": 0.0}
        if not items:
            return out
        self.consolidations += 1
        # Replayed windows are not recorded again: replay must not breed copies of itself.
        self.recorder.enabled = False
        try:
            if self.cfg.mode in ("writes", "both"):
                delta = firing_delta(items, trainer.state.num_nodes, self.cfg.gain)
                if trainer.commit(delta):
                    self.replayed_entries += delta.nnz
                    out["entries"] = float(delta.nnz)
            if self.cfg.mode in ("train", "both"):
                batch = replay_batch(items)
                if batch is not None:
                    saved = trainer.carry
                    trainer.carry = None  # the replay batch has its own streams
                    # An extra optimizer step, not one of the stream's: no step count.
                    result = trainer.train_step(batch, advance=False)
                    trainer.carry = saved
                    self.replayed_steps += 1
                    out["train_loss"] = result["loss"]
        finally:
            self.recorder.enabled = True
        return out
