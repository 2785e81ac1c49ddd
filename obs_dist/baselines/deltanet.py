"""DeltaNet: linear attention with the delta rule, as the plain reference recurrence.

Per head, the state ``S ∈ R^{d_v×d_k}`` is a fast-weight memory updated by one
step of online regression towards ``v_t`` (Schlag et al. 2021; Yang et al. 2024):

    S_t = S_{t-1} + β_t (v_t − S_{t-1} k_t) k_tᵀ,      o_t = S_t q_t,

with ``q, k`` passed through SiLU and L2-normalised, and ``β_t = σ(w_βᵀ x_t)``
per head. Queries, keys and values first go through a short causal depthwise
convolution (kernel 4), as in the DeltaNet paper; outputs are normalised per
head before the output projection. Training uses the chunked WY form
(``BaselineConfig.delta_form = "chunked"``, :func:`delta_rule_chunked`); the
sequential reference loop (``"recurrent"``) gives the same outputs, slower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from obs_dist.baselines.common import BaselineConfig
from obs_dist.baselines.delta_rule import delta_rule_chunked, delta_rule_recurrent


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
        padded = F.pad(x, (0, 0, self.kernel - 1, 0))  # [B, T + k − 1, C], time first
        # [B, T', C] in memory is a channels-last [B, C, 1, T'] image: oneDNN convolves
        # it in that layout and returns [B, T, C] in memory, so no transposed copy is
        # made forward or backward (Conv1d wants [B, C, T]: a transposed copy of the
        # whole activation on the way in and out, both ways; docs/benchmarks.md).
        image = padded.transpose(1, 2).unsqueeze(2)
        y = F.conv2d(image, self.conv.weight.unsqueeze(2), groups=self.conv.groups)
        # contiguous() is a no-op in that layout; it guards a backend that returns
        # [B, C, 1, T] (the ops after it run slower on the transposed view). The bias
        # is added here, not by the convolution, whose bias gradient sums over
        # channels-last memory with strides it handles slowly (3.6 of its 4 ms
        # backward at [8, 256, 384]).
        assert self.conv.bias is not None  # built with one
        return y.squeeze(2).transpose(1, 2).contiguous() + self.conv.bias


def unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x / max(‖x‖, eps)`` over the last dim, as ``F.normalize``, in fewer passes.

    One reciprocal square root per row and one product: ``F.normalize`` divides by a
    clamped, expanded norm, and that division's backward costs several more passes
    over the whole tensor (a memory-bound part of every DeltaNet step on CPU).
    """
    return x * x.square().sum(-1, keepdim=True).clamp_min(eps * eps).rsqrt()


class ShortConvMixer(nn.Module):
    """``[B, T, d] → [B, T, d]``: a gated short causal convolution, Zoology's first layer.

    Zoology's MQAR models (Arora et al. 2023) put a short-convolution layer
    before the sequence mixer, so a key can be bound to the token next to it;
    ``x ↦ W_o (conv(W_u x) ⊙ W_g x)`` with a depthwise kernel of 3, as its
    ``BaseConv``.

    Args:
        cfg: ``d_model`` is used.
    """

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.inp = nn.Linear(d, 2 * d)
        self.conv = CausalConv1d(d, kernel=3)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix each step with its two predecessors."""
        u, gate = self.inp(x).chunk(2, dim=-1)
        return self.out(self.conv(u) * gate)


class DeltaNetMixer(nn.Module):
    """``[B, T, d] → [B, T, d]`` through multi-head delta-rule memory.

    Args:
        cfg: ``d_model``, ``heads``, ``delta_form`` and ``chunk_size`` are used.
    """

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.heads = cfg.heads
        self.form = cfg.delta_form
        self.chunk_size = cfg.chunk_size
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.conv = CausalConv1d(3 * d)
        self.beta = nn.Linear(d, cfg.heads)
        self.head_norm: nn.Module = nn.LayerNorm(d // cfg.heads)
        self.out = nn.Linear(d, d, bias=False)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``q, k, v`` as ``[B, H, T, d/H]`` (conv, SiLU, unit q and k) and ``β [B, H, T]``."""
        bsz, steps, _ = x.shape
        qkv = F.silu(self.conv(self.qkv(x))).view(bsz, steps, 3, self.heads, -1)
        # split, not slices: a slice's backward fills a zero tensor of the whole qkv
        # and copies into it; split's is one concatenation.
        qk, v = qkv.split([2, 1], dim=2)
        # q and k are normalised while still contiguous, then both views permuted.
        q, k = unit_rows(qk).permute(2, 0, 3, 1, 4)
        v = v.squeeze(2).transpose(1, 2)
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)
        return q, k, v, beta

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
            g: torch.Tensor | None = None) -> torch.Tensor:
        """The delta rule in the configured form: ``[B, H, T, d_v]``."""
        if self.form == "chunked":
            return delta_rule_chunked(q, k, v, beta, g, chunk_size=self.chunk_size)
        return delta_rule_recurrent(q, k, v, beta, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the delta rule from a zero state."""
        bsz, steps, width = x.shape
        q, k, v, beta = self.project(x)
        o = self.head_norm(self.mix(q, k, v, beta))
        return self.out(o.transpose(1, 2).reshape(bsz, steps, width))
