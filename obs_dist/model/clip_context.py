"""Where a clip sits in its recording, and what is heard around it.

Shared by the av-stream model (:mod:`obs_dist.model.av_stream`: which clips of a
window are one recording's, and how far apart) and by the word–referent suite,
which hears a held-out clip with its neighbours as training did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def clip_positions(batch: dict[str, Any], b: int, t: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's recording (an id) and time (clip index), flattened ``[B·T]``.

    From the batch's ``keys`` (``<stream>/<index>``) when they cover the window,
    so a row that moves on to the next recording mid-window is told apart;
    otherwise the row and the position in the window.
    """
    keys = batch.get("keys")
    if isinstance(keys, list) and len(keys) == b and all(len(r) == t for r in keys):
        names: dict[str, int] = {}
        rec, when = [], []
        for r, row in enumerate(keys):
            for j, key in enumerate(row):
                stream, _, index = key.rpartition("/")
                if not stream or not index.isdigit():  # padding: its own row, its position
                    stream, index = f"\0row{r}", str(j)
                rec.append(names.setdefault(stream, len(names)))
                when.append(int(index))
        return (torch.tensor(rec, device=device), torch.tensor(when, device=device))
    return (torch.arange(b, device=device).repeat_interleave(t),
            torch.arange(t, device=device).repeat(b))


def with_neighbours(clip: Callable[[int], torch.Tensor | None], index: int,
                    context: int) -> torch.Tensor:
    """Clip ``index``'s log-mel ``[M, A]`` with ``context`` neighbours each side, ``[M, (2c+1)·A]``.

    Args:
        clip: a clip's log-mel by index, None where there is none (heard as the
            quietest frame of the clips there are, as in training).
        index: the clip heard.
        context: neighbours on each side (``model.stream.audio_context``).
    """
    parts = [clip(index + j) for j in range(-context, context + 1)]
    present = [p for p in parts if p is not None]
    if not present:
        raise ValueError(f"clip {index} has no audio")
    quiet = torch.stack([p.amin() for p in present]).amin()
    return torch.cat([p if p is not None else quiet.expand_as(present[0])
                      for p in parts], dim=-1)
