"""``PhaseScheduler``: sequential or parallel, decided per window, the same on every rank.

The two phases (DESIGN §4):

* **sequential** — every stream's writes are visible to every stream (on every
  rank) from the next time step on, and the window's deltas are synced at its
  end: one state evolving step by step. Right for continuous data and high
  write conflict; costs a block exchange per step and a sync per window.
* **parallel** — each stream sees only its own writes; deltas are summed at
  commit and synced every ``K`` windows: throughput.

Policies: ``always-sequential``, ``always-parallel`` and ``adaptive`` (the
default). The adaptive policy scores each window from four signals

* the data's declared kind (fraction of streams whose samples say
  ``continuous``; unknown kinds add nothing),
* write conflict — ``1 − (1 − within)(1 − across)`` where ``within`` is
  ``1 − |∪ entries| / Σ_streams |entries|`` over the last window's streams and
  ``across`` the same over ranks at the last sync,
* novelty — how far the last window's loss rose above its running average,
* measured cost — seconds per window of each phase (running averages); the
  score is lowered by ``weight_cost`` per doubling of sequential over parallel,

and switches with hysteresis: to sequential when the score reaches ``enter``, back
to parallel when it falls to ``leave``, never sooner than ``min_windows``
windows after the last switch. With ``max_windows`` set, a phase held that long
gives way to the other for ``min_windows`` windows (a probe): the cost term
compares running averages of both phases' seconds per window, and without a probe
the phase the scheduler settled away from is never timed again.

Identical decisions everywhere: the per-rank signals of a window are gathered
(one small ``all_gather``) and combined in rank order, so every rank computes
the same float64 score from the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from obs_dist.engine.collectives import gather_equal
from obs_dist.engine.dist import get_world_size

SEQUENTIAL = "sequential"
PARALLEL = "parallel"
PHASES = (SEQUENTIAL, PARALLEL)
POLICIES = ("adaptive", "always-sequential", "always-parallel")


@dataclass
class SchedulerConfig:
    """The phase scheduler.

    Attributes:
        policy: ``adaptive``, ``always-sequential`` or ``always-parallel``.
        start: phase of the first window (adaptive policy).
        enter: score at or above which the adaptive policy goes sequential.
        leave: score at or below which it goes back to parallel (``< enter``).
        min_windows: windows to stay in a phase after a switch.
        max_windows: windows after which a phase gives way to the other for
            ``min_windows`` windows, to re-measure its cost (0: never).
        weight_kind: weight of the declared-continuous fraction.
        weight_conflict: weight of the write conflict (saturating at ``conflict_ref``).
        conflict_ref: conflict at which its term reaches its full weight.
        weight_novelty: weight of the loss rise over its running average.
        weight_cost: score lost per doubling of sequential over parallel cost.
        ema: smoothing of the running averages (loss, seconds per phase).
    """

    policy: Literal["adaptive", "always-sequential", "always-parallel"] = "adaptive"
    start: Literal["sequential", "parallel"] = "parallel"
    enter: float = 0.5
    leave: float = 0.25
    min_windows: int = 1
    max_windows: int = 0
    weight_kind: float = 0.6
    weight_conflict: float = 0.5
    conflict_ref: float = 0.4
    weight_novelty: float = 0.2
    weight_cost: float = 0.1
    ema: float = 0.8

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {list(POLICIES)}, got {self.policy!r}")
        if self.start not in PHASES:
            raise ValueError(f"start must be one of {list(PHASES)}, got {self.start!r}")
        if not self.leave < self.enter:
            raise ValueError(f"leave ({self.leave}) must be < enter ({self.enter})")
        if self.min_windows < 1:
            raise ValueError(f"min_windows must be >= 1, got {self.min_windows}")
        if self.max_windows and self.max_windows <= self.min_windows:
            raise ValueError(f"max_windows must be 0 (never probe) or > min_windows "
                             f"({self.min_windows}), got {self.max_windows}")
        for key in ("weight_kind", "weight_conflict", "weight_novelty", "weight_cost"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not self.conflict_ref > 0:
            raise ValueError(f"conflict_ref must be > 0, got {self.conflict_ref}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")


@dataclass
class WindowSignals:
    """What one rank measured in its last window (inputs of the next decision).

    Attributes:
        stream_writes: Σ over streams of the distinct entries each wrote.
        union_writes: distinct entries written by any local stream.
        loss_sum: summed loss over scored positions.
        scored: scored positions.
        seconds: wall time of the window.
    """

    stream_writes: int = 0
    union_writes: int = 0
    loss_sum: float = 0.0
    scored: int = 0
    seconds: float = 0.0


def declared_continuous(batch: dict[str, object]) -> float:
    """Fraction of streams whose samples are declared ``continuous`` (-1: not declared).

    Reads ``batch["kind"]``: a list of ``"continuous"``/``"discrete"`` strings
    (one per stream, as in the shard metadata) or a bool/float tensor ``[B]``.
    """
    kind = batch.get("kind")
    if kind is None:
        return -1.0
    if isinstance(kind, torch.Tensor):
        return float(kind.float().mean()) if kind.numel() else -1.0
    if isinstance(kind, str):
        return 1.0 if kind == "continuous" else 0.0
    if isinstance(kind, (list, tuple)) and kind:
        return sum(1.0 for k in kind if k == "continuous") / len(kind)
    return -1.0


class PhaseScheduler:
    """Decides the phase of each window from signals gathered across ranks.

    Args:
        cfg: policy and thresholds.
        device: where the gathered signals travel (CUDA for NCCL).
    """

    def __init__(self, cfg: SchedulerConfig | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.cfg = cfg if cfg is not None else SchedulerConfig()
        self.device = torch.device(device)
        fixed = {"always-sequential": SEQUENTIAL, "always-parallel": PARALLEL}
        self.phase = fixed.get(self.cfg.policy, self.cfg.start)
        self.since_switch = 0
        self.pending = WindowSignals()
        self.cross_conflict = 0.0
        self.loss_ema: float | None = None
        self.seconds_ema: dict[str, float] = {}
        self.decisions = {SEQUENTIAL: 0, PARALLEL: 0}
        self.last = {"write_conflict": 0.0, "novelty": 0.0, "scheduler_score": 0.0,
                     "cost_ratio": 1.0}

    # ---------------------------------------------------------------- signals
    def observe_window(self, signals: WindowSignals) -> None:
        """Record this rank's measurements of the window that just ended."""
        self.pending = signals

    def observe_sync(self, gathered: int, union: int) -> None:
        """Cross-rank overlap seen by the last delta sync (identical on all ranks)."""
        if gathered > 0:
            self.cross_conflict = 1.0 - union / gathered

    # ---------------------------------------------------------------- deciding
    def decide(self, continuous: float = -1.0) -> str:
        """The phase of the next window (a collective for the adaptive policy).

        Args:
            continuous: this rank's declared-continuous fraction for the next
                window (:func:`declared_continuous`), -1 when not declared.
        """
        if self.cfg.policy != "adaptive":
            self._combine([self._row(continuous)])
            return self._count(self.phase)
        row = torch.tensor(self._row(continuous), dtype=torch.float64, device=self.device)
        table = gather_equal(row).cpu().tolist() if get_world_size() > 1 else [row.tolist()]
        score = self._combine(table)
        cfg = self.cfg
        self.since_switch += 1
        if self.since_switch >= cfg.min_windows:
            if self.phase == PARALLEL and score >= cfg.enter:
                self.phase, self.since_switch = SEQUENTIAL, 0
            elif self.phase == SEQUENTIAL and score <= cfg.leave:
                self.phase, self.since_switch = PARALLEL, 0
            elif cfg.max_windows and self.since_switch >= cfg.max_windows:
                # A probe: the score decides again after min_windows of the other phase.
                other = PARALLEL if self.phase == SEQUENTIAL else SEQUENTIAL
                self.phase, self.since_switch = other, 0
        return self._count(self.phase)

    def _row(self, continuous: float) -> list[float]:
        s = self.pending
        return [continuous, float(s.stream_writes), float(s.union_writes), s.loss_sum,
                float(s.scored), s.seconds]

    def _count(self, phase: str) -> str:
        self.decisions[phase] += 1
        return phase

    def _combine(self, table: list[list[float]]) -> float:
        """Score from every rank's row, combined in rank order (identical everywhere)."""
        cfg = self.cfg
        kinds = [r[0] for r in table if r[0] >= 0]
        kind = sum(kinds) / len(kinds) if kinds else 0.0
        writes = sum(r[1] for r in table)
        union = sum(r[2] for r in table)
        within = 1.0 - union / writes if writes > 0 else 0.0
        conflict = 1.0 - (1.0 - within) * (1.0 - self.cross_conflict)
        scored = sum(r[4] for r in table)
        novelty = 0.0
        if scored > 0:
            loss = sum(r[3] for r in table) / scored
            if self.loss_ema is not None and self.loss_ema > 0:
                novelty = min(max((loss - self.loss_ema) / self.loss_ema, 0.0), 1.0)
            self.loss_ema = loss if self.loss_ema is None else (
                cfg.ema * self.loss_ema + (1 - cfg.ema) * loss)
        seconds = max(r[5] for r in table)  # the slowest rank sets the pace
        if seconds > 0:
            # The window just measured ran in the phase decided before it.
            old = self.seconds_ema.get(self.phase)
            self.seconds_ema[self.phase] = seconds if old is None else (
                cfg.ema * old + (1 - cfg.ema) * seconds)
        ratio = 1.0
        if len(self.seconds_ema) == 2 and self.seconds_ema[PARALLEL] > 0:
            ratio = self.seconds_ema[SEQUENTIAL] / self.seconds_ema[PARALLEL]
        cost = cfg.weight_cost * min(max(math.log2(ratio), 0.0), 2.0) if ratio > 0 else 0.0
        score = (cfg.weight_kind * kind
                 + cfg.weight_conflict * min(conflict / cfg.conflict_ref, 1.0)
                 + cfg.weight_novelty * novelty - cost)
        self.last = {"write_conflict": conflict, "novelty": novelty, "scheduler_score": score,
                     "cost_ratio": ratio}
        self.pending = WindowSignals()
        return score

    # ---------------------------------------------------------------- reporting
    def metrics(self) -> dict[str, float]:
        """Metric names agreed with monitoring: decisions per phase, phase (1 = sequential)."""
        out = {f"scheduler_decisions_total.{p}": float(n) for p, n in self.decisions.items()}
        out["phase"] = 1.0 if self.phase == SEQUENTIAL else 0.0
        out.update(self.last)
        return out

    def state_dict(self) -> dict[str, object]:
        """Phase, counters and running averages (for checkpoints)."""
        return {"phase": self.phase, "since_switch": self.since_switch,
                "decisions": dict(self.decisions), "loss_ema": self.loss_ema,
                "seconds_ema": dict(self.seconds_ema), "cross_conflict": self.cross_conflict,
                # A checkpoint taken between a window and the next decision must
                # keep that window's signals, or the resumed decision differs.
                "pending": asdict(self.pending)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`."""
        self.phase = str(state["phase"])
        self.since_switch = int(state["since_switch"])  # type: ignore[call-overload]
        self.decisions.update(state["decisions"])  # type: ignore[call-overload]
        loss = state["loss_ema"]
        self.loss_ema = None if loss is None else float(loss)  # type: ignore[arg-type]
        self.seconds_ema = dict(state["seconds_ema"])  # type: ignore[call-overload]
        self.cross_conflict = float(state["cross_conflict"])  # type: ignore[arg-type]
        pending = state.get("pending")
        self.pending = WindowSignals(**pending) if isinstance(pending, dict) else WindowSignals()
