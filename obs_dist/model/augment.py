"""Label-preserving augmentation of audio-visual clips (training only).

One pass over a few hours of recordings shows each moment once, and rehearsal
shows the past again and again: without augmentation a small encoder learns
the rehearsed clips by heart (in-batch accuracy near 1 on rehearsed batches,
far below chance on new ones). What an object or a word *is* does not depend on
where in the picture or in the second it appears, so those are varied:

* :func:`shift_and_flip`: each video clip mirrored left-right half the time and
  moved by up to ``max_shift`` pixels each way (wrapping round);
* :func:`time_shift`: each log-mel clip moved by up to ``max_shift`` frames in
  time (wrapping round).

Both draw from ``gen`` (the global generator when None, whose state every
checkpoint holds, so a resumed run draws the same).
"""

from __future__ import annotations

import torch
from torch import Tensor


def shift_and_flip(clips: Tensor, gen: torch.Generator | None = None,
                   max_shift: int = 4) -> Tensor:
    """Video ``[N, ..., H, W]``: mirrored half the time, moved up to ``max_shift`` px."""
    out = clips.clone()
    flip = torch.rand(len(clips), generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    shifts = torch.randint(-max_shift, max_shift + 1, (len(clips), 2), generator=gen)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = out[i].roll((dy, dx), dims=(-2, -1))
    return out


def time_shift(mels: Tensor, gen: torch.Generator | None = None, max_shift: int = 10) -> Tensor:
    """Log-mel ``[N, n_mels, A]``: each clip moved by up to ``max_shift`` frames in time."""
    out = mels.clone()
    shifts = torch.randint(-max_shift, max_shift + 1, (len(mels),), generator=gen)
    for i, shift in enumerate(shifts.tolist()):
        out[i] = out[i].roll(shift, dims=-1)
    return out
