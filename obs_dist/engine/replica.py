"""Keeping the local replica in step with the others: deferred commits and checks.

**Deferred commits** (parallel phase). A rank syncs its committed deltas only
every ``K`` windows. Meanwhile its own windows should see what its streams
wrote, so each window's delta is applied to the local replica at once — which
makes the replica differ from the others until the sync. To bring every replica
back to the same bits, the value of every entry touched since the last sync is
saved once, before its first local change; at the sync those entries are
restored and the all-rank sum is applied on top::

    X_after = X_at_last_sync + Σ_ranks coalesce(d_1 + … + d_K)

the same computation, in the same order, on every rank. Restoring costs
O(entries touched); nothing of size N² is copied.

**Checks.** Every ``check_every`` steps each rank's per-partition CRC32 (and one
over the slow weights) is gathered; a mismatch is counted
(``checksum_mismatches_total``), reported to the metrics sink at once and stops
the run with a :class:`ReplicaDivergenceError` naming partitions and ranks.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from obs_dist.engine.collectives import gather_equal
from obs_dist.engine.dist import get_world_size
from obs_dist.model.delta import SparseDelta
from obs_dist.model.sharded_state import ShardedState
from obs_dist.model.state import BigState

log = logging.getLogger("obs.replica")

SLOW_WEIGHTS = "slow weights"


class DeferredCommits:
    """Window deltas applied locally and held back for a later sync.

    Args:
        state: the local replica.
    """

    def __init__(self, state: BigState) -> None:
        self.state = state
        self.pending: list[SparseDelta] = []
        self._saved_keys = torch.empty(0, dtype=torch.int64, device=state.device)  # sorted
        self._saved_vals = torch.empty(0, dtype=state.dtype, device=state.device)

    @property
    def windows(self) -> int:
        """Windows held back since the last sync (empty ones included)."""
        return len(self.pending)

    @property
    def saved_entries(self) -> int:
        """Entries whose pre-sync values are kept for the restore."""
        return int(self._saved_keys.numel())

    def _flat(self) -> torch.Tensor:
        # BigState.full is one contiguous N×N tensor: a flat view indexes it by the
        # int64 key row·N + col (exact for any N < 2**31).
        return self.state.full.view(-1)

    def add(self, delta: SparseDelta) -> None:
        """Apply one window's finite delta locally and keep it for the sync.

        An empty delta still counts as a window, so that every rank reaches the
        sync after the same number of windows.

        Raises:
            ValueError: if the delta holds NaN/inf (filter it before).
        """
        if not delta.all_finite():
            raise ValueError("DeferredCommits.add: delta holds NaN/inf; drop it before adding")
        delta = delta.coalesce().to(self.state.device)
        if delta.nnz:
            keys = delta.flat_keys()
            new = keys[~torch.isin(keys, self._saved_keys)]
            if new.numel():
                merged_keys = torch.cat([self._saved_keys, new])
                merged_vals = torch.cat([self._saved_vals, self._flat()[new]])
                order = torch.argsort(merged_keys)
                self._saved_keys = merged_keys[order]
                self._saved_vals = merged_vals[order]
            self.state.apply(delta)
        self.pending.append(delta)

    def take(self) -> SparseDelta:
        """Restore the saved entries; return the held-back sum (coalesced in window order).

        Afterwards the replica is exactly as at the last sync; the caller syncs
        the returned delta and applies the all-rank sum.
        """
        if self._saved_keys.numel():
            self._flat()[self._saved_keys] = self._saved_vals
        if self.pending:
            total = SparseDelta.cat(self.pending).coalesce()
        else:
            total = SparseDelta.empty(self.state.num_nodes, device=self.state.device)
        self.pending = []
        self._saved_keys = self._saved_keys[:0]
        self._saved_vals = self._saved_vals[:0]
        return total


class ReplicaDivergenceError(RuntimeError):
    """Replicas that must be bit-identical are not."""


def slow_weights_checksum(model: nn.Module) -> int:
    """CRC32 over every parameter's raw bytes, in ``named_parameters`` order."""
    crc = 0
    for _, p in sorted(model.named_parameters()):
        raw = p.detach().contiguous().cpu()
        if raw.dtype == torch.bfloat16:
            raw = raw.view(torch.int16)
        crc = zlib.crc32(raw.numpy().tobytes(), crc)
    return crc & 0xFFFFFFFF


def find_divergence(table: list[list[int]], names: list[str]) -> list[tuple[str, list[int]]]:
    """Items whose checksum is not the same on every rank, and the odd ranks out.

    Args:
        table: ``table[rank][item]`` checksums.
        names: a name per item (``partition 3``, ``slow weights``).

    Returns:
        ``(name, ranks)`` for every diverging item; the reference is the value
        most ranks hold (ties: the value of the lowest rank among the tied ones).
    """
    out = []
    for i, name in enumerate(names):
        values = [row[i] for row in table]
        if len(set(values)) == 1:
            continue
        counts = Counter(values)
        best = max(counts.values())
        reference = next(v for v in values if counts[v] == best)
        out.append((name, [r for r, v in enumerate(values) if v != reference]))
    return out


class ReplicaChecker:
    """``on_step`` hook comparing replica checksums across ranks every ``every`` steps.

    Args:
        state: the local replica of the big state.
        every: steps between checks (0: never).
        model: the slow weights, compared too when given.
        before_check: called first (e.g. the trainer's flush of deferred
            commits: replicas only agree at sync points).
    """

    def __init__(self, state: BigState | ShardedState, every: int,
                 model: nn.Module | None = None,
                 before_check: Callable[[], Any] | None = None) -> None:
        self.state = state
        self.every = every
        self.model = model
        self.before_check = before_check
        self.mismatches = 0
        self.checks = 0
        self.slice_checksums: list[int] = []

    def checksums(self) -> list[int]:
        """This rank's checksums: one per partition, then the slow weights if checked.

        In the sharded layout each rank holds only its own slice: there is no
        replica of it to compare with, so only the slow weights are compared
        and the slice's checksum is kept in :attr:`slice_checksums`.
        """
        if self.state.layout == "replicated":
            sums = self.state.checksums()
        else:
            self.slice_checksums = self.state.checksums()
            sums = []
        if self.model is not None:
            sums.append(slow_weights_checksum(self.model))
        return sums

    def names(self) -> list[str]:
        """What each checksum covers."""
        out = ([f"partition {p}" for p in range(len(self.state.parts))]
               if self.state.layout == "replicated" else [])
        return out + ([SLOW_WEIGHTS] if self.model is not None else [])

    def check(self, step: int) -> list[tuple[str, list[int]]]:
        """Gather every rank's checksums and return the diverging items (a collective)."""
        if self.before_check is not None:
            self.before_check()
        # On the state's device: NCCL gathers CUDA tensors only.
        mine = torch.tensor(self.checksums(), dtype=torch.int64, device=self.state.device)
        table = gather_equal(mine).cpu().tolist()
        self.checks += 1
        return find_divergence(table, self.names())

    def __call__(self, trainer: Any, metrics: dict[str, float]) -> None:
        """The hook: check on schedule; on divergence export the metric and stop."""
        step = int(trainer.step)
        if not self.every or step % self.every:
            metrics["checksum_mismatches_total"] = float(self.mismatches)
            return
        bad = self.check(step)
        self.mismatches += len(bad)
        metrics["checksum_mismatches_total"] = float(self.mismatches)
        if not bad:
            return
        what = "; ".join(f"{name} differs on rank(s) {ranks}" for name, ranks in bad)
        message = (f"replica divergence at step {step} (world {get_world_size()}): {what}. "
                   "Replicas must stay bit-identical; stopping.")
        log.error(message)
        sink = getattr(trainer, "sink", None)
        if sink is not None:
            sink(dict(metrics), step)
        raise ReplicaDivergenceError(message)
