"""``ShardedWindowMemory``: the window's exact view of X when X is sharded by columns.

The same window as :class:`~obs_dist.model.window.WindowMemory` — the window's own
blocks (and, in the sequential phase, the other streams' and ranks' blocks) are
kept locally, exact and in the autograd graph — but the committed base ``X`` is
not here: this rank holds only its column slice. Reads of the base go through a
:class:`ShardReads` object (:class:`~obs_dist.engine.shard_reads.ShardReader`), a
collective, so every rank must read at the same points of its windows.

:meth:`ShardedWindowMemory.read` returns the dense ``[B, N]`` propagation ``h``
that the model's ``top_m`` expects, with ``-inf`` outside the ``W·m`` candidates
the owners returned. The global top-m is always among them (decisions §5b), so
``h.topk(m)`` picks exactly what it picks in the replicated layout. Each
candidate's value is the owner's exact float; its gradient flows through the
returned base entries ``X[S_i, j]`` (coefficients) and the local part (blocks).

A rank's *held-back commits* of the parallel phase (``overlay``: windows applied
locally in the replicated layout, not yet synced) are part of what this rank
reads, as in the replicated layout; they are added to the local part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from obs_dist.model.delta import SparseDelta
from obs_dist.model.window import Exchange, WindowMemory, combine_rows, pick


class ShardReads(Protocol):
    """The collectives a sharded window reads through."""

    def top_candidates(self, rows: torch.Tensor, weights: torch.Tensor,
                       local: torch.Tensor | None, m: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def fetch_entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor: ...


Overlay = Callable[[], SparseDelta | None]


class ShardedWindowMemory(WindowMemory):
    """A window over this rank's column slice; reads of the base are collectives.

    Args:
        base: this rank's slice ``X[:, lo:hi]`` (``[N, N/W]``; only its row count is used here).
        batch: number of streams B.
        reads: the sharded read collectives.
        candidates: m, the most active nodes the model keeps (each owner returns m).
        shared: sequential phase (see :class:`WindowMemory`).
        exchange: the sequential phase's per-step block exchange across ranks.
        overlay: returns this rank's held-back commits (parallel phase), or None.
    """

    def __init__(self, base: torch.Tensor, batch: int, reads: ShardReads, candidates: int,
                 shared: bool = False, exchange: Exchange | None = None,
                 overlay: Overlay | None = None) -> None:
        super().__init__(base, batch, shared=shared, exchange=exchange)
        self.reads = reads
        self.candidates = candidates
        self.overlay = overlay
        self._held: SparseDelta | None = overlay() if overlay is not None else None
        if self._held is not None:
            self._held = None if self._held.nnz == 0 else self._held.coalesce()
        # Where each row's entries begin in the (row-sorted) held-back commits.
        self._held_start = (None if self._held is None else torch.searchsorted(
            self._held.rows.long(), torch.arange(self.num_nodes + 1, device=base.device)))

    def carry(self, shared: bool | None = None, exchange: Exchange | None = None
              ) -> ShardedWindowMemory:
        """A memory for the next window of the same sequences: blocks detached."""
        out = ShardedWindowMemory(self.base, self.batch, self.reads, self.candidates,
                                  self.shared if shared is None else shared, exchange,
                                  self.overlay)
        out._carry_blocks(self)
        return out

    # ------------------------------------------------------------------ reading
    def _held_part(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        """``Σ_i weights[b,i] · P[rows[b,i], :]`` of the held-back commits ``P``, ``[B, N]``.

        ``P`` is coalesced (sorted by row), so each selected row's entries are one
        contiguous range (:attr:`_held_start`): the cost is the entries of the
        ``B·k`` rows read, not ``B`` times every held entry. (A dense
        ``[B, nnz]`` product grew with the square of the streams: ``P`` holds
        every stream's windows.)
        """
        held = self._held
        if held is None:
            return None
        start = self._held_start
        assert start is not None
        bsz, k = rows.shape
        # Rows in ascending order within each stream, so every column sums its
        # entries in the held-back commits' own (row-major) order, as a scatter
        # over all of P would: the same float result, bit for bit.
        rows, order = rows.long().sort(dim=1)
        weights = weights.gather(1, order)
        flat = rows.reshape(-1)
        first = start.index_select(0, flat)
        length = start.index_select(0, flat + 1) - first
        total = int(length.sum())
        if total == 0:
            return None
        which = torch.repeat_interleave(length)  # the (stream, i) of each entry read
        shift = first - (torch.cumsum(length, 0) - length)
        pos = torch.arange(total, device=rows.device) + shift.index_select(0, which)
        contrib = (weights.reshape(-1).index_select(0, which)
                   * held.values.index_select(0, pos).to(weights.dtype))
        target = (which // k) * self.num_nodes + held.cols.long().index_select(0, pos)
        out = weights.new_zeros(bsz * self.num_nodes).index_add(0, target, contrib)
        return out.view(bsz, self.num_nodes)

    def _local_part(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        window = self._window_part(rows, weights)
        held = self._held_part(rows, weights)
        if held is None:
            return window
        return held if window is None else window + held

    def read(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``h[b] = Σ_i weights[b,i] · X_eff[rows[b,i], :]``, ``-inf`` outside the candidates."""
        local = self._local_part(rows, weights)
        ids, values, base = self.reads.top_candidates(
            rows, weights.detach(), None if local is None else local.detach(), self.candidates)
        # The owner's exact value, with the gradient of Σ_i w_i X[S_i, j] + local_j.
        grad_path = combine_rows(weights, base)
        if local is not None:
            grad_path = grad_path + pick(local, ids)
        h_cand = values.to(weights.dtype) + (grad_path - grad_path.detach())
        h = torch.full((rows.shape[0], self.num_nodes), float("-inf"), dtype=weights.dtype,
                       device=weights.device)
        return h.scatter(1, ids, h_cand)

    def read_top(self, rows: torch.Tensor, weights: torch.Tensor, m: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-``m`` of :meth:`read` (already read at the owners' candidates only)."""
        return self.read(rows, weights).topk(m, dim=1)

    def _base_entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``X[rows, cols]`` as the replicated layout's base holds it (held-back commits added)."""
        shape = rows.shape
        r, c = rows.reshape(-1).long(), cols.reshape(-1).long()
        vals = self.reads.fetch_entries(r, c)
        held = self._held
        if held is not None and vals.numel():
            keys = held.flat_keys()  # coalesced: sorted, unique
            want = r * self.num_nodes + c
            pos = torch.searchsorted(keys, want).clamp_(max=keys.numel() - 1)
            hit = keys[pos] == want
            # The replicated layout rounds X + P into the state dtype once (BigState.apply).
            added = (vals.float() + held.values[pos].float()).to(vals.dtype)
            vals = torch.where(hit, added, vals)
        return vals.reshape(shape)

    def read_entries(self, rows: torch.Tensor, weights: torch.Tensor,
                     cols: torch.Tensor) -> torch.Tensor:
        """``p[b, q] = Σ_i weights[b,i] · X_eff[rows[b,i], cols[b,q]]`` as ``[B, Q]``."""
        r = rows.long()[:, :, None].expand(-1, -1, cols.shape[1])
        c = cols.long()[:, None, :].expand(-1, rows.shape[1], -1)
        base = self._base_entries(r, c)  # [B, k, Q]
        p = combine_rows(weights, base)
        window = self._window_part(rows, weights)
        return p if window is None else p + window.gather(1, cols.long())

    def column_mass(self) -> torch.Tensor:
        """Not available: it needs every column of X (the av-stream model; refused by config)."""
        raise ValueError("column_mass needs the whole state; state.layout = 'sharded' does not "
                         "support it (task.name = 'av-stream')")

    def gaussian_penalty(self, init_std: float) -> torch.Tensor:
        """As :meth:`WindowMemory.gaussian_penalty`, with the base values fetched from owners."""
        rows, cols, vals = self.entries()
        if vals.numel() < 2 or init_std <= 0:
            # Every rank must still take part in the fetch it would otherwise make.
            self.reads.fetch_entries(rows[:0], cols[:0])
            return vals.sum() * 0.0
        keys = rows.long() * self.num_nodes + cols.long()
        uniq, inverse = torch.unique(keys, return_inverse=True)
        summed = torch.zeros(uniq.numel(), dtype=vals.dtype, device=vals.device)
        summed = summed.index_add(0, inverse, vals)
        base = self._base_entries(uniq // self.num_nodes, uniq % self.num_nodes)
        new = base.to(vals.dtype) + summed
        return (new.mean() / init_std) ** 2 + (new.std() / init_std - 1.0) ** 2
