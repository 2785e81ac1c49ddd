"""Weighted row sums of a table looked up many times in one window, one dense gradient.

The model reads its node embeddings ``E`` (``[N, d]``) twice per time step,
``Eᵀ a`` over a few active nodes (an embedding bag). Through autograd each
lookup returns a sparse ``[N, d]`` gradient, and the engine sums the window's
lookups pairwise before ``E`` sees them: sparse + sparse copies every entry so
far, so the sum is quadratic in the window's length (37 ms of a 141 ms window
at N = 1,024 with 32 steps; at MQAR's 256-step windows, 64 streams and N =
16,384, more than half of a training step: decisions §11, issue #17). A dense
gradient per lookup would cost ``N·d`` each (too much at large N).

:class:`TableBags` instead routes every lookup of one window through one alias
of the table: each lookup's backward adds its rows into a dense ``[N, d]``
accumulator in place (``index_add_``, O(rows·d)), and the alias's backward,
which autograd runs only after every lookup's (they all depend on it), hands
the accumulated gradient to ``E`` once. Forward values are those of
``F.embedding_bag``; gradients equal it up to summation order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class _Accumulator:
    """The dense gradient of one window's lookups (allocated by the first backward)."""

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None


class _Alias(torch.autograd.Function):
    """The table, unchanged; its backward returns what the lookups accumulated."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, acc: _Accumulator) -> torch.Tensor:
        ctx.acc = acc
        return table.view_as(table)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        # ``grad`` is zero (the lookups return none for the alias, so autograd
        # materialises zeros); the lookups' gradient is in the accumulator.
        out = ctx.acc.grad
        ctx.acc.grad = None
        return out, None


class _Bag(torch.autograd.Function):
    """``out[b] = Σ_i w[b, i] · table[ids[b, i]]``; the table's gradient goes to ``acc``."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weights: torch.Tensor, table: torch.Tensor,
                acc: _Accumulator) -> torch.Tensor:
        ctx.save_for_backward(ids, weights, table)
        ctx.acc = acc
        return F.embedding_bag(ids, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor | None, None, None]:
        ids, weights, table = ctx.saved_tensors
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (table[ids] * grad[:, None, :]).sum(-1)
        if ctx.needs_input_grad[2]:
            acc = ctx.acc
            if acc.grad is None:
                acc.grad = torch.zeros_like(table)
            rows = (weights[:, :, None] * grad[:, None, :]).reshape(-1, grad.shape[1])
            rows = rows.to(acc.grad.dtype)
            if acc.grad.device.type == "cpu":  # a sequential scan: a fixed order
                acc.grad.index_add_(0, ids.reshape(-1), rows)
            else:  # CUDA's index_add_ uses atomics; the sorted accumulate is deterministic
                acc.grad.index_put_((ids.reshape(-1),), rows, accumulate=True)
        return None, grad_w, None, None


class TableBags:
    """Embedding bags over one table for the lookups of one window.

    Args:
        table: the ``[N, d]`` table (a parameter). Without gradients (evaluation)
            lookups are plain ``F.embedding_bag``.

    Make one per window (per backward pass); lookups made through it after its
    backward ran would find no accumulator to add to.
    """

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.tracked = torch.is_grad_enabled() and table.requires_grad
        self._acc = _Accumulator()
        self._alias = _Alias.apply(table, self._acc) if self.tracked else table

    def bag(self, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``Σ_i weights[b, i] · table[ids[b, i]]`` as ``[B, d]``.

        Args:
            ids: ``[B, m]`` row indices.
            weights: ``[B, m]`` per-row weights.
        """
        if not (self.tracked and torch.is_grad_enabled()):
            return F.embedding_bag(ids, self.table, per_sample_weights=weights, mode="sum")
        return _Bag.apply(ids, weights, self._alias, self._acc)
