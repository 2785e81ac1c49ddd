"""SimCLR over random views of one modality's inputs: the shared part of the label-free terms.

:mod:`obs_dist.model.video_ssl` (pictures) and :mod:`obs_dist.model.audio_ssl`
(sounds) differ only in how a view is drawn and how the encoder takes it. The
objective is the same (Chen et al. 2020): the encoder's feature of each view goes
through a small projection that only this term uses, and each view must pick its
twin among all the other views (normalised-temperature cross-entropy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def twin_loss(z: Tensor, temperature: float, exclude: Tensor | None = None) -> Tensor:
    """SimCLR's loss: rows ``i`` and ``i + n`` of ``z`` ``[2n, e]`` (unit) are twins.

    Each row must pick its twin among the other ``2n − 1`` rows, less those
    ``exclude`` ``[2n, 2n]`` marks (rows that are not negatives; a twin always counts).
    """
    n = z.shape[0] // 2
    sim = (z @ z.t()) / temperature
    twin = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    drop = torch.eye(2 * n, dtype=torch.bool, device=sim.device)
    if exclude is not None:
        is_twin = torch.zeros_like(drop).scatter_(1, twin[:, None], True)
        drop = drop | (exclude & ~is_twin)
    sim = sim.masked_fill(drop, float("-inf"))
    return F.cross_entropy(sim, twin)


class ViewContrast(nn.Module):
    """Two random views of each input must find each other through an encoder.

    Holds only the projection; the encoder is the model's own, passed in.
    Subclasses say how a view is drawn (:meth:`views`) and how the encoder
    takes a batch of views (:meth:`encode`).

    Args:
        d_model: width ``d`` of the encoder's features.
        temperature: softmax temperature of the view similarities.
    """

    def __init__(self, d_model: int, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.proj = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                  nn.Linear(2 * d_model, d_model))
        self.temperature = temperature

    def views(self, inputs: Tensor, gen: torch.Generator | None) -> Tensor:
        """One random view of each input."""
        raise NotImplementedError

    def encode(self, encoder: nn.Module, views: Tensor) -> Tensor:
        """The encoder's ``[N, d]`` features of a batch of views."""
        return encoder(views)

    def forward(self, encoder: nn.Module, inputs: Tensor,
                gen: torch.Generator | None = None) -> Tensor:
        """Mean contrastive loss over ``inputs`` (0 with fewer than 2: nothing to tell apart).

        Args:
            encoder: the model's encoder of this modality.
            inputs: ``[N, ...]`` pictures or sounds.
            gen: random generator of the views (the global one when None).
        """
        return self.pairs(encoder, inputs, inputs, gen)

    def pairs(self, encoder: nn.Module, first: Tensor, second: Tensor,
              gen: torch.Generator | None = None) -> Tensor:
        """Mean contrastive loss where a view of ``first[i]`` and one of ``second[i]`` are twins.

        :meth:`forward` is ``pairs(inputs, inputs)``: two views of one input. Other
        pairs are what time makes twins: two moments of one recording a second
        apart (``model.stream.video_ssl_neighbour``).

        Args:
            encoder: the model's encoder of this modality.
            first: ``[N, ...]`` inputs.
            second: ``[N, ...]`` their twins.
            gen: random generator of the views (the global one when None).
        """
        features = self.twin_features(encoder, first, second, gen)
        if features is None:
            return torch.zeros((), device=first.device)
        return self.loss(features)

    def twin_features(self, encoder: nn.Module, first: Tensor, second: Tensor,
                      gen: torch.Generator | None = None) -> Tensor | None:
        """The encoder's features ``[2n, d]`` of a view of each of ``first`` then ``second``.

        Rows ``i`` and ``i + n`` are twins. None with fewer than 2 pairs (nothing
        to tell apart). Other terms may use the same features
        (``model.stream.address_ssl``), so the encoder runs once.
        """
        if first.shape != second.shape:
            raise ValueError(f"first {tuple(first.shape)} and second {tuple(second.shape)} "
                             f"must have the same shape")
        if first.shape[0] < 2:
            return None
        views = torch.cat([self.views(first, gen), self.views(second, gen)])
        return self.encode(encoder, views)

    def loss(self, features: Tensor) -> Tensor:
        """SimCLR's loss over :meth:`twin_features`' rows (``i`` and ``i + n`` twins)."""
        return twin_loss(F.normalize(self.proj(features), dim=-1), self.temperature)
