"""``DeltaSync``: sum every rank's committed delta into every replica, bit-identically.

NCCL has no sparse all-reduce (and DeepSpeed's sparse gradients are deprecated),
so the sum is our own collective, built from operations every backend has:

1. **Counts first.** Each rank's delta is coalesced (sorted by row, col), so its
   entries of partition ``p`` are one contiguous run. One ``all_gather`` of the
   ``[P]`` per-partition counts tells every rank every rank's counts.
2. **Per partition, sparse or dense.** Partition ``p`` is summed densely when
   its *gathered density* ``Σ_r nnz_{r,p} / (rows_p · N)`` exceeds
   ``dense_above``; the decision uses the gathered counts only, so every rank
   takes the same one.
3. **Sparse path.** The ``(row, col, value)`` triples of all sparse partitions
   travel in one (padded or exact-split) ``all_gather`` as an int32 ``[n, 3]``
   buffer (values bit-cast). Every rank concatenates the pieces **in rank
   order** and coalesces them with the deterministic
   :meth:`~obs_dist.model.delta.SparseDelta.coalesce`, so every replica adds the same
   values in the same order: the same bits everywhere.
4. **Dense path.** The partition's dense block is summed with
   :func:`~obs_dist.engine.collectives.sum_in_rank_order` (hand-made reduce-scatter in
   rank order + all_gather: each element is summed once, by one rank, and its
   bits are copied to the others — a plain all-reduce gives no such promise).
   Because untouched entries add an exact ``+0.0``, the result equals the sparse
   path's to the bit (entries whose sum is exactly zero are dropped, which
   changes nothing but skips their optional clipping at commit).

Values are sent as fp32 (the state adds in fp32 anyway).

**Sum or mean** (``SyncConfig.combine``, decisions §28). Hebbian writes are
independent associations and add up. The delta rule's writes are corrections
``η (v − X_S k) kᵀ`` that every rank computed against the *same* ``X``: summing
W of them on one entry moves it W times too far, and at W = 4 the state grew
~50× every 25 steps (to 2·10⁸ in 100 steps, where one process stays below 1).
So by default (``auto``) the delta rule's commits take each entry's **mean over
the ranks that wrote it** (the count travels with the values: the sparse path
counts each key's copies, the dense path sums a block of ones beside the
values); an entry one rank wrote gets that rank's full correction.

Bytes per rank: sparse ``(W−1)·nnz·12`` plus ``(W−1)·P·8`` for the counts;
dense ``2·(W−1)/W·rows_p·N·4``. Dense is smaller once the gathered density
passes ``2·4/12 = 2/3`` whatever ``W``; the measured time crossover on CPU
(``obs bench sync``) is lower, because coalescing ``W·nnz`` entries costs a sort
while the dense path streams memory; ``dense_above`` defaults to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from obs_dist.engine.collectives import ByteMeter, gather_equal, gather_uneven, sum_in_rank_order
from obs_dist.engine.dist import get_world_size, is_initialized
from obs_dist.model.delta import INDEX_DTYPE, SparseDelta

# Below this many gathered entries, one coalesce of everything is cheaper than one
# per partition (the result is the same: per key, values keep their rank order).
ONE_SORT_MAX = 1 << 20
# Dense partitions are summed together, up to this many bytes per collective pair
# (fewer round trips for small partitions; bounded extra memory for big ones).
DENSE_GROUP_BYTES = 256 * 2**20
# Measured time crossover (dense faster than sparse) on a 2-core CPU over gloo, N = 16384,
# P = 8: gathered density 0.18 at W = 2 and 0.21 at W = 4 (`obs bench sync`,
# docs/distributed.md); the byte crossover is 2/3.
DEFAULT_DENSE_ABOVE = 0.2
COMBINES = ("auto", "sum", "mean")


@dataclass
class SyncConfig:
    """How committed deltas are summed across ranks and checked.

    Attributes:
        dense_above: gathered density of a partition above which it is summed
            densely (all-to-all + all-gather of the block) instead of as COO triples.
        mode: ``auto`` (per partition by ``dense_above``), or force ``sparse`` / ``dense``.
        parallel_every: K, windows between syncs in the parallel phase (each
            rank applies its own deltas at once and the K-window sum is synced).
        check_every: optimizer steps between replica checksum comparisons (0: never).
        check_slow_weights: also compare the slow weights' checksums across ranks.
        combine: how the ranks' writes to one entry combine: ``sum``, ``mean``
            (over the ranks that wrote it), or ``auto``: ``mean`` for the delta
            rule, ``sum`` for the Hebbian one (see :meth:`combine_for`).
    """

    dense_above: float = DEFAULT_DENSE_ABOVE
    mode: Literal["auto", "sparse", "dense"] = "auto"
    parallel_every: int = 4
    check_every: int = 50
    check_slow_weights: bool = True
    combine: Literal["auto", "sum", "mean"] = "auto"

    def __post_init__(self) -> None:
        if not self.dense_above >= 0:  # NaN too
            raise ValueError(f"dense_above must be >= 0, got {self.dense_above}")
        if self.mode not in ("auto", "sparse", "dense"):
            raise ValueError(f"mode must be auto, sparse or dense, got {self.mode!r}")
        if self.parallel_every < 1:
            raise ValueError(f"parallel_every must be >= 1, got {self.parallel_every}")
        if self.check_every < 0:
            raise ValueError(f"check_every must be >= 0, got {self.check_every}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")

    def combine_for(self, rule: str) -> Literal["sum", "mean"]:
        """How writes of the writer rule ``rule`` combine across ranks.

        Raises:
            ValueError: for an unknown rule under ``auto``.
        """
        if self.combine != "auto":
            return self.combine
        if rule not in ("hebbian", "delta"):
            raise ValueError(f"combine 'auto' knows the rules 'hebbian' and 'delta', got {rule!r}")
        return "mean" if rule == "delta" else "sum"


@dataclass
class SyncStats:
    """What the last sync did (also the cross-rank write-conflict signal)."""

    gathered_nnz: int = 0
    union_nnz: int = 0
    dense_partitions: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0


def coalesced_f32(delta: SparseDelta, num_nodes: int) -> SparseDelta:
    """``delta`` coalesced in fp32 (what every rank sums), after checking its N.

    Raises:
        ValueError: if the delta refers to a state of another size.
    """
    if delta.num_nodes != num_nodes:
        raise ValueError(f"delta is for N={delta.num_nodes}, sync is for N={num_nodes}")
    d = delta.coalesce()
    return d if d.values.dtype == torch.float32 else d.to(dtype=torch.float32)


class DeltaSync:
    """Callable ``sync(delta) -> summed delta`` for :class:`~obs_dist.trainer.Trainer`.

    Args:
        bounds: the state's row-partition offsets ``[0, …, N]``.
        num_nodes: N.
        cfg: thresholds and mode.
        rule: the writer rule whose deltas are combined (``model.writer.rule``):
            resolves ``cfg.combine = "auto"``.
    """

    def __init__(self, bounds: list[int], num_nodes: int, cfg: SyncConfig | None = None,
                 rule: str = "hebbian") -> None:
        if bounds[0] != 0 or bounds[-1] != num_nodes:
            raise ValueError(f"partition bounds must run from 0 to {num_nodes}: {bounds}")
        self.bounds = list(bounds)
        self.num_nodes = num_nodes
        self.cfg = cfg if cfg is not None else SyncConfig()
        self.combine = self.cfg.combine_for(rule)
        self.meter = ByteMeter()
        self.last = SyncStats()
        self.counters: dict[str, float] = {"sync_bytes_total": 0.0, "sync_seconds_total": 0.0,
                                           "sync_calls_total": 0.0,
                                           "sync_dense_partitions_total": 0.0}

    @property
    def partitions(self) -> int:
        """P."""
        return len(self.bounds) - 1

    def _dense_mask(self, totals: list[int]) -> list[bool]:
        mode = self.cfg.mode
        if mode != "auto":
            return [mode == "dense"] * self.partitions
        n = self.num_nodes
        return [totals[p] > self.cfg.dense_above * (self.bounds[p + 1] - self.bounds[p]) * n
                for p in range(self.partitions)]

    def __call__(self, delta: SparseDelta) -> SparseDelta:
        """Combine ``delta`` over all ranks (sum or mean: ``combine``), the same everywhere.

        The result is coalesced, and bit-identical on every rank.

        Every rank must call this the same number of times (it is a collective).

        Raises:
            ValueError: if the delta refers to a state of another size.
        """
        t0 = time.perf_counter()
        sent0 = self.meter.bytes_sent
        d = coalesced_f32(delta, self.num_nodes)
        if get_world_size() == 1 or not is_initialized():
            out = d
            self.last = SyncStats(d.nnz, d.nnz)
        else:
            out = self._sum(d)
        self.last.bytes_sent = self.meter.bytes_sent - sent0
        self.last.seconds = time.perf_counter() - t0
        self.counters["sync_bytes_total"] += self.last.bytes_sent
        self.counters["sync_seconds_total"] += self.last.seconds
        self.counters["sync_calls_total"] += 1
        self.counters["sync_dense_partitions_total"] += self.last.dense_partitions
        return out

    # ---------------------------------------------------------------- internals
    def _sum(self, d: SparseDelta) -> SparseDelta:
        world = get_world_size()
        device = d.values.device
        bounds = torch.tensor(self.bounds, dtype=INDEX_DTYPE, device=device)
        offs = torch.searchsorted(d.rows, bounds)  # rows are sorted: runs per partition
        local_counts = (offs[1:] - offs[:-1]).to(torch.int64)
        counts = gather_equal(local_counts, self.meter).cpu().tolist()  # [W][P]
        totals = [sum(counts[r][p] for r in range(world)) for p in range(self.partitions)]
        dense = self._dense_mask(totals)
        offsets = offs.cpu().tolist()
        results: dict[int, SparseDelta] = {}
        sparse_parts = [p for p in range(self.partitions) if not dense[p]]
        if sparse_parts:
            results.update(self._sum_sparse(d, offsets, counts, sparse_parts))
        group: list[int] = []
        for p in [p for p in range(self.partitions) if dense[p]]:
            if group and self._block_bytes(group + [p]) > DENSE_GROUP_BYTES:
                results.update(dict(self._sum_dense(d, offsets, group)))
                group = []
            group.append(p)
        if group:
            results.update(dict(self._sum_dense(d, offsets, group)))
        pieces = [results[p] for p in range(self.partitions) if results[p].nnz]
        if pieces:
            cat = SparseDelta.cat(pieces)
            out = SparseDelta(cat.rows, cat.cols, cat.values, self.num_nodes, coalesced=True)
        else:
            out = SparseDelta.empty(self.num_nodes, device=device)
        self.last = SyncStats(gathered_nnz=sum(totals), union_nnz=out.nnz,
                              dense_partitions=sum(dense))
        return out

    def _sum_sparse(self, d: SparseDelta, offsets: list[int], counts: list[list[int]],
                    parts: list[int]) -> dict[int, SparseDelta]:
        """All-gather the triples of ``parts`` and coalesce them in rank order."""
        world = len(counts)
        runs = [(offsets[p], offsets[p + 1]) for p in parts]
        if len(parts) == self.partitions:
            sel = slice(offsets[0], offsets[-1])
            rows, cols, vals = d.rows[sel], d.cols[sel], d.values[sel]
        else:
            rows = torch.cat([d.rows[a:b] for a, b in runs])
            cols = torch.cat([d.cols[a:b] for a, b in runs])
            vals = torch.cat([d.values[a:b] for a, b in runs])
        packed = torch.stack([rows, cols, vals.contiguous().view(torch.int32)], dim=1)
        per_rank_counts = [sum(counts[r][p] for p in parts) for r in range(world)]
        got = gather_uneven(packed, per_rank_counts, self.meter)
        total = sum(per_rank_counts)

        def coalesce(chunks: list[torch.Tensor]) -> SparseDelta:
            buf = torch.cat(chunks)
            return SparseDelta(buf[:, 0].contiguous(), buf[:, 1].contiguous(),
                               buf[:, 2].contiguous().view(torch.float32), self.num_nodes
                               ).coalesce(self.combine)

        if total <= ONE_SORT_MAX:
            merged = coalesce(got)
            # Split the (sorted) result back into partitions.
            bounds = torch.tensor(self.bounds, dtype=INDEX_DTYPE, device=merged.rows.device)
            cut = torch.searchsorted(merged.rows, bounds).cpu().tolist()
            return {p: SparseDelta(merged.rows[cut[p]:cut[p + 1]], merged.cols[cut[p]:cut[p + 1]],
                                   merged.values[cut[p]:cut[p + 1]], self.num_nodes,
                                   coalesced=True) for p in parts}
        out: dict[int, SparseDelta] = {}
        starts = [0] * world  # where partition p begins in each rank's chunk
        for p in parts:
            chunks = []
            for r in range(world):
                chunks.append(got[r][starts[r]:starts[r] + counts[r][p]])
                starts[r] += counts[r][p]
            out[p] = coalesce(chunks)
        return out

    def _block_bytes(self, parts: list[int]) -> int:
        rows = sum(self.bounds[p + 1] - self.bounds[p] for p in parts)
        return rows * self.num_nodes * 4 * (2 if self.combine == "mean" else 1)

    def _sum_dense(self, d: SparseDelta, offsets: list[int],
                   parts: list[int]) -> list[tuple[int, SparseDelta]]:
        """Sum partitions ``parts`` as dense blocks (one collective pair), the same everywhere.

        With ``combine = "mean"`` a block of ones marking each rank's entries is
        summed beside the values (one collective, twice the bytes) and divides them.
        """
        n = self.num_nodes
        sizes = [(self.bounds[p + 1] - self.bounds[p]) * n for p in parts]
        total = sum(sizes)
        mean = self.combine == "mean"
        block = torch.zeros(total * (2 if mean else 1), dtype=torch.float32,
                            device=d.values.device)
        start = 0
        for p, size in zip(parts, sizes):
            lo, a, b = self.bounds[p], offsets[p], offsets[p + 1]
            flat = (d.rows[a:b].long() - lo) * n + d.cols[a:b].long() + start
            block[flat] = d.values[a:b]  # coalesced: unique indices, plain stores are exact
            if mean:
                block[flat + total] = 1.0
            start += size
        summed = sum_in_rank_order(block, self.meter)
        if mean:
            summed = summed[:total] / summed[total:].clamp_min(1.0)
        out = []
        start = 0
        for p, size in zip(parts, sizes):
            piece = summed[start:start + size]
            nz = piece.nonzero().squeeze(1)
            out.append((p, SparseDelta((nz // n + self.bounds[p]).to(INDEX_DTYPE),
                                       (nz % n).to(INDEX_DTYPE), piece[nz], n, coalesced=True)))
            start += size
        return out
