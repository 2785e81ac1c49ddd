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
        per_stream: in training, a window ``[B, T, d]`` is centred by each
            stream's own statistics (``model.stream.centring_scope = "stream"``;
            a stream with fewer than two present clips by the window's).
    """

    mean: torch.Tensor
    var: torch.Tensor

    def __init__(self, d: int, momentum: float = 0.05, per_stream: bool = False) -> None:
        super().__init__()
        self.momentum = momentum
        self.per_stream = per_stream
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
                if self.per_stream and f.dim() == 3:
                    mean, var = self._stream_statistics(f, present, mean, var)
                return (f - mean) * torch.rsqrt(var + 1e-5)
        return (f - self.mean) * torch.rsqrt(self.var + 1e-5)

    @staticmethod
    def _stream_statistics(f: torch.Tensor, present: torch.Tensor | None, mean: torch.Tensor,
                           var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each stream's mean and variance ``[B, 1, d]`` over its present clips (the
        window's ``mean``/``var`` for a stream with fewer than two)."""
        w = (torch.ones(f.shape[:2], device=f.device, dtype=f.dtype) if present is None
             else present.to(f.dtype))[..., None]
        n = w.sum(1, keepdim=True)
        own = n >= 2
        n = n.clamp_min(1.0)
        m = (w * f).sum(1, keepdim=True) / n
        v = (w * (f - m) ** 2).sum(1, keepdim=True) / n
        return torch.where(own, m, mean), torch.where(own, v, var)
