"""Reads of the sharded layout, computed where the columns live.

Two collectives serve :class:`~obs_dist.model.sharded_window.ShardedWindowMemory`
(decisions §5b); every rank calls them at the same points of its windows:

* :meth:`ShardReader.top_candidates` — the propagation read
  ``h = Σ_i w_i X[S_i, :] + local`` followed by top-m. Every rank's ``(S, w)``
  reaches every owner (one ``all_gather``), and so does the requester's *local
  part* (window blocks, held-back commits) at the owner's columns only
  (``all_to_all``, counts first). Each owner computes its columns of ``h``
  exactly, the same ``embedding_bag`` as the replicated layout, adds the local
  part, and returns to each requester its top-m columns, their values and the
  ``k × m`` base entries ``X[S_i, j]`` (for the gradient), in one ``all_to_all``.
  The global top-m is among the ``W·m`` candidates: the read is exact.
* :meth:`ShardReader.fetch_entries` — single entries ``X[r, c]`` from their
  owners (the delta rule's ``X[S, S]``, the Gaussian penalty's base values).

Only collectives NCCL also has are used (``all_gather_into_tensor``,
``all_to_all_single``). Bytes are accounted in :attr:`ShardReader.meter`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from obs_dist.engine.collectives import ByteMeter, gather_equal
from obs_dist.engine.dist import get_rank, get_world_size, is_initialized
from obs_dist.engine.shard_sync import route, split_counts
from obs_dist.model.sharded_state import ShardedState


class ShardReader:
    """This rank's side of the sharded reads (requester and owner at once).

    Args:
        state: this rank's column slice.
        meter: accounts bytes sent (default: a fresh one).
    """

    def __init__(self, state: ShardedState, meter: ByteMeter | None = None) -> None:
        self.state = state
        self.meter = meter if meter is not None else ByteMeter()
        self.reads = 0

    @property
    def world(self) -> int:
        """W (1 outside a process group)."""
        return get_world_size() if is_initialized() else 1

    def _everyone(self, t: torch.Tensor) -> torch.Tensor:
        """``[W, *t.shape]`` of every rank's ``t`` (rank order)."""
        if self.world == 1:
            return t[None]
        return gather_equal(t, self.meter)

    def _route_local_part(self, local: torch.Tensor | None, bsz: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Send the requester's non-zero local-part values to the owners of their columns.

        Returns:
            What this owner received: global stream index ``W·B``-major, local
            column, value (the requester's rank times ``B`` plus its stream).
        """
        device = self.state.device
        if local is None:
            streams = torch.empty(0, dtype=torch.int64, device=device)
            cols = torch.empty(0, dtype=torch.int64, device=device)
            vals = torch.empty(0, dtype=torch.float32, device=device)
        else:
            streams, cols = local.nonzero(as_tuple=True)
            vals = local[streams, cols]
        owner = self.state.owner_of(cols)
        order = torch.sort(owner, stable=True).indices
        rank = get_rank() if self.world > 1 else 0
        index = torch.stack([streams[order] + rank * bsz, cols[order]], 1)
        counts = split_counts(owner, self.world)
        got_index, _ = route(index, counts, self.meter)
        got_vals, _ = route(vals[order].contiguous(), counts, self.meter)
        return got_index[:, 0], got_index[:, 1] - self.state.lo, got_vals

    def top_candidates(self, rows: torch.Tensor, weights: torch.Tensor,
                       local: torch.Tensor | None, m: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every owner's top-m columns of ``h = Σ_i w_i X[S_i, :] + local`` (a collective).

        Args:
            rows: ``[B, k]`` the selected nodes ``S`` of each stream.
            weights: ``[B, k]`` their coefficients (detached; gradients are the caller's).
            local: ``[B, N]`` the requester's exact additive part (window blocks,
                held-back commits; None when empty), detached.
            m: candidates wanted per owner (at most its slice width).

        Returns:
            ``(ids [B, W·m'] int64 global columns, values [B, W·m'] of h there,
            base entries [B, k, W·m'] = X[S_i, ids])``, owner-major.
        """
        self.reads += 1
        state = self.state
        bsz, k = rows.shape
        world = self.world
        dt = state.dtype
        all_rows = self._everyone(rows.long().contiguous()).reshape(world * bsz, k)
        all_w = self._everyone(weights.contiguous()).reshape(world * bsz, k)
        streams, cols, vals = self._route_local_part(local, bsz)
        h = F.embedding_bag(all_rows, state.local, per_sample_weights=all_w.to(dt), mode="sum")
        h = h.to(weights.dtype)
        if vals.numel():
            extra = torch.zeros_like(h)
            extra[streams, cols] = vals.to(h.dtype)
            h = h + extra
        width = min(m, state.hi - state.lo)
        top_vals, top_idx = h.topk(width, dim=1)  # [W·B, m']
        base = state.local[all_rows[:, :, None], top_idx[:, None, :]]  # [W·B, k, m']
        payload = torch.cat([top_vals[:, None, :], base.to(weights.dtype)], 1)  # [W·B, 1+k, m']
        ids = top_idx + state.lo
        if world > 1:
            counts = [bsz] * world
            ids, _ = route(ids, counts, self.meter)
            payload, _ = route(payload, counts, self.meter)
        # [W(owner), B, ...] → [B, ..., W·m']
        ids = ids.view(world, bsz, width).permute(1, 0, 2).reshape(bsz, world * width)
        payload = payload.view(world, bsz, 1 + k, width).permute(1, 2, 0, 3)
        payload = payload.reshape(bsz, 1 + k, world * width)
        return ids, payload[:, 0], payload[:, 1:]

    def fetch_entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Values ``X[rows[e], cols[e]]`` from their owners (a collective), in the state dtype.

        Args:
            rows: ``[E]`` global rows (any integer dtype).
            cols: ``[E]`` global columns.
        """
        rows = rows.reshape(-1).long()
        cols = cols.reshape(-1).long()
        owner = self.state.owner_of(cols)
        order = torch.sort(owner, stable=True).indices
        counts = split_counts(owner, self.world)
        asked, counts_in = route(torch.stack([rows[order], cols[order]], 1), counts, self.meter)
        answer = self.state.local_entries(asked[:, 0], asked[:, 1]).contiguous()
        if self.world > 1:
            answer, _ = route(answer, counts_in, self.meter)
        out = torch.empty_like(answer)
        out[order] = answer
        return out
