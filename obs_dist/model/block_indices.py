"""The window's block indices (rows, columns, write steps) in buffers that double when full.

:class:`~obs_dist.model.window.WindowMemory` appends one block per stream and
time step. Concatenated step after step, every append copied the whole window
so far: O(T²) copies per window, and the row indices (int64, ``k_max + m``
a block) were most of those bytes. Indices carry no gradient, so they are
written once into growing buffers instead, and the window reads strided views
of them (``[B, L, r]`` over a ``[B, capacity, r]`` buffer: ``flatten(1)`` of
such a view is still a view, so ``gather`` and ``scatter_add_`` index it
without a copy).

A view taken at step t stays valid after later appends (they write past its
end, or into a new buffer), but autograd's version counter would see those
appends as changes: code that keeps such a view for a backward pass keeps it
as a plain attribute, not through ``save_for_backward`` (the window's reads do).
"""

from __future__ import annotations

import torch

_FIRST_CAPACITY = 64  # blocks per stream before the first doubling


class BlockIndices:
    """One kind's ``rows [B, L, r]``, ``cols [B, L, c]`` and ``step [L]``, append-only.

    Args:
        rows: the first block's rows ``[B, r]``.
        cols: its columns ``[B, c]``.
        step: the step it was written at.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, step: int) -> None:
        bsz, cap = rows.shape[0], _FIRST_CAPACITY
        self._rows = rows.new_empty(bsz, cap, rows.shape[1], dtype=torch.long)
        self._cols = cols.new_empty(bsz, cap, cols.shape[1], dtype=torch.long)
        self._step = torch.empty(cap, dtype=torch.long, device=rows.device)
        self.length = 0
        self.append(rows, cols, step)

    def append(self, rows: torch.Tensor, cols: torch.Tensor, step: int) -> None:
        """Add one block per stream, written at ``step``."""
        if self.length == self._step.shape[0]:
            self._resize(2 * self.length)
        self._rows[:, self.length] = rows
        self._cols[:, self.length] = cols
        self._step[self.length] = step
        self.length += 1

    def _resize(self, capacity: int) -> None:
        """New buffers of ``capacity`` blocks holding the blocks so far (old views stay valid)."""
        n = self.length
        rows = self._rows.new_empty(self._rows.shape[0], capacity, self._rows.shape[2])
        cols = self._cols.new_empty(self._cols.shape[0], capacity, self._cols.shape[2])
        step = self._step.new_empty(capacity)
        rows[:, :n], cols[:, :n], step[:n] = self.rows, self.cols, self.step
        self._rows, self._cols, self._step = rows, cols, step

    @property
    def rows(self) -> torch.Tensor:
        """``[B, L, r]`` (a view)."""
        return self._rows[:, :self.length]

    @property
    def cols(self) -> torch.Tensor:
        """``[B, L, c]`` (a view)."""
        return self._cols[:, :self.length]

    @property
    def step(self) -> torch.Tensor:
        """``[L]`` (a view)."""
        return self._step[:self.length]

    def carried(self) -> BlockIndices:
        """A copy for the next window: the same blocks, marked carried in (step -1)."""
        out = BlockIndices.__new__(BlockIndices)
        out._rows, out._cols, out._step = self._rows, self._cols, self._step
        out.length = self.length
        out._resize(max(self._step.shape[0], _FIRST_CAPACITY))
        out._step[:out.length] = -1
        return out
