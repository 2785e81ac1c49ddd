"""Incremental state logs: which entries changed since the last checkpoint.

A checkpoint of the big state should cost what changed, not N² (Check-N-Run).
:class:`TouchedEntries` records the index of every entry a *committed* delta
changed; at checkpoint time :func:`encode_log` writes those entries' **current
values** (rows int32, cols int32, values in the state dtype) as safetensors.

Why values and not the summed increments: replaying ``X[r, c] = v`` is exact by
construction, whereas re-adding a coalesced sum of many deltas is not — fp32
addition is not associative (``(x + a) + b != x + (a + b)``), a bf16 state
rounds after every commit, and clipping at commit is not linear. Storing values
also keeps one copy of an entry touched many times, so a log costs
``unique entries × (8 + sizeof(dtype))`` bytes whatever the commit count.

Resume = load the base partitions, then replay the logs in order with
:func:`apply_log`; the result equals the live state bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from obs_dist.checkpoint.codec import bytes_to_tensors, tensors_to_bytes
from obs_dist.model.delta import INDEX_DTYPE, SparseDelta
from obs_dist.model.sharded_state import ShardedState
from obs_dist.model.state import BigState

# Compact the pending keys (sort + unique) once this many raw keys are buffered,
# so memory stays near the number of distinct touched entries.
COMPACT_AT = 1 << 22


class TouchedEntries:
    """The set of state entries changed by committed deltas since the last :meth:`clear`.

    Args:
        num_nodes: N of the state (keys are ``row * N + col`` in int64).
    """

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes
        self._unique: torch.Tensor | None = None  # sorted, unique int64 keys
        self._pending: list[torch.Tensor] = []
        self._pending_count = 0
        self.commits = 0

    def record(self, delta: SparseDelta) -> None:
        """Remember the entries of a delta that has been applied to the state."""
        if delta.num_nodes != self.num_nodes:
            raise ValueError(f"delta is for N={delta.num_nodes}, log tracks N={self.num_nodes}")
        self.commits += 1
        if delta.nnz == 0:
            return
        self._pending.append(delta.flat_keys())
        self._pending_count += delta.nnz
        unique = 0 if self._unique is None else self._unique.numel()
        if self._pending_count >= max(COMPACT_AT, 2 * unique):
            self._compact()

    def _compact(self) -> None:
        parts = self._pending if self._unique is None else [self._unique, *self._pending]
        if parts:
            self._unique = torch.unique(torch.cat(parts), sorted=True)
        self._pending = []
        self._pending_count = 0

    def keys(self) -> torch.Tensor:
        """Sorted unique int64 keys of the touched entries."""
        self._compact()
        if self._unique is None:
            return torch.empty(0, dtype=torch.int64)
        return self._unique

    def count(self) -> int:
        """Number of distinct touched entries."""
        return int(self.keys().numel())

    def clear(self) -> None:
        """Forget everything (after a checkpoint has been written)."""
        self._unique = None
        self._pending = []
        self._pending_count = 0
        self.commits = 0

    def attach(self, state: BigState | ShardedState) -> Callable[[], None]:
        """Record every delta that ``state.apply`` accepts from now on.

        The wrapper records *after* the original ``apply`` returned, so a delta it
        refused (NaN/inf, wrong N) is never logged. Returns a function that
        removes the wrapper again.
        """
        if state.num_nodes != self.num_nodes:
            raise ValueError(f"state has N={state.num_nodes}, log tracks N={self.num_nodes}")
        original = state.apply

        def apply_and_record(delta: SparseDelta) -> None:
            original(delta)
            self.record(delta)

        # An instance attribute shadows the method for every caller of state.apply.
        state.apply = apply_and_record  # type: ignore[method-assign]

        def detach() -> None:
            if state.__dict__.get("apply") is apply_and_record:
                del state.__dict__["apply"]

        return detach


def entry_bytes(dtype: torch.dtype) -> int:
    """Bytes one logged entry costs: int32 row + int32 col + one value."""
    return 8 + torch.empty(0, dtype=dtype).element_size()


def encode_log(state: BigState, keys: torch.Tensor) -> bytes:
    """The current values of the entries ``keys`` as a safetensors blob.

    Args:
        state: the live state.
        keys: sorted unique int64 keys ``row * N + col``.
    """
    n = state.num_nodes
    keys = keys.to(state.device)
    rows = keys // n
    cols = keys % n
    values = state.full[rows, cols]
    return tensors_to_bytes({"rows": rows.to(INDEX_DTYPE).cpu(), "cols": cols.to(INDEX_DTYPE).cpu(),
                             "values": values.cpu()},
                            metadata={"num_nodes": str(n), "dtype": str(state.dtype)})


def apply_log(state: BigState, data: bytes, what: str) -> int:
    """Overwrite the logged entries of ``state`` with their logged values.

    Args:
        state: the state to restore (already holding the base and earlier logs).
        data: a blob written by :func:`encode_log`.
        what: the object's name, for error messages.

    Returns:
        The number of entries written.

    Raises:
        ValueError: the blob is not a log of a state like this one.
    """
    tensors = bytes_to_tensors(data, what)
    missing = {"rows", "cols", "values"} - set(tensors)
    if missing:
        raise ValueError(f"{what} is not a delta log: missing {sorted(missing)}")
    rows, cols, values = tensors["rows"], tensors["cols"], tensors["values"]
    if not rows.shape == cols.shape == values.shape or rows.dim() != 1:
        raise ValueError(f"{what}: rows, cols and values must be 1-D of equal length")
    if values.dtype != state.dtype:
        raise ValueError(f"{what}: values are {values.dtype}, the state is {state.dtype}")
    if rows.numel() == 0:
        return 0
    hi = max(int(rows.max()), int(cols.max()))
    lo = min(int(rows.min()), int(cols.min()))
    if lo < 0 or hi >= state.num_nodes:
        raise ValueError(f"{what}: index out of range [0, {state.num_nodes}): {lo}..{hi}")
    r = rows.to(state.device).long()
    c = cols.to(state.device).long()
    state.full[r, c] = values.to(state.device)
    return int(rows.numel())
