"""``SparseDelta``: a set of changes to the big state in COO form.

Indices are ``(int32 row, int32 col)``: a flat ``row * N + col`` index overflows
int32 past N = 46,340, and int64 pairs would double what is sent across ranks.
Internally, sorting uses an int64 key (exact for any N < 2**31).

Coalescing sums duplicate entries in one fixed order (sorted by row, then col;
duplicates summed in their order of appearance after a *stable* sort), so every
process that coalesces the same concatenation gets bit-identical values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INDEX_DTYPE = torch.int32
MAX_NODES = 2**31 - 1


@dataclass
class SparseDelta:
    """Changes ``X[rows[e], cols[e]] += values[e]`` to an N×N state.

    Attributes:
        rows: int32 row indices, shape ``[nnz]``.
        cols: int32 column indices, shape ``[nnz]``.
        values: the amounts (floating point), shape ``[nnz]``.
        num_nodes: N, the side of the state the indices refer to.
        coalesced: True when indices are sorted and unique.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    num_nodes: int
    coalesced: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.num_nodes <= MAX_NODES:
            raise ValueError(f"num_nodes must be in [1, {MAX_NODES}], got {self.num_nodes}")
        if self.rows.dtype != INDEX_DTYPE or self.cols.dtype != INDEX_DTYPE:
            raise ValueError(
                f"SparseDelta indices must be int32, got rows={self.rows.dtype} "
                f"cols={self.cols.dtype}"
            )
        if not self.values.is_floating_point():
            raise ValueError(f"SparseDelta values must be floating point, got {self.values.dtype}")
        n = self.values.numel()
        if self.rows.shape != (n,) or self.cols.shape != (n,) or self.values.shape != (n,):
            raise ValueError(
                "SparseDelta rows, cols and values must be 1-D of equal length, got "
                f"{tuple(self.rows.shape)}, {tuple(self.cols.shape)}, {tuple(self.values.shape)}"
            )

    # ------------------------------------------------------------------ builders
    @classmethod
    def empty(
        cls,
        num_nodes: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> SparseDelta:
        """A delta with no entries."""
        idx = torch.empty(0, dtype=INDEX_DTYPE, device=device)
        vals = torch.empty(0, dtype=dtype, device=device)
        return cls(idx, idx.clone(), vals, num_nodes, coalesced=True)

    @classmethod
    def from_indices(
        cls, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, num_nodes: int
    ) -> SparseDelta:
        """Build from index tensors of any integer dtype, checking their range.

        Raises:
            ValueError: if an index lies outside ``[0, num_nodes)``.
        """
        rows = rows.reshape(-1)
        cols = cols.reshape(-1)
        if rows.numel():
            lo = min(int(rows.min()), int(cols.min()))
            hi = max(int(rows.max()), int(cols.max()))
            if lo < 0 or hi >= num_nodes:
                raise ValueError(f"delta index out of range [0, {num_nodes}): min {lo}, max {hi}")
        return cls(
            rows.to(INDEX_DTYPE), cols.to(INDEX_DTYPE), values.reshape(-1), num_nodes
        )

    @classmethod
    def cat(cls, deltas: list[SparseDelta]) -> SparseDelta:
        """Concatenate deltas of the same N (order kept; not coalesced)."""
        if not deltas:
            raise ValueError("SparseDelta.cat needs at least one delta")
        n = deltas[0].num_nodes
        if any(d.num_nodes != n for d in deltas):
            raise ValueError("SparseDelta.cat: deltas refer to states of different sizes")
        return cls(
            torch.cat([d.rows for d in deltas]),
            torch.cat([d.cols for d in deltas]),
            torch.cat([d.values for d in deltas]),
            n,
        )

    # ---------------------------------------------------------------- properties
    @property
    def nnz(self) -> int:
        """Number of stored entries (duplicates included unless coalesced)."""
        return int(self.values.numel())

    @property
    def nbytes(self) -> int:
        """Bytes of the three arrays: ``nnz * (4 + 4 + sizeof(value))``."""
        return self.nnz * (4 + 4 + self.values.element_size())

    @property
    def density(self) -> float:
        """Fraction of the N² entries that are stored."""
        return self.nnz / float(self.num_nodes) ** 2

    def all_finite(self) -> bool:
        """Whether every value is finite (no NaN or inf)."""
        return bool(torch.isfinite(self.values).all())

    def flat_keys(self) -> torch.Tensor:
        """int64 ``row * N + col`` keys (exact for any N < 2**31)."""
        return self.rows.long() * self.num_nodes + self.cols.long()

    # ---------------------------------------------------------------- operations
    def coalesce(self, reduce: str = "sum") -> SparseDelta:
        """Sort by (row, col) and combine duplicates in a fixed order.

        The sort is stable, and duplicates are summed by a sequential scan on CPU
        (``index_add_``) or a segment reduction elsewhere, so the same input gives
        bit-identical output on every process.

        Args:
            reduce: ``"sum"``, or ``"mean"``: each key's sum divided by how many
                times the key occurs (the sync's per-entry average over ranks).

        Raises:
            ValueError: for another ``reduce``.
        """
        if reduce not in ("sum", "mean"):
            raise ValueError(f"coalesce: reduce must be 'sum' or 'mean', got {reduce!r}")
        if self.coalesced:
            return self
        if self.nnz == 0:
            return SparseDelta(self.rows, self.cols, self.values, self.num_nodes, coalesced=True)
        keys = self.flat_keys()
        sorted_keys, order = torch.sort(keys, stable=True)
        vals = self.values[order]
        uniq, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
        if vals.device.type == "cpu":
            inverse = torch.repeat_interleave(torch.arange(uniq.numel()), counts)
            summed = torch.zeros(uniq.numel(), dtype=vals.dtype).index_add_(0, inverse, vals)
        else:  # atomics-free, deterministic reduction on accelerators
            summed = torch.segment_reduce(vals, "sum", lengths=counts)
        if reduce == "mean":
            summed = summed / counts.to(summed.dtype)
        n = self.num_nodes
        return SparseDelta(
            (uniq // n).to(INDEX_DTYPE),
            (uniq % n).to(INDEX_DTYPE),
            summed,
            n,
            coalesced=True,
        )

    def __add__(self, other: SparseDelta) -> SparseDelta:
        """Sum of two deltas, coalesced."""
        return SparseDelta.cat([self, other]).coalesce()

    def scale(self, factor: float) -> SparseDelta:
        """Every value multiplied by ``factor``."""
        return SparseDelta(self.rows, self.cols, self.values * factor, self.num_nodes,
                           self.coalesced)

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> SparseDelta:
        """Move indices and values; optionally cast the values."""
        return SparseDelta(
            self.rows.to(device),
            self.cols.to(device),
            self.values.to(device=device, dtype=dtype or self.values.dtype),
            self.num_nodes,
            self.coalesced,
        )

    def select(self, mask: torch.Tensor) -> SparseDelta:
        """The entries where ``mask`` is true (order kept)."""
        return SparseDelta(self.rows[mask], self.cols[mask], self.values[mask], self.num_nodes,
                           self.coalesced)

    def split_by_partition(self, bounds: list[int]) -> list[SparseDelta]:
        """Split by row ranges ``[bounds[p], bounds[p+1])``; rows stay global.

        Args:
            bounds: ``P + 1`` increasing row offsets starting at 0 and ending at N.

        Returns:
            One delta per partition, each keeping the relative order of entries.
        """
        if bounds[0] != 0 or bounds[-1] != self.num_nodes:
            raise ValueError(f"partition bounds must run from 0 to {self.num_nodes}: {bounds}")
        b = torch.tensor(bounds[1:-1], dtype=INDEX_DTYPE, device=self.rows.device)
        part = torch.bucketize(self.rows, b, right=True)
        return [self.select(part == p) for p in range(len(bounds) - 1)]

    def to_dense(self) -> torch.Tensor:
        """The N×N dense matrix (tests and tiny N only)."""
        if self.num_nodes > 4096:
            raise ValueError(f"to_dense refuses N={self.num_nodes} > 4096 (N² memory)")
        out = torch.zeros(self.num_nodes, self.num_nodes, dtype=self.values.dtype,
                          device=self.values.device)
        out.index_put_((self.rows.long(), self.cols.long()), self.values, accumulate=True)
        return out
