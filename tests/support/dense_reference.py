"""A dense reference for the window memory: explicit N×N copies (tiny N only).

Same interface as :class:`obs_dist.model.window.WindowMemory`, but every stream keeps
its own dense ``X_b = X_base + Σ Δ`` tensor in the autograd graph. Used to check
that the sparse blocks, overlaps and scatters compute exactly the same thing.
"""

from __future__ import annotations

import torch


class DenseMemory:
    """Dense per-stream state; ``shared`` mirrors the sequential phase's visibility."""

    def __init__(self, base: torch.Tensor, batch: int, shared: bool = False) -> None:
        self.shared = shared
        self.n = base.shape[0]
        self.common = base.to(torch.float64)[None].expand(batch, -1, -1).clone()
        self.pending = torch.zeros_like(self.common)  # own writes not yet seen by others

    def _view(self) -> torch.Tensor:
        return self.common + self.pending

    def write(self, kind: str, rows: torch.Tensor, a: torch.Tensor, cols: torch.Tensor,
              b: torch.Tensor) -> None:
        bsz = rows.shape[0]
        block = a[:, :, None] * b[:, None, :]
        bidx = torch.arange(bsz)[:, None, None].expand_as(block)
        ridx = rows[:, :, None].expand_as(block)
        cidx = cols[:, None, :].expand_as(block)
        delta = torch.zeros_like(self.common).index_put(
            (bidx.reshape(-1), ridx.reshape(-1), cidx.reshape(-1)), block.reshape(-1),
            accumulate=True)
        self.pending = self.pending + delta

    def next_step(self) -> None:
        if self.shared:
            # Everyone's writes of this step become visible to everyone.
            total = self.pending.sum(0, keepdim=True)
            self.common = self.common + total
        else:
            self.common = self.common + self.pending
        self.pending = torch.zeros_like(self.pending)

    def read(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        x = self._view()
        picked = x[torch.arange(rows.shape[0])[:, None], rows]  # [B, k, N]
        return torch.einsum("bk,bkn->bn", weights, picked)

    def read_top(self, rows: torch.Tensor, weights: torch.Tensor, m: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.read(rows, weights).topk(m, dim=1)

    def read_entries(self, rows: torch.Tensor, weights: torch.Tensor,
                     cols: torch.Tensor) -> torch.Tensor:
        x = self._view()
        b = torch.arange(rows.shape[0])[:, None, None]
        picked = x[b, rows[:, :, None], cols[:, None, :]]  # [B, k, Q]
        return torch.einsum("bk,bkq->bq", weights, picked)
