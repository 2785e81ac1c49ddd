"""Fit an encoder with a label-free view-contrast term (the SimCLR tests of both modalities)."""

from __future__ import annotations

import torch
from torch import nn


def fit_contrast(encoder: nn.Module, contrast: nn.Module, inputs: torch.Tensor,
                 steps: int = 60, lr: float = 3e-3) -> list[float]:
    """Train ``encoder`` and ``contrast``'s projection on ``inputs``; the loss at each step."""
    opt = torch.optim.Adam([*encoder.parameters(), *contrast.parameters()], lr=lr)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        loss = contrast(encoder, inputs, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
