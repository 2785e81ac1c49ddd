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

A name heard once next to an object and heard again retrieves that object's
picture if it is still in the context: fast mapping within the window, as far
back as the cache reaches and no further (OBS's state has no such horizon).

While training, the context of clip ``t`` is the window's clips of the same
recording ``gap`` to ``span`` clips before it: the nearer ones show the scene of
``t`` itself and would let the path answer "the picture of a moment ago" without
hearing anything (the objective's negatives leave them out for the same reason).
At test time the context is the last ``span`` clips of the recording studied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RecentAttention(nn.Module):
    """Query and key projections and the path's scale.

    Args:
        d: feature width of the audio encoder.
        e: width of the joint (direct-path) embedding the values live in.
    """

    def __init__(self, d: int, e: int) -> None:
        super().__init__()
        self.query = nn.Linear(d, e, bias=False)
        self.key = nn.Linear(d, e, bias=False)
        self.scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def read(self, fa_query: torch.Tensor, fa_context: torch.Tensor, values: torch.Tensor,
             allowed: torch.Tensor) -> torch.Tensor:
        """What each query retrieves: ``[Q, e]``, zero where it may attend to nothing.

        Args:
            fa_query: audio features of the queries ``[Q, d]``.
            fa_context: audio features of the context clips ``[K, d]``.
            values: their pictures' embeddings ``[K, e]``.
            allowed: ``[Q, K]`` bool, which context clips each query may attend to.
        """
        q, k = self.query(fa_query), self.key(fa_context)
        logits = (q @ k.t()) / math.sqrt(q.shape[-1])
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
