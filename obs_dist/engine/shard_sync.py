"""Writes of the sharded layout: committed triples routed to the owner of their column.

In ``state.layout = "sharded"`` (decisions §5b) each rank owns a column slice of
``X``. A committed delta is summed over ranks *at the owners*:

1. each rank coalesces its delta (sorted by row, col) and orders its entries by
   the owner of their column (a stable sort, so each owner's run keeps the
   delta's order);
2. **counts first**: one ``all_to_all`` of ``[W]`` entry counts;
3. the ``(row, col, value)`` triples travel in one ``all_to_all_single`` with
   exact splits as an int32 ``[n, 3]`` buffer (values bit-cast);
4. every owner concatenates what it received **in rank order** and coalesces it
   with the deterministic :meth:`~obs_dist.model.delta.SparseDelta.coalesce`.

With ``combine = "mean"`` (the delta rule's default, decisions §28) the owner
divides each entry's sum by the number of ranks that sent it. Per entry this is
the sum (or mean) the replicated :class:`~obs_dist.engine.sync.DeltaSync`
computes (the same values, added in rank order), so the owner's slice gets the
same bits a replica's columns would. Bytes per rank: ``12`` per entry sent to
another owner, plus ``8·(W−1)`` for the counts: ``≈ (W−1)/W · nnz · 12``, a
``W``-th of the replicated all-gather's ``(W−1) · nnz · 12``.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as torch_dist

from obs_dist.engine.collectives import ByteMeter, gather_equal
from obs_dist.engine.dist import get_rank, get_world_size, is_initialized
from obs_dist.engine.sync import SyncConfig, SyncStats, coalesced_f32
from obs_dist.model.delta import INDEX_DTYPE, SparseDelta
from obs_dist.model.sharded_state import ShardedState


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of a small tensor over ranks in rank order (same bits everywhere)."""
    if get_world_size() == 1 or not is_initialized():
        return t.clone()
    everyone = gather_equal(t)
    acc = torch.zeros_like(t)
    for r in range(everyone.shape[0]):
        acc = acc + everyone[r]
    return acc


def route(t: torch.Tensor, counts_out: list[int], meter: ByteMeter | None = None
          ) -> tuple[torch.Tensor, list[int]]:
    """Send rows of ``t`` to ranks: the first ``counts_out[0]`` to rank 0, and so on.

    Counts first (``all_to_all`` of ``[W]`` int64), then the rows with exact
    splits. Every backend has ``all_to_all_single`` (gloo and NCCL).

    Args:
        t: ``[n, ...]`` rows, grouped by destination rank in rank order.
        counts_out: rows for each destination rank (sums to ``n``).
        meter: accounts the bytes this rank sends to other ranks.

    Returns:
        ``(received rows in source-rank order, rows received from each rank)``.
    """
    world = get_world_size() if is_initialized() else 1
    if len(counts_out) != world or sum(counts_out) != t.shape[0]:
        raise ValueError(f"route: counts {counts_out} do not split {t.shape[0]} rows over "
                         f"{world} ranks")
    if world == 1:
        return t, [t.shape[0]]
    send_counts = torch.tensor(counts_out, dtype=torch.int64, device=t.device)
    recv_counts = torch.empty_like(send_counts)
    torch_dist.all_to_all_single(recv_counts, send_counts)
    if meter is not None:
        meter.add("all_to_all", 8 * (world - 1))
    counts_in = [int(c) for c in recv_counts.cpu().tolist()]
    return route_known(t, counts_out, counts_in, meter), counts_in


def route_known(t: torch.Tensor, counts_out: list[int], counts_in: list[int],
                meter: ByteMeter | None = None) -> torch.Tensor:
    """:func:`route` when both sides already know the counts (one ``all_to_all``).

    Args:
        t: ``[n, ...]`` rows, grouped by destination rank in rank order.
        counts_out: rows for each destination rank.
        counts_in: rows this rank receives from each rank.
        meter: accounts the bytes this rank sends to other ranks.
    """
    world = get_world_size() if is_initialized() else 1
    if world == 1:
        return t
    rank = get_rank()
    recv = t.new_empty((sum(counts_in), *t.shape[1:]))
    torch_dist.all_to_all_single(recv, t.contiguous(), output_split_sizes=list(counts_in),
                                 input_split_sizes=list(counts_out))
    if meter is not None:
        row_bytes = t[:1].numel() * t.element_size()
        meter.add("all_to_all", (t.shape[0] - counts_out[rank]) * row_bytes)
    return recv


def split_counts(owner: torch.Tensor, world: int) -> list[int]:
    """How many of the (owner-sorted) entries go to each rank."""
    return [int(c) for c in torch.bincount(owner, minlength=world).cpu().tolist()]


class ShardedDeltaSync:
    """Callable ``sync(delta) -> this owner's summed delta`` for the sharded layout.

    The result holds global indices, only of columns this rank owns: what
    :meth:`~obs_dist.model.sharded_state.ShardedState.apply` takes.

    Args:
        state: this rank's slice (column bounds, owners).
        cfg: the sync settings (``parallel_every``, ``combine`` and checks; the
            dense path of the replicated sync has no counterpart: each entry
            goes to one owner).
        rule: the writer rule (resolves ``cfg.combine = "auto"``).
    """

    def __init__(self, state: ShardedState, cfg: SyncConfig | None = None,
                 rule: str = "hebbian") -> None:
        self.state = state
        self.num_nodes = state.num_nodes
        self.cfg = cfg if cfg is not None else SyncConfig()
        self.combine = self.cfg.combine_for(rule)
        self.meter = ByteMeter()
        self.last = SyncStats()
        self.routed_sent = 0  # committed entries sent to another owner
        self.counters: dict[str, float] = {"sync_bytes_total": 0.0, "sync_seconds_total": 0.0,
                                           "sync_calls_total": 0.0,
                                           "sync_dense_partitions_total": 0.0}

    def __call__(self, delta: SparseDelta) -> SparseDelta:
        """Route ``delta``'s entries to their owners and sum them there (a collective).

        Raises:
            ValueError: if the delta refers to a state of another size.
        """
        t0 = time.perf_counter()
        sent0 = self.meter.bytes_sent
        d = coalesced_f32(delta, self.num_nodes)
        world = get_world_size() if is_initialized() else 1
        owner = self.state.owner_of(d.cols)
        self.routed_sent += int((owner != self.state.rank).sum())
        order = torch.sort(owner, stable=True).indices
        packed = torch.stack([d.rows[order], d.cols[order],
                              d.values[order].contiguous().view(torch.int32)], dim=1)
        got, counts_in = route(packed, split_counts(owner, world), self.meter)
        merged = SparseDelta(got[:, 0].contiguous(), got[:, 1].contiguous(),
                             got[:, 2].contiguous().view(torch.float32), self.num_nodes
                             ).coalesce(self.combine)
        totals = all_sum(torch.tensor([sum(counts_in), merged.nnz], dtype=torch.int64,
                                      device=d.values.device))
        self.last = SyncStats(gathered_nnz=int(totals[0]), union_nnz=int(totals[1]))
        self.last.bytes_sent = self.meter.bytes_sent - sent0
        self.last.seconds = time.perf_counter() - t0
        self.counters["sync_bytes_total"] += self.last.bytes_sent
        self.counters["sync_seconds_total"] += self.last.seconds
        self.counters["sync_calls_total"] += 1
        assert merged.rows.dtype == INDEX_DTYPE
        return merged


class ShardedDeferredCommits:
    """The parallel phase's held-back windows in the sharded layout (no local apply).

    The replicated layout applies a rank's windows to its replica at once and
    restores the touched entries at the sync (:class:`~obs_dist.engine.replica.DeferredCommits`).
    Here the rank does not hold the columns it wrote, so the windows are kept as
    a sparse overlay that the rank's own reads add (:meth:`held`), and
    :meth:`take` returns their sum for the sync: the same
    ``coalesce(d_1 + … + d_K)`` the replicated layout syncs.

    Args:
        state: this rank's slice (for its device and N).
    """

    def __init__(self, state: ShardedState) -> None:
        self.state = state
        self.pending: list[SparseDelta] = []
        self._held: SparseDelta | None = None

    @property
    def windows(self) -> int:
        """Windows held back since the last sync (empty ones included)."""
        return len(self.pending)

    @property
    def saved_entries(self) -> int:
        """Entries kept for a restore: none (nothing is applied before the sync)."""
        return 0

    def add(self, delta: SparseDelta) -> None:
        """Hold one window's finite delta back for the sync.

        Raises:
            ValueError: if the delta holds NaN/inf (filter it before).
        """
        if not delta.all_finite():
            raise ValueError("ShardedDeferredCommits.add: delta holds NaN/inf; drop it before")
        self.pending.append(delta.coalesce().to(self.state.device))
        self._held = None

    def held(self) -> SparseDelta | None:
        """The held-back windows' coalesced sum (None when nothing is held)."""
        if not self.pending:
            return None
        if self._held is None:
            self._held = SparseDelta.cat(self.pending).coalesce()
        return self._held

    def take(self) -> SparseDelta:
        """The held-back sum (coalesced in window order); nothing is held afterwards."""
        total = self.held()
        self.pending = []
        self._held = None
        return total if total is not None else SparseDelta.empty(self.state.num_nodes,
                                                                 device=self.state.device)
