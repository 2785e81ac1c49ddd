"""Longhorn: the SSM whose recurrence is the implicit online-regression update.

Longhorn (Liu et al. 2024, seed ``001``) derives its state transition from
online learning: per channel ``i`` the state row ``s_i ∈ R^m`` solves
``min_s ‖s − s_{i,t-1}‖² + β_{i,t} (sᵀk_t − x_{i,t})²`` in closed form. With the
paper's diagonal approximation this is

    ε_t = β_t / (1 + β_t k_tᵀk_t),
    S_t = (1 − ε_t ⊗ k_t²) ⊙ S_{t-1} + (ε_t ⊙ x_t) ⊗ k_t,      y_t = S_t q_t,

so the forget term comes from the key itself (no separate forget gate) and
``0 ≤ ε_t k_{t,j}² ≤ 1`` keeps the state stable. The block follows Mamba's
layout: input projection to ``x`` and a gate ``z``, short causal convolution
and SiLU on ``x``, the recurrence, a skip ``D ⊙ x``, the SiLU gate, output
projection. The loop below is the sequential reference recurrence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from obs_dist.baselines.common import BaselineConfig
from obs_dist.baselines.deltanet import CausalConv1d


def longhorn_scan(x: torch.Tensor, k: torch.Tensor, q: torch.Tensor,
                  beta: torch.Tensor) -> torch.Tensor:
    """The Longhorn recurrence over time.

    Args:
        x: ``[B, T, C]`` channel inputs (regression targets).
        k: ``[B, T, m]`` keys.
        q: ``[B, T, m]`` queries.
        beta: ``[B, T, C]`` step sizes (> 0).

    Returns:
        ``[B, T, C]`` outputs ``S_t q_t``.
    """
    bsz, steps, channels = x.shape
    state = x.new_zeros(bsz, channels, k.shape[-1])
    outs = []
    for t in range(steps):
        kt = k[:, t]
        eps = beta[:, t] / (1.0 + beta[:, t] * (kt * kt).sum(-1, keepdim=True))  # [B, C]
        state = (1.0 - eps[:, :, None] * (kt * kt)[:, None, :]) * state \
            + (eps * x[:, t])[:, :, None] * kt[:, None, :]
        outs.append(torch.einsum("bcm,bm->bc", state, q[:, t]))
    return torch.stack(outs, dim=1)


class LonghornMixer(nn.Module):
    """``[B, T, d] → [B, T, d]`` through one Longhorn layer (expansion 1).

    Args:
        cfg: ``d_model`` and ``state_dim`` (m) are used.
    """

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        d, m = cfg.d_model, cfg.state_dim
        self.in_proj = nn.Linear(d, 2 * d, bias=False)
        self.conv = CausalConv1d(d)
        self.kq = nn.Linear(d, 2 * m, bias=False)
        self.beta = nn.Linear(d, d)
        self.skip = nn.Parameter(torch.ones(d))
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Run the recurrence from a zero state."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(self.conv(x))
        k, q = self.kq(x).chunk(2, dim=-1)
        beta = F.softplus(self.beta(x))
        y = longhorn_scan(x, k, q, beta) + self.skip * x
        return self.out(y * F.silu(z))
