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
import torch.distributed as torch_dist
import torch.nn.functional as F

from obs_dist.engine.collectives import ByteMeter, gather_equal
from obs_dist.engine.dist import get_rank, get_world_size, is_initialized
from obs_dist.engine.shard_sync import route, route_known, split_counts
from obs_dist.model.sharded_state import ShardedState
from obs_dist.model.window import entries_at


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
        self.local_sent = 0  # local-part entries sent to other owners (the bound's L)

    @property
    def world(self) -> int:
        """W (1 outside a process group)."""
        return get_world_size() if is_initialized() else 1

    def _everyone(self, t: torch.Tensor) -> torch.Tensor:
        """``[W, *t.shape]`` of every rank's ``t`` (rank order)."""
        if self.world == 1:
            return t[None]
        return gather_equal(t, self.meter)

    def _local_triples(self, local: torch.Tensor | None, bsz: int
                       ) -> tuple[torch.Tensor, list[int]]:
        """The requester's non-zero local-part values, owner-sorted, and the count per owner.

        Int32 ``(stream over all ranks, column, value bits)`` triples, 12 bytes an entry.
        """
        device = self.state.device
        bounds = self.state.col_bounds
        streams, cols, vals, counts = [], [], [], []
        # Slice by slice, so the triples come out owner-major (no sort).
        for owner in range(self.world):
            if local is None:
                s = c = torch.empty(0, dtype=torch.int64, device=device)
                v = torch.empty(0, dtype=torch.float32, device=device)
            else:
                piece = local[:, bounds[owner]:bounds[owner + 1]]
                s, c = piece.nonzero(as_tuple=True)
                v = piece[s, c].float()
                c = c + bounds[owner]
            streams.append(s)
            cols.append(c)
            vals.append(v)
            counts.append(int(s.numel()))
        rank = get_rank() if self.world > 1 else 0
        self.local_sent += sum(counts) - counts[rank]
        packed = torch.stack([(torch.cat(streams) + rank * bsz).to(torch.int32),
                              torch.cat(cols).to(torch.int32),
                              torch.cat(vals).contiguous().view(torch.int32)], 1)
        return packed, counts

    def top_candidates(self, rows: torch.Tensor, weights: torch.Tensor,
                       local: torch.Tensor | None, m: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every owner's top-m columns of ``h = Σ_i w_i X[S_i, :] + local`` (a collective).

        Three collectives: one ``all_gather`` of every rank's ``(S, w)`` (int32 ids
        and fp32 coefficient bits, ``8·k`` bytes a stream) with its local-part
        counts per owner (``4·W`` bytes), the local part's triples
        (``all_to_all``), and one ``all_to_all`` of the answers (int32 id bits,
        value and ``k`` base entries: ``4·(2+k)`` bytes a candidate).

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
        triples, counts = self._local_triples(local, bsz)
        # One all_gather: (S, w bits) of every stream, and how many local-part
        # triples each rank sends to each owner (so no counts round of their own).
        ask = torch.cat([rows.to(torch.int32).reshape(-1),
                         weights.float().contiguous().view(torch.int32).reshape(-1),
                         torch.tensor(counts, dtype=torch.int32, device=rows.device)])
        asked = self._everyone(ask.contiguous())  # [W, B·2k + W]
        all_rows = asked[:, :bsz * k].reshape(world * bsz, k).long()
        all_w = asked[:, bsz * k:2 * bsz * k].contiguous().view(torch.float32)
        all_w = all_w.reshape(world * bsz, k)
        me = get_rank() if world > 1 else 0
        counts_in = [int(c) for c in asked[:, 2 * bsz * k + me].cpu().tolist()]
        got = route_known(triples, counts, counts_in, self.meter)
        streams, cols = got[:, 0].long(), got[:, 1].long() - state.lo
        vals = got[:, 2].contiguous().view(torch.float32)
        h = F.embedding_bag(all_rows, state.local, per_sample_weights=all_w.to(dt), mode="sum")
        h = h.to(weights.dtype)
        if vals.numel():  # (stream, column) pairs are unique: h[s, c] + v, as a dense add
            h.index_put_((streams, cols), vals.to(h.dtype), accumulate=True)
        width = min(m, state.hi - state.lo)
        top_vals, top_idx = h.topk(width, dim=1)  # [W·B, m']
        base = entries_at(state.local, all_rows, top_idx)  # [W·B, k, m']
        ids = (top_idx + state.lo).to(torch.int32).view(torch.float32)
        answer = torch.cat([ids[:, None, :], top_vals.float()[:, None, :],
                            base.float()], 1).contiguous()  # [W·B, 2+k, m']
        if world > 1:
            got = torch.empty_like(answer)
            torch_dist.all_to_all_single(got, answer)
            self.meter.add("all_to_all", (world - 1) * bsz * answer[0].numel() * 4)
            answer = got
        # [W(owner), B, 2+k, m'] → [B, 2+k, W·m']
        answer = answer.view(world, bsz, 2 + k, width).permute(1, 2, 0, 3)
        answer = answer.reshape(bsz, 2 + k, world * width)
        ids_out = answer[:, 0].contiguous().view(torch.int32).long()
        return (ids_out, answer[:, 1].to(weights.dtype),
                answer[:, 2:].to(weights.dtype))

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
