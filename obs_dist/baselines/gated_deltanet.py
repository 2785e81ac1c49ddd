"""Gated DeltaNet: the delta rule with a learned per-head decay (Yang et al. 2025).

Gated DeltaNet (Yang, Kautz & Hatamizadeh, "Gated Delta Networks: Improving
Mamba2 with Delta Rule", ICLR 2025) multiplies the state by ``α_t = exp(g_t)``
before each delta-rule write, so a head can clear its memory quickly (small
``α``) or keep it (``α → 1``):

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ.

The decay is parameterised as in Mamba2 and flash-linear-attention's
``GatedDeltaNet`` layer: ``g_t = −exp(A_log) · softplus(w_aᵀ x_t + dt_bias)``
with ``A ~ U(0, 16)`` and ``dt`` log-uniform in [0.001, 0.1] at
initialisation; the output of each head is RMS-normalised and gated by
``SiLU(W_g x)`` before the output projection. Projections, short convolution
and the ``β`` gate are DeltaNet's (:class:`DeltaNetMixer`), as is the choice of
chunked or recurrent form.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from obs_dist.baselines.common import BaselineConfig
from obs_dist.baselines.deltanet import DeltaNetMixer


def softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` (``y > 0``)."""
    return y + torch.log(-torch.expm1(-y))


class GatedDeltaNetMixer(DeltaNetMixer):
    """``[B, T, d] → [B, T, d]`` through multi-head gated delta-rule memory.

    Args:
        cfg: ``d_model``, ``heads``, ``delta_form`` and ``chunk_size`` are used.
    """

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__(cfg)
        d, heads = cfg.d_model, cfg.heads
        self.decay = nn.Linear(d, heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(0, 16).clamp_min(1e-4).log())
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        self.dt_bias = nn.Parameter(softplus_inverse(dt.clamp_min(1e-4)))
        self.gate = nn.Linear(d, d, bias=False)
        self.head_norm = nn.RMSNorm(d // heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the gated delta rule from a zero state."""
        bsz, steps, width = x.shape
        q, k, v, beta = self.project(x)
        g = -self.A_log.exp() * F.softplus(self.decay(x) + self.dt_bias)  # [B, T, H]
        o = self.head_norm(self.mix(q, k, v, beta, g.transpose(1, 2)))
        gate = F.silu(self.gate(x)).view(bsz, steps, self.heads, -1).transpose(1, 2)
        return self.out((o * gate).transpose(1, 2).reshape(bsz, steps, width))
