"""The training loop: windows, truncated BPTT, commits, metrics.

The trainer takes an iterator of batches and a metrics sink as arguments; it
knows nothing of files, shards or Prometheus. Slow weights are stepped through
a :class:`SlowWeights` object (plain PyTorch here, DeepSpeed or a rank-ordered
gradient all-reduce in :mod:`obs_dist.engine.slow_weights`) and committed deltas pass through
a ``sync`` function (identity for one process, :class:`~obs_dist.engine.sync.DeltaSync`
across ranks).

Phases (DESIGN §4): a :class:`~obs_dist.engine.scheduler.PhaseScheduler` picks each
window's phase (without one, the ``shared`` flag fixes it). In the sequential
phase every stream sees every stream's writes from the next step on — across
ranks through the ``exchange`` of each step's blocks — and the window's delta
is synced at its end. In the parallel phase streams see their own writes; with
more than one rank the window deltas are applied locally at once and their sum
is synced every ``parallel_every`` windows (:class:`~obs_dist.engine.replica.DeferredCommits`),
so replicas are bit-identical at every sync point. :meth:`Trainer.flush` forces
a sync point (replica checks and checkpoints call it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from obs_dist.engine.collectives import all_ranks_agree
from obs_dist.engine.dist import get_world_size, is_rank_zero
from obs_dist.engine.replica import DeferredCommits
from obs_dist.engine.scheduler import SEQUENTIAL, PhaseScheduler, WindowSignals, declared_continuous
from obs_dist.engine.shard_sync import ShardedDeferredCommits
from obs_dist.guards import GUARD_STAGE, DivergenceGuard
from obs_dist.hooks import Hooks
from obs_dist.model.av_stream import AVStreamModel
from obs_dist.model.delta import SparseDelta
from obs_dist.model.model import Carry, OBSModel
from obs_dist.model.sharded_state import ShardedState
from obs_dist.model.state import BigState
from obs_dist.model.window import Exchange, WindowMemory
from obs_dist.tasks import IGNORE

log = logging.getLogger("obs.trainer")

MetricsSink = Callable[[dict[str, float], int], None]
# (base, batch, shared, exchange) -> the window's memory
MemoryFactory = Callable[[torch.Tensor, int, bool, Exchange | None], WindowMemory]


@dataclass
class TrainConfig:
    """The training loop.

    Attributes:
        steps: optimizer steps (one per batch).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps, then cosine decay to 10 % of ``lr``.
        grad_clip: global gradient-norm clip (0 disables).
        window: steps per window (truncated BPTT); 0 = the whole batch length.
        log_every: steps between metric reports.
        eval_every: steps between evaluations (0: only at the end).
        eval_batches: batches per evaluation.
        moments_every: steps between state-moment reports (O(N²) each).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seed of the slow weights.
        progress: show a progress bar.
        target_accuracy: stop once an evaluation reaches this accuracy.
        max_nonfinite_steps: stop the run (non-zero exit) after this many
            consecutive steps whose loss or slow weights are NaN/inf.
        schedule_steps: length of the learning-rate schedule (0: ``steps``).
            Set it explicitly to be allowed to change ``steps`` on resume.
    """

    steps: int = 200
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: int = 10
    grad_clip: float = 1.0
    window: int = 0
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 4
    moments_every: int = 100
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    target_accuracy: float | None = None
    max_nonfinite_steps: int = 3
    schedule_steps: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for key in ("weight_decay", "warmup", "grad_clip", "window", "eval_every",
                    "schedule_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("log_every", "eval_batches", "moments_every", "max_nonfinite_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            why = ("this PyTorch build has no CUDA" if torch.version.cuda is None
                   else "no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver)")
            raise ValueError(f"device is {self.device!r} but {why}; use train.device=cpu")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ValueError(f"target_accuracy must be in (0, 1], got {self.target_accuracy}")


class SlowWeights(Protocol):
    """How the slow weights θ are stepped (plain PyTorch or DeepSpeed)."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TorchSlowWeights:
    """AdamW with warm-up + cosine schedule and gradient clipping.

    Args:
        model: the module whose parameters are trained.
        cfg: learning-rate settings.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        self.model = model
        self.cfg = cfg
        # fused: one pass over each parameter and its moments instead of ~8
        # (docs/benchmarks.md: 12-23 ms -> 3 ms a step for E at N = 32,768).
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._factor)

    def _factor(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        span = max((cfg.schedule_steps or cfg.steps) - cfg.warmup, 1)
        progress = min((step - cfg.warmup) / span, 1.0)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of ``loss``."""
        loss.backward()

    def step(self) -> float:
        """Clip, step, advance the schedule, zero the gradients; returns the grad norm."""
        norm = 0.0
        if self.cfg.grad_clip > 0:
            norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and schedule state."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def masked_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy over scored positions, their count, and correct predictions."""
    scored = targets != IGNORE
    count = int(scored.sum())
    if count == 0:
        return logits.sum() * 0.0, 0, 0
    sel_logits = logits[scored]
    sel_targets = targets[scored]
    loss = F.cross_entropy(sel_logits.float(), sel_targets, reduction="sum")
    correct = int((sel_logits.argmax(-1) == sel_targets).sum())
    return loss, count, correct


class Trainer:
    """Runs windows over a batch stream, steps θ and commits deltas to the state.

    Args:
        cfg: loop settings.
        model: the slow-weight model.
        state: the big state (read by every window; changed only by commits).
        commit: commit window deltas (continual tasks) or keep memory per sequence.
        penalty: weight of the Gaussian moment penalty on touched entries.
        slow: how θ is stepped (default: :class:`TorchSlowWeights`).
        sync: sums a committed delta across ranks (default: identity).
        sink: receives ``(metrics, step)`` every ``log_every`` steps.
        shared: sequential phase inside the batch (streams see each other's writes)
            when no scheduler is given.
        scheduler: decides each window's phase (None: fixed by ``shared``).
        exchange: the sequential phase's per-step block exchange across ranks
            (None for one process).
        parallel_every: K, windows between syncs in the parallel phase when
            there is more than one rank.
        deferred: holds the parallel phase's windows between syncs (default:
            :class:`~obs_dist.engine.replica.DeferredCommits` over ``state``).
        make_memory: builds a window's memory ``(base, batch, shared, exchange)``
            (default: :class:`~obs_dist.model.window.WindowMemory`; the sharded
            layout's reads through its owners).

    ``hooks`` (:class:`~obs_dist.hooks.Hooks`) holds the named hooks
    ``hook(trainer, metrics)``: ``on_step`` ones run after every optimizer step of
    :meth:`fit`, before metrics are reported (replica checks, checkpoints,
    preemption, …), in their declared stage order; ``on_end`` ones once when
    :meth:`fit` returns. A hook may add entries to ``metrics``. The hook
    ``divergence`` (:class:`~obs_dist.guards.DivergenceGuard`) is always there.
    """

    def __init__(self, cfg: TrainConfig, model: OBSModel | AVStreamModel,
                 state: BigState | ShardedState,
                 commit: bool,
                 penalty: float = 0.0, slow: SlowWeights | None = None,
                 sync: Callable[[SparseDelta], SparseDelta] | None = None,
                 sink: MetricsSink | None = None, shared: bool = False,
                 scheduler: PhaseScheduler | None = None, exchange: Exchange | None = None,
                 parallel_every: int = 1,
                 deferred: DeferredCommits | ShardedDeferredCommits | None = None,
                 make_memory: MemoryFactory | None = None) -> None:
        if parallel_every < 1:
            raise ValueError(f"parallel_every must be >= 1, got {parallel_every}")
        self.cfg = cfg
        self.model = model
        self.state = state
        self.commits = commit
        self.penalty = penalty
        self.slow: SlowWeights = slow if slow is not None else TorchSlowWeights(model, cfg)
        self.sync = sync if sync is not None else (lambda d: d)
        # Whether this trainer is one of several ranks training together (its votes
        # are collectives); a single-process reference inside a larger world is not.
        self.spans_ranks = sync is not None and get_world_size() > 1
        self.sink = sink
        self.shared = shared
        self.scheduler = scheduler
        self.exchange = exchange
        # One process has nothing to wait for: commit every window.
        self.parallel_every = parallel_every if get_world_size() > 1 else 1
        if deferred is None:
            assert isinstance(state, BigState), "a sharded state needs its own deferred commits"
            deferred = DeferredCommits(state)
        self.deferred = deferred
        self.make_memory: MemoryFactory = make_memory if make_memory is not None else WindowMemory
        self.device = torch.device(cfg.device)
        self.step = 0
        self.counters: dict[str, float] = {"samples_total": 0.0, "tokens_total": 0.0,
                                           "nonfinite_commits_total": 0.0,
                                           "committed_entries_total": 0.0,
                                           "replay_steps_total": 0.0, "scored_total": 0.0}
        self.carry: Carry | None = None
        self._zeros: torch.Tensor | None = None
        self.last_delta_nnz = 0
        self.hooks: Hooks[Trainer] = Hooks()
        # NaN/inf loss or weights for max_nonfinite_steps steps in a row end the run.
        self.hooks.add("divergence", DivergenceGuard(cfg.max_nonfinite_steps), stage=GUARD_STAGE)
        # An on_step hook sets this to end fit() after the current step (preemption).
        self.stop_requested = False
        # Steps the data will last, when it ends before cfg.steps (one pass): the
        # progress bar's total, so that its time left is the pass's.
        self.expected_steps: int | None = None

    # ------------------------------------------------------------ resumption
    def state_dict(self) -> dict[str, Any]:
        """Loop position, counters, carried activity and scheduler state.

        Call :meth:`flush` first when saving a checkpoint across ranks: replicas
        agree only at sync points.
        """
        return {"step": self.step, "counters": dict(self.counters),
                "carry": None if self.carry is None else
                {"ids": self.carry.ids.cpu(), "vals": self.carry.vals.cpu()},
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (slow weights and the big state load separately)."""
        self.step = int(state["step"])
        self.counters.update({k: float(v) for k, v in state["counters"].items()})
        carry = state.get("carry")
        self.carry = None if carry is None else Carry(carry["ids"].to(self.device),
                                                      carry["vals"].to(self.device))
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    # ----------------------------------------------------------------- commits
    def _refuse_nonfinite(self, delta: SparseDelta) -> SparseDelta | None:
        """None for a finite delta; else count and log it and return an empty one."""
        if delta.all_finite():
            return None
        self.counters["nonfinite_commits_total"] += 1
        log.warning("refused a commit at step %d: %d of %d delta values are NaN/inf",
                    self.step, int((~torch.isfinite(delta.values)).sum()), delta.nnz)
        return SparseDelta.empty(delta.num_nodes, device=delta.values.device)

    def commit(self, delta: SparseDelta) -> bool:
        """Sum ``delta`` across ranks and add it to the state.

        A delta holding NaN/inf is refused before the sync (an empty one takes
        part in the collective, so the other ranks' writes still land): the
        state gets only the others' writes, the event is counted
        (``nonfinite_commits_total``) and logged. Returns whether ``delta`` was applied.
        """
        empty = self._refuse_nonfinite(delta)
        applied = empty is None
        delta = self.sync(delta if empty is None else empty)
        last = getattr(self.sync, "last", None)
        if self.scheduler is not None and last is not None:
            self.scheduler.observe_sync(last.gathered_nnz, last.union_nnz)
        self.last_delta_nnz = delta.nnz
        if self._refuse_nonfinite(delta) is not None:  # an overflow in the sum
            return False
        self.state.apply(delta)
        self.counters["committed_entries_total"] += delta.nnz
        return applied

    @property
    def at_sync_point(self) -> bool:
        """No parallel-phase window is held back: every replica holds the same state.

        Saving here changes nothing; saving elsewhere must :meth:`flush` first,
        which syncs earlier than an uninterrupted run would.
        """
        return self.deferred.windows == 0

    def flush(self) -> None:
        """Sync the parallel phase's held-back windows now (a collective)."""
        if self.deferred.windows:
            self.commit(self.deferred.take())

    def _commit_window(self, delta: SparseDelta, shared: bool) -> None:
        """Commit one window's delta in its phase (see the module docstring)."""
        if shared or self.parallel_every == 1:
            self.flush()  # a phase switch: held-back windows go first
            self.commit(delta)
            return
        empty = self._refuse_nonfinite(delta)
        self.deferred.add(delta if empty is None else empty)
        if self.deferred.windows >= self.parallel_every:
            self.flush()

    def _decide(self, batch: dict[str, Any], train: bool) -> bool:
        """Whether the next window runs in the sequential (shared) phase.

        Evaluation keeps the current phase: it must neither count as a decision
        nor move the scheduler's running signals.
        """
        if self.scheduler is None:
            return self.shared
        if not train:
            return self.scheduler.phase == SEQUENTIAL
        return self.scheduler.decide(declared_continuous(batch)) == SEQUENTIAL

    # ----------------------------------------------------------------- windows
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def windows(self, length: int) -> list[tuple[int, int]]:
        """The ``(start, end)`` steps of each window of a batch ``length`` steps long."""
        w = self.cfg.window or length
        return [(s, min(s + w, length)) for s in range(0, length, w)]

    def _empty_state(self) -> torch.Tensor:
        """A zero ``[N, N]`` base for replayed batches (made once, never written)."""
        if self._zeros is None:
            self._zeros = torch.zeros_like(self.state.matrix())
        return self._zeros

    def run_batch(self, batch: dict[str, Any], train: bool = True) -> dict[str, float]:
        """One batch: windows with truncated BPTT; one optimizer step when training.

        Per-sequence tasks start every batch from fresh memory and carry the
        window's (detached) writes to the next window of the same batch;
        committing tasks commit after each window and carry only the active
        nodes across batches.
        """
        batch = self._to_device(batch)
        targets = batch["targets"]
        bsz, length = targets.shape
        # A replayed batch (``batch["replay"]``) trains the slow weights on past
        # clips over an empty state (or the current one, ``replay_over_state``);
        # it never commits, and the stream's carried activity is left alone.
        replay = bool(batch.get("replay", False))
        if self.commits and not replay:
            carry = self.carry if self.carry is not None else self.model.initial_carry(
                bsz, self.device)
        else:
            carry = self.model.initial_carry(bsz, self.device)
        memory: WindowMemory | None = None
        fresh_each_window = self.commits and train
        scorer = getattr(self.model, "window_objective", None)
        count = getattr(self.model, "count_scored", None)
        total_scored = max(int(count(batch)) if count is not None
                           else int((targets != IGNORE).sum()), 1)
        over_state = not replay or bool(batch.get("replay_over_state", False))
        base = self.state.matrix() if over_state else self._empty_state()
        loss_sum = 0.0
        correct = scored = 0
        stats: dict[str, float] = {}
        for s, e in self.windows(length):
            t_window = time.perf_counter()
            part = {k: (v[:, s:e] if isinstance(v, torch.Tensor) and v.dim() >= 2
                        and v.shape[:2] == (bsz, length) else v) for k, v in batch.items()}
            if s > 0:
                part.pop("reset", None)
            shared = self._decide(batch, train)
            exchange = self.exchange if shared else None
            if memory is None or fresh_each_window:
                memory = self.make_memory(base, bsz, shared, exchange)
            else:
                memory = memory.carry(shared, exchange)
            with torch.set_grad_enabled(train):
                if scorer is not None:  # the model scores its own window
                    loss, n, c, carry, stats = scorer(part, memory, carry)
                else:
                    assert isinstance(self.model, OBSModel)
                    logits, carry, stats = self.model.forward_window(part, memory, carry)
                    loss, n, c = masked_loss(logits, part["targets"])
                objective = loss / total_scored
                if train and self.penalty > 0 and self.state.config.init_std > 0:
                    objective = objective + self.penalty * memory.gaussian_penalty(
                        self.state.config.init_std)
            if train and objective.requires_grad:
                self.slow.backward(objective)
            loss_sum += float(loss.detach())
            correct += c
            scored += n
            carry = carry.detach()
            if self.commits and train and not replay:
                self._commit_window(memory.to_delta(), shared)
            if self.scheduler is not None and train and not replay:
                writes, union = memory.write_overlap()
                self.scheduler.observe_window(WindowSignals(
                    writes, union, float(loss.detach()), n, time.perf_counter() - t_window))
        if self.commits and train and not replay:
            self.carry = carry
        out = {"loss": loss_sum / max(scored, 1), "accuracy": correct / max(scored, 1),
               "scored": float(scored)}
        out.update({f"mean_{k}": v for k, v in stats.items()})
        return out

    def train_step(self, batch: dict[str, Any], advance: bool = True) -> dict[str, float]:
        """One optimizer step on one batch: its windows (:meth:`run_batch`), then θ's step.

        Args:
            batch: ``targets [B, T]`` and the model's inputs.
            advance: count the step: ``step += 1`` and the samples and tokens
                counters. False for an extra step that is not one of the
                stream's (a replayed batch during consolidation).

        Returns:
            The batch's ``loss``, ``accuracy``, ``scored`` and writer statistics.
        """
        out = self.run_batch(batch, train=True)
        self.slow.step()
        self.counters["scored_total"] += out["scored"]
        if advance:
            self.step += 1
            if batch.get("replay", False):
                self.counters["replay_steps_total"] += 1
                return out
            bsz, length = batch["targets"].shape
            self.counters["samples_total"] += bsz
            self.counters["tokens_total"] += bsz * length
        return out

    def evaluate(self, batches: Iterable[dict[str, Any]], count: int) -> dict[str, float]:
        """Accuracy and loss over ``count`` batches, without training or commits."""
        self.model.eval()
        saved_carry = self.carry
        loss = acc = weight = 0.0
        it = iter(batches)
        with torch.no_grad():
            for _ in range(count):
                out = self.run_batch(next(it), train=False)
                loss += out["loss"] * out["scored"]
                acc += out["accuracy"] * out["scored"]
                weight += out["scored"]
        self.carry = saved_carry
        self.model.train()
        return {"eval_loss": loss / max(weight, 1), "eval_accuracy": acc / max(weight, 1)}

    def _engine_metrics(self) -> dict[str, float]:
        """Sync and scheduler counters (names agreed with monitoring)."""
        out: dict[str, float] = dict(getattr(self.sync, "counters", {}))
        if self.scheduler is not None:
            out.update(self.scheduler.metrics())
        return out

    # ------------------------------------------------------------------- loop
    def fit(self, batches: Iterator[dict[str, Any]],
            eval_batches: Callable[[], Iterable[dict[str, Any]]] | None = None
            ) -> dict[str, float]:
        """Train for ``cfg.steps`` optimizer steps; returns the final metrics."""
        cfg = self.cfg
        self.model.train()
        total = cfg.steps if self.expected_steps is None else min(cfg.steps, self.expected_steps)
        bar = tqdm(total=total, initial=self.step, desc="train", unit="step",
                   disable=not (cfg.progress and is_rank_zero()), dynamic_ncols=True)
        metrics: dict[str, float] = {}
        t_log = time.perf_counter()
        samples_at_log = self.counters["samples_total"]
        tokens_at_log = self.counters["tokens_total"]
        start = time.perf_counter()
        self.stop_requested = False
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            batch = next(batches, None)
            # A stream that ends (one chronological pass, no epochs) ends the run;
            # every rank stops at the same step, so no collective is left waiting.
            more = batch is not None
            if not (all_ranks_agree(more) if self.spans_ranks else more):
                if is_rank_zero():
                    log.info("the data ended after step %d: one pass done", self.step)
                break
            assert batch is not None
            out = self.train_step(batch)
            metrics = {**out, **self.counters, **self._engine_metrics(), "step": float(self.step),
                       "step_seconds": time.perf_counter() - t0,
                       "last_step_timestamp": time.time(),
                       "delta_nnz": float(self.last_delta_nnz),
                       "delta_density": self.last_delta_nnz / float(self.state.num_nodes) ** 2}
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.3f}", acc=f"{out['accuracy']:.3f}")
            done = self.step >= cfg.steps
            if eval_batches is not None and (done or (cfg.eval_every and
                                                      self.step % cfg.eval_every == 0)):
                # Evaluate the synced state: every rank then sees the same accuracy
                # and takes the same early-stopping decision.
                self.flush()
                metrics.update(self.evaluate(eval_batches(), cfg.eval_batches))
                if is_rank_zero():
                    log.info("step %d eval accuracy %.4f", self.step, metrics["eval_accuracy"])
                target = cfg.target_accuracy
                if target is not None and metrics["eval_accuracy"] >= target:
                    done = True
            if self.step % cfg.moments_every == 0 or done:
                metrics.update({f"state_{k}": v for k, v in self.state.moments().items()})
            self.hooks.run("on_step", self, metrics)
            done = done or self.stop_requested
            if self.step % cfg.log_every == 0 or done:
                now = time.perf_counter()
                span = max(now - t_log, 1e-9)
                metrics["samples_per_s"] = (self.counters["samples_total"] - samples_at_log) / span
                metrics["tokens_per_s"] = (self.counters["tokens_total"] - tokens_at_log) / span
                t_log, samples_at_log = now, self.counters["samples_total"]
                tokens_at_log = self.counters["tokens_total"]
                if self.sink is not None:
                    self.sink(metrics, self.step)
            if done:
                break
        self.flush()  # the run ends at a sync point
        bar.close()
        metrics["wall_seconds"] = time.perf_counter() - start
        self.hooks.run("on_end", self, metrics)
        return metrics
