"""What is heard above the room: the speech gate, the noise floor, and their quantiles.

A recording's sound is mostly its room. Two label-free measures of it decide
what the av-stream model hears and scores (:mod:`obs_dist.model.av_stream`):

* :func:`speech_gate`: a clip is scored when its loud frames rise above the
  quiet frames of its stream's window;
* :func:`above_floor`: each mel band minus its own floor over the clip.

Both are quantiles over many short rows (a band's ~100 frames, 8–16 k rows a
window), where ``torch.quantile`` sorts every row whole: it was 14 % of an
av-stream training step. :func:`quantile` gives its result bit for bit from a
partial sort (``topk`` of the ranks up to the one asked for).
"""

from __future__ import annotations

import torch


def quantile(x: torch.Tensor, q: float, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """``torch.quantile(x, q, dim=dim, keepdim=keepdim)`` (linear interpolation), bit for bit.

    The two order statistics around rank ``q·(n-1)`` come from a ``topk`` of the
    smaller side (the lowest ranks for ``q < 0.5``, the highest otherwise),
    O(n log r) a row against the full sort's O(n log n), and are interpolated as
    ``torch.quantile`` does: the rank in ``x``'s dtype, then ``lerp``. A row
    holding NaN gives NaN, as there.

    Args:
        x: floating-point values.
        q: the quantile, in [0, 1].
        dim: the dimension reduced.
        keepdim: keep ``dim`` with size 1.

    Raises:
        ValueError: ``q`` outside [0, 1] or ``x`` not floating point.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    if not x.is_floating_point():
        raise ValueError(f"quantile needs floating-point values, got {x.dtype}")
    if x.dim() == 0 or x.shape[dim] == 0:  # torch's own answer (or error) for these
        return x.quantile(q, dim=dim, keepdim=keepdim)
    n = x.shape[dim]
    rank = torch.tensor(q, dtype=x.dtype, device=x.device) * (n - 1)
    lo, hi = int(rank.floor()), int(rank.ceil())
    if hi < n - 1 - lo:  # the lowest hi + 1 values, ascending
        low = x.topk(hi + 1, dim=dim, largest=False, sorted=True).values
        below, above = low.narrow(dim, lo, 1), low.narrow(dim, hi, 1)
    else:  # the highest n - lo values, descending
        high = x.topk(n - lo, dim=dim, largest=True, sorted=True).values
        below, above = high.narrow(dim, n - 1 - lo, 1), high.narrow(dim, n - 1 - hi, 1)
    out = torch.lerp(below, above, rank - lo)
    # topk ranks NaN above every number; torch.quantile answers NaN for such a row.
    out = torch.where(x.isnan().any(dim=dim, keepdim=True), x.new_tensor(float("nan")), out)
    return out if keepdim else out.squeeze(dim)


def speech_gate(audio: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which clips carry sound above the noise floor of their stream's window.

    Args:
        audio: log-mel ``[B, T, n_mels, A]``.
        mask: ``[B, T]`` clips that have audio.
        threshold: required rise of the loud frames over the floor (log units).

    Returns:
        ``[B, T]`` float, 1 for a scored clip.
    """
    energy = audio.float().mean(2)  # [B, T, A] per-frame log energy
    b = energy.shape[0]
    present = mask.bool()
    floor = torch.stack([
        quantile(energy[i][present[i]].flatten(), 0.2) if bool(present[i].any())
        else energy.new_zeros(()) for i in range(b)])
    peak = quantile(energy, 0.9, dim=2)
    return ((peak - floor[:, None]) > threshold).float() * present.float()


def above_floor(mels: torch.Tensor, q: float = 0.1) -> torch.Tensor:
    """Log-mel ``[..., n_mels, A]`` minus each band's noise floor over time, clipped at 0.

    The floor is the band's ``q`` quantile over the clip's frames (a word fills
    less than the whole second, so its lowest frames are the room). What is
    left is how far each band rises above the room: the sound of what is said,
    not how loud the room is.
    """
    floor = quantile(mels.float(), q, dim=-1, keepdim=True)
    return (mels - floor).clamp_min(0.0)
