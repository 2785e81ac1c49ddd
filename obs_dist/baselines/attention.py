"""Causal multi-head softmax attention with rotary positions (the Transformer baseline).

The standard reference for associative recall: exact lookup over the whole
context at O(T²) cost. Positions enter through rotary embeddings (RoPE) applied
to queries and keys, so no learned table limits the length a model can be
evaluated at (extrapolating beyond the trained lengths is still not expected
to work, which the state-tracking suite shows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from obs_dist.baselines.common import BaselineConfig


def rotary(x: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
    """Rotate channel pairs of ``x [B, H, T, D]`` by position-dependent angles (RoPE)."""
    steps, dim = x.shape[-2], x.shape[-1]
    half = dim // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(steps, device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    """``[B, T, d] → [B, T, d]``: each step attends to itself and every earlier step.

    Args:
        cfg: ``d_model`` and ``heads`` are used.
    """

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend causally over the sequence."""
        bsz, steps, width = x.shape
        q, k, v = self.qkv(x).view(bsz, steps, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = rotary(q), rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(bsz, steps, width))
