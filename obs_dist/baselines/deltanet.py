"""DeltaNet: linear attention with the delta rule, as the plain reference recurrence.

Per head, the state ``S ∈ R^{d_v×d_k}`` is a fast-weight memory updated by one
step of online regression towards ``v_t`` (Schlag et al. 2021; Yang et al. 2024):

    S_t = S_{t-1} + β_t (v_t − S_{t-1} k_t) k_tᵀ,      o_t = S_t q_t,

with ``q, k`` passed through SiLU and L2-normalised, and ``β_t = σ(w_βᵀ x_t)``
per head. Queries, keys and values first go through a short causal depthwise
convolution (kernel 4), as in the DeltaNet paper; outputs are normalised per
head before the output projection. This is the sequential reference loop (one
step at a time, O(T·d_k·d_v) per head), not the chunked WY form: slower, but
exactly the recurrence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from obs_dist.baselines.common import BaselineConfig


class CausalConv1d(nn.Module):
    """Depthwise causal convolution over time: ``[B, T, C] → [B, T, C]``.

    Args:
        channels: C.
        kernel: taps (each step sees itself and ``kernel − 1`` earlier steps).
    """

    def __init__(self, channels: int, kernel: int = 4) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Left-padded so step t never sees t + 1."""
        y = F.pad(x.transpose(1, 2), (self.kernel - 1, 0))
        return self.conv(y).transpose(1, 2)


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               beta: torch.Tensor) -> torch.Tensor:
    """The delta-rule recurrence over time.

    Args:
        q: ``[B, H, T, d_k]`` queries.
        k: ``[B, H, T, d_k]`` keys (normalised).
        v: ``[B, H, T, d_v]`` values.
        beta: ``[B, H, T]`` write strengths in (0, 1).

    Returns:
        ``[B, H, T, d_v]`` outputs ``S_t q_t``.
    """
    bsz, heads, steps, dk = k.shape
    state = k.new_zeros(bsz, heads, v.shape[-1], dk)
    outs = []
    for t in range(steps):
        kt, vt = k[:, :, t], v[:, :, t]
        old = torch.einsum("bhvk,bhk->bhv", state, kt)
        state = state + (beta[:, :, t, None] * (vt - old))[..., None] * kt[:, :, None, :]
        outs.append(torch.einsum("bhvk,bhk->bhv", state, q[:, :, t]))
    return torch.stack(outs, dim=2)


class DeltaNetMixer(nn.Module):
    """``[B, T, d] → [B, T, d]`` through multi-head delta-rule memory.

    Args:
        cfg: ``d_model`` and ``heads`` are used.
    """

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.heads = cfg.heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.conv = CausalConv1d(3 * d)
        self.beta = nn.Linear(d, cfg.heads)
        self.head_norm = nn.LayerNorm(d // cfg.heads)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the recurrence from a zero state."""
        bsz, steps, width = x.shape
        qkv = F.silu(self.conv(self.qkv(x)))
        q, k, v = qkv.view(bsz, steps, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)  # [B, H, T]
        o = self.head_norm(delta_rule(q, k, v, beta))
        return self.out(o.transpose(1, 2).reshape(bsz, steps, width))
