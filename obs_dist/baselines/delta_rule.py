"""The (gated) delta rule: the sequential recurrence and its chunked parallel form.

Per head the state ``S ∈ R^{d_k×d_v}`` is a fast-weight memory. The gated delta
rule (Yang, Kautz & Hatamizadeh, "Gated Delta Networks", ICLR 2025) is

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,      o_t = S_tᵀ q_t,

with ``α_t = exp(g_t)`` (``g_t ≤ 0``, a log decay per head and step). Without a
gate (``g = 0``) it is DeltaNet's delta rule (Schlag et al. 2021; Yang et al.
2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence
Length").

:func:`delta_rule_recurrent` is the step-by-step reference loop.
:func:`delta_rule_chunked` computes the same outputs with the WY/UT
representation of Yang et al. 2024: within a chunk of ``C`` steps the product
of the ``C`` Householder-like transitions is written with two ``C×d`` matrices
``W, U`` obtained from one unit-lower-triangular solve
``(I + tril₋₁(diag(β) K Kᵀ ⊙ Γ)) [U W] = [diag(β) V, diag(β) K ⊙ e^γ]``,
where ``γ`` is the within-chunk cumulative log decay and ``Γ_ij = e^{γ_i − γ_j}``.
Then per chunk ``V' = U − W S``, ``O = (Q ⊙ e^γ) S + (Q Kᵀ ⊙ Γ ⊙ tril) V'`` and
``S ← e^{γ_C} S + (K ⊙ e^{γ_C − γ})ᵀ V'``: matrix products over all chunks at
once, and a Python loop over ``T / C`` chunks instead of ``T`` steps. The
algorithm follows flash-linear-attention's reference PyTorch versions
(``fla/ops/delta_rule/naive.py: delta_rule_chunkwise`` and
``fla/ops/gated_delta_rule/naive.py: naive_chunk_gated_delta_rule``, MIT), with
the forward-substitution loop replaced by ``torch.linalg.solve_triangular``
(one batched call, differentiable) and the sequence zero-padded to a whole
number of chunks (padding sits after every real step, so causality keeps it out
of the real outputs). Docs: ``docs/decisions.md`` §9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
           g: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, H, T, d_k], got {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, H, T, d_v] matching q, got {tuple(v.shape)}")
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must be [B, H, T], got {tuple(beta.shape)}")
    if g is not None and g.shape != q.shape[:3]:
        raise ValueError(f"g must be [B, H, T], got {tuple(g.shape)}")


def delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         beta: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
    """The (gated) delta rule one step at a time from a zero state.

    Args:
        q: ``[B, H, T, d_k]`` queries.
        k: ``[B, H, T, d_k]`` keys (normalised, so each step is a contraction).
        v: ``[B, H, T, d_v]`` values.
        beta: ``[B, H, T]`` write strengths in (0, 1).
        g: ``[B, H, T]`` log decays (≤ 0), or None for the ungated delta rule.

    Returns:
        ``[B, H, T, d_v]`` outputs ``S_tᵀ q_t``.

    Raises:
        ValueError: if the shapes disagree.
    """
    _check(q, k, v, beta, g)
    bsz, heads, steps, dk = k.shape
    state = k.new_zeros(bsz, heads, dk, v.shape[-1])
    outs = []
    for t in range(steps):
        kt = k[:, :, t]
        if g is not None:
            state = state * g[:, :, t, None, None].exp()
        old = torch.einsum("bhkv,bhk->bhv", state, kt)
        state = state + kt[..., None] * (beta[:, :, t, None] * (v[:, :, t] - old))[:, :, None]
        outs.append(torch.einsum("bhkv,bhk->bhv", state, q[:, :, t]))
    return torch.stack(outs, dim=2)


def delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       beta: torch.Tensor, g: torch.Tensor | None = None,
                       chunk_size: int = 64) -> torch.Tensor:
    """The same outputs as :func:`delta_rule_recurrent`, chunk by chunk (WY/UT form).

    Args:
        q: ``[B, H, T, d_k]`` queries.
        k: ``[B, H, T, d_k]`` keys (normalised).
        v: ``[B, H, T, d_v]`` values.
        beta: ``[B, H, T]`` write strengths in (0, 1).
        g: ``[B, H, T]`` log decays (≤ 0), or None for the ungated delta rule.
        chunk_size: steps per chunk ``C`` (any ``T`` works: the tail is padded).

    Returns:
        ``[B, H, T, d_v]`` outputs.

    Raises:
        ValueError: if the shapes disagree or ``chunk_size < 1``.
    """
    _check(q, k, v, beta, g)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bsz, heads, steps, dk = k.shape
    dv = v.shape[-1]
    c = min(chunk_size, steps) if steps else 1
    pad = -steps % c
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta = F.pad(beta, (0, pad))
        g = None if g is None else F.pad(g, (0, pad))
    n = (steps + pad) // c
    # q and k enter several batched products, forward and backward: one copy in
    # [B, H, T, d] order here saves each product its own (the mixer's permuted views
    # do not fold their batch dims into one).
    q, k = q.contiguous(), k.contiguous()
    q, k, v = (x.reshape(bsz, heads, n, c, x.shape[-1]) for x in (q, k, v))
    beta = beta.reshape(bsz, heads, n, c, 1)
    k_t = k.transpose(-1, -2)
    k_beta = beta * k
    eye = torch.eye(c, dtype=q.dtype, device=q.device)
    # Triangles as products with 0/1 masks, not tril(): the same values, and on CPU
    # a product is one vectorised pass (tril is 3× slower, forward and backward).
    lower = torch.ones(c, c, dtype=q.dtype, device=q.device).tril()
    end_decay: torch.Tensor | None = None
    if g is None:
        # Ungated (DeltaNet): every decay is 1, so the gated path's masks and
        # exponentials would multiply by exactly 1 or 0; skipping them gives the same
        # outputs in less time (docs/benchmarks.md, chunked vs recurrent DeltaNet).
        strict = eye + (k_beta @ k_t) * (lower - eye)
        rhs = torch.cat([beta * v, k_beta], dim=-1)
        intra = (q @ k_t) * lower  # [B, H, n, C, C], lower with diagonal
        q_decayed, k_to_end = q, k
    else:
        gamma = g.reshape(bsz, heads, n, c).cumsum(-1)  # within-chunk cumulative log decay
        # Γ_ij = exp(γ_i − γ_j) for j ≤ i; the upper part is masked before exp (it would overflow).
        diff = (gamma[..., :, None] - gamma[..., None, :]) * lower
        decay = diff.exp() * lower
        strict = eye + k_beta @ k_t * decay * (lower - eye)
        rhs = torch.cat([beta * v, k_beta * gamma[..., None].exp()], dim=-1)
        intra = q @ k_t * decay
        q_decayed = q * gamma[..., None].exp()
        k_to_end = k * (gamma[..., -1:] - gamma)[..., None].exp()
        end_decay = gamma[..., -1].exp()
    # Solved as the transposed system Xᵀ strictᵀ = rhsᵀ: LAPACK works on column-major
    # matrices, and the transposes of these row-major ones are exactly that, so the
    # solve and its backward copy no operands, matrix by matrix.
    uw = torch.linalg.solve_triangular(strict.mT, rhs.mT, upper=True, left=False,
                                       unitriangular=True).mT
    u, w = uw.split([dv, dk], dim=-1)  # split's backward is one cat; slices' fill zeros
    state = q.new_zeros(bsz, heads, dk, dv)
    starts, news = [], []
    # The loop carries only the state from chunk to chunk; each chunk's outputs
    # (its queries against the state it starts from, plus the chunk's own part) are
    # two batched products over all chunks after it: half the small per-chunk
    # products, forward and backward. unbind, not indexing: each index's backward
    # would fill a zero tensor of the full size.
    ends = [None] * n if end_decay is None else end_decay.unbind(2)
    for u_i, w_i, k_i, end_i in zip(u.unbind(2), w.unbind(2),
                                    k_to_end.transpose(-1, -2).unbind(2), ends):
        starts.append(state)
        v_new = u_i - w_i @ state
        news.append(v_new)
        if end_i is not None:
            state = state * end_i[..., None, None]
        state = state + k_i @ v_new
    out = q_decayed @ torch.stack(starts, dim=2) + intra @ torch.stack(news, dim=2)
    return out.reshape(bsz, heads, n * c, dv)[:, :, :steps]
