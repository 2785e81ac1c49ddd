"""Modality encoders: map a batch of raw inputs to per-step features ``f_t``.

Every encoder takes the batch dictionary and returns ``[B, T, d]``. Tokens (for
the synthetic tasks) are encoded here; audio and video live in
:mod:`obs_dist.model.av_encoders`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class TokenEncoder(nn.Module):
    """Token embedding plus a learned modality embedding.

    Args:
        vocab: number of input tokens.
        d_model: feature width d.
    """

    def __init__(self, vocab: int, d_model: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.modality = nn.Parameter(torch.zeros(d_model))
        self.vocab = vocab

    def forward(self, batch: dict) -> torch.Tensor:
        """Features ``[B, T, d]`` of ``batch["tokens"]`` (int64 ``[B, T]``)."""
        tokens = batch["tokens"]
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab):
            raise ValueError(
                f"token ids must be in [0, {self.vocab}), got [{int(tokens.min())}, "
                f"{int(tokens.max())}]"
            )
        return self.embed(tokens) + self.modality


def build_encoder(kind: Literal["tokens", "av"], d_model: int, vocab: int, n_mels: int,
                  image_size: int) -> nn.Module:
    """The encoder named by the model config."""
    if kind == "tokens":
        return TokenEncoder(vocab, d_model)
    if kind == "av":
        from obs_dist.model.av_encoders import AVEncoder

        return AVEncoder(d_model, n_mels=n_mels, image_size=image_size)
    raise ValueError(f"model.encoder must be 'tokens' or 'av', got {kind!r}")
