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
projection. :func:`longhorn_scan` is the sequential reference recurrence;
:func:`longhorn_chunked` computes the same states with a parallel scan.

Why a scan and not a chunked matmul form like DeltaNet's: the transition
``1 − ε_t ⊗ k_t²`` is a different decay for every (channel, state) element, not
a scalar per head, so the decay from step ``s`` to ``t`` does not factor into a
product of a row and a column term and there is no ``Q Kᵀ``-style matmul over a
chunk (Mamba-1's selective scan has the same property; its authors run it as a
fused scan kernel). The linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` is
associative, so within a chunk it is a Hillis–Steele scan (log₂ chunk passes
over the whole chunk at once), and the chunks are chained sequentially.
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


def longhorn_chunked(x: torch.Tensor, k: torch.Tensor, q: torch.Tensor, beta: torch.Tensor,
                     chunk_size: int = 16) -> torch.Tensor:
    """The Longhorn recurrence by a parallel scan within chunks; equals :func:`longhorn_scan`.

    Within a chunk of ``L`` steps the pairs ``(a_t, b_t)`` of ``h_t = a_t ⊙ h_{t-1} + b_t``
    are combined by ``log₂ L`` doubling passes (Hillis–Steele), all chunks at once;
    then each chunk's states are ``b_t + a_t ⊙ h_in`` with ``h_in`` the previous
    chunk's last state (``T / L`` sequential steps instead of ``T``). Every step's
    state is materialised (``[B, T, C, m]``), as the recurrent form's autograd also
    keeps it, so memory is a few times the recurrent form's.

    Args:
        x: ``[B, T, C]`` channel inputs.
        k: ``[B, T, m]`` keys.
        q: ``[B, T, m]`` queries.
        beta: ``[B, T, C]`` step sizes (> 0).
        chunk_size: steps per chunk (>= 1; a length not divisible by it is padded
            with identity steps, ``a = 1`` and ``b = 0``).

    Returns:
        ``[B, T, C]`` outputs ``S_t q_t``.

    Raises:
        ValueError: ``chunk_size`` < 1.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bsz, steps, channels = x.shape
    m = k.shape[-1]
    kk = k * k
    eps = beta / (1.0 + beta * kk.sum(-1, keepdim=True))  # [B, T, C]
    pad = (-steps) % chunk_size
    if pad:  # eps = 0 gives a = 1, b = 0: the padded steps change nothing
        eps = F.pad(eps, (0, 0, 0, pad))
        x, k, kk, q = (F.pad(t, (0, 0, 0, pad)) for t in (x, k, kk, q))
    n = (steps + pad) // chunk_size
    a = (1.0 - eps[..., None] * kk[:, :, None, :]).view(bsz, n, chunk_size, channels, m)
    b = ((eps * x)[..., None] * k[:, :, None, :]).view(bsz, n, chunk_size, channels, m)
    offset = 1
    while offset < chunk_size:  # after the pass at offset o, (a_t, b_t) spans 2o steps
        b = torch.cat([b[:, :, :offset], a[:, :, offset:] * b[:, :, :-offset]
                       + b[:, :, offset:]], dim=2)
        a = torch.cat([a[:, :, :offset], a[:, :, offset:] * a[:, :, :-offset]], dim=2)
        offset *= 2
    q = q.view(bsz, n, chunk_size, m, 1)
    h = x.new_zeros(bsz, 1, channels, m)
    outs = []
    for i in range(n):
        states = b[:, i] + a[:, i] * h  # [B, L, C, m]
        h = states[:, -1:]
        outs.append(torch.matmul(states, q[:, i]).squeeze(-1))  # [B, L, C]
    return torch.cat(outs, dim=1)[:, :steps]


class LonghornMixer(nn.Module):
    """``[B, T, d] → [B, T, d]`` through one Longhorn layer (expansion 1).

    Args:
        cfg: ``d_model``, ``state_dim`` (m), ``longhorn_form`` and ``chunk_size`` are used.
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
        self.form = cfg.longhorn_form
        self.chunk_size = cfg.chunk_size

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Run the recurrence from a zero state."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(self.conv(x))
        k, q = self.kq(x).chunk(2, dim=-1)
        beta = F.softplus(self.beta(x))
        if self.form == "chunked":
            y = longhorn_chunked(x, k, q, beta, self.chunk_size)
        else:
            y = longhorn_scan(x, k, q, beta)
        y = y + self.skip * x
        return self.out(y * F.silu(z))
