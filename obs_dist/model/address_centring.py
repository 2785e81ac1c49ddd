"""Features centred and scaled per dimension before they address nodes (``av-stream``).

:class:`AddressCentring` is the ``model.stream.address_centring`` option of
:class:`~obs_dist.model.av_stream.AVStreamModel` (docs/decisions.md §13).
"""

from __future__ import annotations

import torch
from torch import nn


class AddressCentring(nn.Module):
    """Features centred and scaled per dimension before they address nodes (no learned part).

    What every picture (or every sound) has in common, the look of video as
    such, would otherwise steer every query the same way, and product keys then
    send everything to a few hub nodes (address collapse). Like batch
    normalisation without its affine part: in training the statistics of the
    window's present clips (and a running average of them), in evaluation the
    running average.

    Args:
        d: feature width.
        momentum: weight of a window's statistics in the running average.
    """

    mean: torch.Tensor
    var: torch.Tensor

    def __init__(self, d: int, momentum: float = 0.05) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("var", torch.ones(d))

    def forward(self, f: torch.Tensor, present: torch.Tensor | None = None,
                track: bool = True) -> torch.Tensor:
        """``f`` ``[..., d]`` centred and scaled; ``present`` ``[...]`` marks the clips counted.

        ``track = False``: in training, ``f``'s own statistics without moving the
        running average (views drawn for a training term, not the window's clips).
        """
        if self.training and torch.is_grad_enabled():
            rows = f.reshape(-1, f.shape[-1])
            if present is not None:
                rows = rows[present.reshape(-1).bool()]
            if rows.shape[0] >= 2:
                mean, var = rows.mean(0), rows.var(0, unbiased=False)
                if track:
                    with torch.no_grad():
                        self.mean.lerp_(mean.detach(), self.momentum)
                        self.var.lerp_(var.detach(), self.momentum)
                return (f - mean) * torch.rsqrt(var + 1e-5)
        return (f - self.mean) * torch.rsqrt(self.var + 1e-5)
