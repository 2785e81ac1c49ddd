"""GRU mixer: the classic gated recurrent baseline inside the shared block frame.

A GRU keeps a dense hidden vector and can, in principle, track any finite
state (parity, modular sums) at any length, but its memory for arbitrary
associations is bounded by its width — the opposite trade-off of attention.
"""

from __future__ import annotations

import torch
from torch import nn

from obs_dist.baselines.common import BaselineConfig


class GRUMixer(nn.Module):
    """``[B, T, d] → [B, T, d]`` through one ``nn.GRU`` layer of width ``d``.

    Args:
        cfg: ``d_model`` is used.
    """

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        self.gru = nn.GRU(cfg.d_model, cfg.d_model, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the recurrence from a zero hidden state."""
        y, _ = self.gru(x)
        return y
