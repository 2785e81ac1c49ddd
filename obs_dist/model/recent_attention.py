"""Attention over the recent clips: the word–referent peer whose memory is a context window.

Issue 14 asks for the attention baseline beside OBS on the label-free stream: a
model that remembers the recent past the way a transformer does, as a cache of
the last clips it heard and saw, instead of in a big state. It is the dual
encoder (same encoders, same objective, no state) plus one more path:

* keys ``k_s = W_k f_a(s)`` of the clips ``s`` heard before, values the pictures
  seen with them, ``v_s`` (their direct-path video embeddings);
* hearing clip ``t``, the query ``q_t = W_q f_a(t)`` reads
  ``r_t = Σ_s softmax_s(q_t · k_s / √e) v_s`` over the clips of the same recording
  in its context, and a candidate picture ``j`` scores ``cos(r_t, v_j)``.

With ``match = "features"`` (``model.stream.recent_match``) the match is not learnt:
``softmax_s(τ⁻¹ cos(f_a(t) − c, f_a(s) − c))`` with ``c`` the mean of the query's
context and ``τ`` learnt. Measured (docs/results/notes.md, "ninth round"): the
learnt projections of the peer trained by the suite put less attention on other
utterances of the heard name than uniform attention would, while the audio
features' own similarity finds them.

A name heard once next to an object and heard again retrieves that object's
picture if it is still in the context: fast mapping within the window, as far
back as the cache reaches and no further (OBS's state has no such horizon).

While training, the context of clip ``t`` is the window's clips of the same
recording ``gap`` to ``span`` clips before it: the nearer ones show the scene of
``t`` itself and would let the path answer "the picture of a moment ago" without
hearing anything (the objective's negatives leave them out for the same reason).
At test time the context is what the caller gives (the word–referent suite: every
clip of the recording studied, ``attention_context``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# How a heard clip is matched to the context's clips (``model.stream.recent_match``).
MATCHES = ("learnt", "features")


class RecentAttention(nn.Module):
    """How a heard clip matches the context's clips, and the path's scale.

    Args:
        d: feature width of the audio encoder.
        e: width of the joint (direct-path) embedding the values live in.
        match: ``learnt``: query and key projections (a transformer's); ``features``:
            the cosine similarity of the audio features themselves, centred over
            each query's context, at a learnt temperature (no projection to
            train: a sound heard again matches itself from the first step).
    """

    def __init__(self, d: int, e: int, match: str = "learnt") -> None:
        super().__init__()
        if match not in MATCHES:
            raise ValueError(f"match must be one of {list(MATCHES)}, got {match!r}")
        self.query: nn.Linear | None = None
        self.key: nn.Linear | None = None
        if match == "learnt":
            self.query = nn.Linear(d, e, bias=False)
            self.key = nn.Linear(d, e, bias=False)
        else:
            self.sharpness = nn.Parameter(torch.tensor(math.log(10.0)))
        self.scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def match_logits(self, fa_query: torch.Tensor, fa_context: torch.Tensor,
                     allowed: torch.Tensor) -> torch.Tensor:
        """``[Q, K]`` attention logits before the mask (see ``match``)."""
        if self.query is not None and self.key is not None:
            q, k = self.query(fa_query), self.key(fa_context)
            return (q @ k.t()) / math.sqrt(q.shape[-1])
        # cos(q − c, k − c) with c the mean of the query's own context: what every
        # clip of a recording shares (its room, its voice) does not make them match.
        # The expanded products cancel what the clips share; float64 keeps the rest.
        dtype = fa_query.dtype
        fa_query, fa_context = fa_query.double(), fa_context.double()
        weights = allowed.double()
        centre = (weights @ fa_context) / weights.sum(1, keepdim=True).clamp_min(1.0)
        k_dot_c = centre @ fa_context.t()                                   # [Q, K]
        c_dot_c = (centre * centre).sum(1, keepdim=True)                    # [Q, 1]
        dots = fa_query @ fa_context.t() - (fa_query * centre).sum(1, keepdim=True) \
            - k_dot_c + c_dot_c                                             # (q−c)·(k−c)
        k_norm = ((fa_context * fa_context).sum(1)[None, :] - 2 * k_dot_c + c_dot_c)
        q_norm = (fa_query - centre).norm(dim=1, keepdim=True)
        cosine = dots / (q_norm.clamp_min(1e-6) * k_norm.clamp_min(1e-12).sqrt())
        return self.sharpness.exp().clamp(max=100.0) * cosine.to(dtype)

    def read(self, fa_query: torch.Tensor, fa_context: torch.Tensor, values: torch.Tensor,
             allowed: torch.Tensor) -> torch.Tensor:
        """What each query retrieves: ``[Q, e]``, zero where it may attend to nothing.

        Args:
            fa_query: audio features of the queries ``[Q, d]``.
            fa_context: audio features of the context clips ``[K, d]``.
            values: their pictures' embeddings ``[K, e]``.
            allowed: ``[Q, K]`` bool, which context clips each query may attend to.
        """
        logits = self.match_logits(fa_query, fa_context, allowed)
        logits = logits.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        # A query with nothing allowed has a row of NaNs (softmax of all -inf): none.
        weights = torch.where(allowed.any(1, keepdim=True), weights, torch.zeros_like(weights))
        return weights @ values

    def scores(self, retrieved: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``[Q, C]``: the path's logits, ``scale · cos(retrieved, candidate)``."""
        return self.scale.exp().clamp(max=100.0) * (F.normalize(retrieved, dim=-1)
                                                    @ candidates.t())

    def window_read(self, fa: torch.Tensor, values: torch.Tensor, stream: torch.Tensor,
                    when: torch.Tensor, present: torch.Tensor, gap: int, span: int
                    ) -> torch.Tensor:
        """Every clip of a window reads the earlier clips of its recording: ``[B·T, e]``.

        Args:
            fa: audio features ``[B·T, d]``.
            values: picture embeddings ``[B·T, e]``.
            stream: recording id per clip ``[B·T]``.
            when: clip index in its recording ``[B·T]``.
            present: ``[B·T]`` bool, clips heard and seen (others are no context).
            gap: the nearest context clip is this many clips before the query.
            span: the farthest is this many clips before it.
        """
        ago = when[:, None] - when[None, :]
        allowed = (stream[:, None] == stream[None, :]) & (ago >= gap) & (ago <= span) \
            & present[None, :]
        return self.read(fa, fa, values, allowed)
