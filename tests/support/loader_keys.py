"""The sample keys a shard loader yields, for tests that check order, splits and resume."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def batch_keys(loader: Iterable[dict[str, Any]],
               batches: int | None = None) -> list[list[list[str]]]:
    """The ``keys`` of every batch (``[batch][row][step]``), at most ``batches`` of them."""
    out = []
    for batch in loader:
        out.append(batch["keys"])
        if batches is not None and len(out) == batches:
            break
    return out


def flat_keys(keys: list[list[list[str]]]) -> list[str]:
    """The non-empty keys of :func:`batch_keys`' result, in order."""
    return [k for batch in keys for row in batch for k in row if k]
