"""``ShardedState``: this rank's column slice of the N×N fast state (``state.layout = "sharded"``).

Rank ``r`` of ``W`` owns the columns ``[lo, hi)`` of every row (decisions §5b):
an ``N × (hi − lo)`` tensor, ``1/W`` of the state. Nothing else of ``X`` is held
here; reads of other columns are answered by their owners
(:mod:`obs_dist.engine.shard_reads`) and committed deltas are routed to the owner
of each column (:mod:`obs_dist.engine.shard_sync`) before :meth:`ShardedState.apply`.

The slice holds the same numbers as the same columns of a replicated
:class:`~obs_dist.model.state.BigState` of the same config: the seeded
initialisation draws whole rows in the replicated layout's chunk order and keeps
this rank's columns, and :meth:`ShardedState.apply` does the replicated
arithmetic entry by entry.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch

from obs_dist.model.delta import SparseDelta
from obs_dist.model.state import (
    StateConfig,
    add_entries,
    checked_delta,
    partition_bounds,
    read_entries,
)

INIT_CHUNK_ROWS = 1024  # BigState's chunk of the seeded initialisation (same RNG stream)
DRAW_ROWS = 64  # rows per draw inside a chunk (64·N values: a multiple of 16)
MOMENT_ROWS = 256  # rows upcast to float64 at a time by moments()


class ShardedState:
    """The columns ``[lo, hi)`` of X owned by one rank.

    Args:
        config: size, dtype, initialisation (``layout`` is not read here).
        rank: this rank.
        world: number of ranks W (one column slice each).
        device: where the slice lives.
        init: fill with the seeded Gaussian (False leaves zeros, e.g. before loading).
        all_sum: sums a small float64 tensor over ranks in rank order (the same
            result everywhere; :func:`obs_dist.engine.shard_sync.all_sum`), used by
            :meth:`moments`; None for one process.
    """

    layout = "sharded"

    def __init__(self, config: StateConfig, rank: int, world: int,
                 device: torch.device | str = "cpu", init: bool = True,
                 all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        if world > config.nodes:
            raise ValueError(f"a sharded state of N={config.nodes} cannot have {world} "
                             "column slices")
        self.config = config
        self.num_nodes = config.nodes
        self.dtype = config.torch_dtype
        self.device = torch.device(device)
        self.rank = rank
        self.world = world
        self.all_sum = all_sum
        # Column offsets of every rank's slice, [0, …, N].
        self.col_bounds = partition_bounds(config.nodes, world)
        self.lo, self.hi = self.col_bounds[rank], self.col_bounds[rank + 1]
        self.local = torch.zeros(config.nodes, self.hi - self.lo, dtype=self.dtype,
                                 device=self.device)
        # Checkpoints and checksums work per owned slice: one "partition" here.
        self.parts: list[torch.Tensor] = [self.local]
        self.bounds = [0, config.nodes]
        if init and config.init_std > 0:
            self._initialise()
        self._col_to_owner = torch.tensor(self.col_bounds[1:-1], dtype=torch.int64,
                                          device=self.device)

    def _initialise(self) -> None:
        """The replicated layout's seeded Gaussian, this rank's columns only."""
        cfg = self.config
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        row_bounds = partition_bounds(cfg.nodes, cfg.partitions)
        for p in range(cfg.partitions):
            start, end = row_bounds[p], row_bounds[p + 1]
            for i in range(start, end, INIT_CHUNK_ROWS):
                rows = min(INIT_CHUNK_ROWS, end - i)
                # Drawn in pieces of DRAW_ROWS rows: torch's CPU normal fill works in
                # blocks of 16 values, so consecutive draws of multiples of 16 values
                # continue one stream (tests/test_sharded_state.py checks it), and a
                # rank's temporary is 16× smaller than BigState's chunk.
                for j in range(i, i + rows, DRAW_ROWS):
                    part = min(DRAW_ROWS, i + rows - j)
                    block = torch.randn(part, cfg.nodes, generator=gen, dtype=torch.float32)
                    self.local[j:j + part].copy_(block[:, self.lo:self.hi].mul_(cfg.init_std))

    # ------------------------------------------------------------------ reading
    @property
    def nbytes(self) -> int:
        """Bytes held by this rank's slice."""
        return self.local.numel() * self.local.element_size()

    def owner_of(self, cols: torch.Tensor) -> torch.Tensor:
        """The rank owning each global column."""
        return torch.bucketize(cols.to(torch.int64), self._col_to_owner.to(cols.device),
                               right=True)

    def matrix(self) -> torch.Tensor:
        """This rank's slice ``X[:, lo:hi]`` (no copy)."""
        return self.local

    def local_entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Values ``X[rows[e], cols[e]]`` for global columns owned here."""
        return read_entries(self.local, rows, cols.long() - self.lo)

    # ------------------------------------------------------------------ writing
    def apply(self, delta: SparseDelta) -> None:
        """Add a delta whose columns are all owned here (the routed, summed commit).

        Raises:
            ValueError: if the delta refers to another N, holds NaN/inf or
                touches a column of another rank (the slice is left unchanged).
        """
        d = checked_delta(delta, self.num_nodes, self.device)
        if d.nnz == 0:
            return
        c = d.cols.long()
        if int(c.min()) < self.lo or int(c.max()) >= self.hi:
            raise ValueError(f"rank {self.rank} owns columns [{self.lo}, {self.hi}); the delta "
                             f"touches [{int(c.min())}, {int(c.max())}]: route it first")
        add_entries(self.local, d.rows, c - self.lo, d.values, self.config)

    def load_partition(self, p: int, tensor: torch.Tensor) -> None:
        """Replace the slice (``p`` must be 0; shape must match)."""
        if p != 0 or tensor.shape != self.local.shape:
            raise ValueError(f"slice {p}: shape {tuple(tensor.shape)} != "
                             f"{tuple(self.local.shape)} (rank {self.rank} of {self.world})")
        self.local.copy_(tensor.to(self.dtype))

    # ---------------------------------------------------------------- integrity
    def checksums(self) -> list[int]:
        """CRC32 of this rank's slice (row-major bytes of ``X[:, lo:hi]``)."""
        raw = self.local.detach().contiguous()
        if raw.dtype == torch.bfloat16:
            raw = raw.view(torch.int16)
        return [zlib.crc32(raw.cpu().numpy().data) & 0xFFFFFFFF]

    def moments(self) -> dict[str, float]:
        """Mean, std and excess kurtosis of all N² entries (a collective across ranks)."""
        n = self.num_nodes * self.num_nodes
        s1 = s2 = 0.0
        chunks = [self.local[i:i + MOMENT_ROWS] for i in range(0, self.num_nodes, MOMENT_ROWS)]
        for chunk in chunks:
            x = chunk.double()
            s1 += float(x.sum())
            s2 += float((x * x).sum())
        s1, s2 = self._sum_over_ranks([s1, s2])
        mean = s1 / n
        var = max(s2 / n - mean * mean, 0.0)
        m4 = 0.0
        for chunk in chunks:
            x = chunk.double() - mean
            m4 += float((x * x).square().sum())
        (m4,) = self._sum_over_ranks([m4])
        kurt = (m4 / n) / (var * var) - 3.0 if var > 0 else 0.0
        return {"mean": mean, "std": math.sqrt(var), "kurtosis": kurt}

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        if self.all_sum is None:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return [float(v) for v in self.all_sum(t)]


def slice_bytes(nodes: int, world: int, dtype_bits: int) -> int:
    """Bytes of the largest rank's column slice of an N×N state split over ``world`` ranks."""
    widest = math.ceil(nodes / world)
    return nodes * widest * dtype_bits // 8
