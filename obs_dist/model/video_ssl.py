"""The pictures teach the video encoder by themselves: a label-free contrastive term.

A long recording has few named moments (a name every few seconds of an object
being in view) and very many silent pictures. Learning what an object looks
like only from the moments a word is heard leaves the video encoder with a few
thousand examples per hour: measured on held-out recordings, its features told
objects apart across scenes *worse than a colour histogram* (docs/results/notes.md,
"fifth round"). CVCL's vision encoder did not learn from the utterances alone
either: it started from a self-supervised model trained on the child's own
frames (DINO on SAYCam). This is that step, done online in the same one pass:

* two views of each sampled picture (:func:`picture_views`: a random square crop
  of 35–100 % of the area resized back, mirrored half the time, brightness and
  offset varied; colour hue is kept, as it is part of what an object is),
* the encoder's feature of each view through a small projection
  (:class:`PictureContrast`), and the normalised-temperature cross-entropy of
  SimCLR (Chen et al. 2020; :mod:`obs_dist.model.view_contrast`): each view must
  pick its twin among the other views.

The term is added to the window's loss with weight ``model.stream.video_ssl``;
the dual-encoder peer, being the same model without a state, gets it too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from obs_dist.model.view_contrast import ViewContrast


def picture_views(frames: Tensor, gen: torch.Generator | None = None,
                  scale: tuple[float, float] = (0.35, 1.0)) -> Tensor:
    """One random view of each picture ``[N, 3, H, W]`` (uint8 or float in [0, 1]).

    Args:
        frames: pictures.
        gen: random generator (the global one when None, held by every checkpoint).
        scale: range of the crop's share of the picture's area.

    Returns:
        ``[N, 3, H, W]`` float in [0, 1].
    """
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    n, _, h, w = x.shape
    side = min(h, w)
    u = torch.rand(n, 6, generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        area = scale[0] + (scale[1] - scale[0]) * float(u[i, 0])
        c = max(4, int(round(side * math.sqrt(area))))
        top = int(float(u[i, 1]) * (h - c + 1))
        left = int(float(u[i, 2]) * (w - c + 1))
        crop = x[i:i + 1, :, top:top + c, left:left + c]
        view = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
        if float(u[i, 3]) < 0.5:
            view = view.flip(-1)
        gain = 0.7 + 0.6 * float(u[i, 4])
        offset = -0.1 + 0.2 * float(u[i, 5])
        out[i] = (view * gain + offset).clamp(0.0, 1.0)
    return out


class PictureContrast(ViewContrast):
    """SimCLR's objective over a video encoder: each picture's two views must find each other.

    ``forward(encoder, frames, gen)``: ``frames`` ``[N, 3, H, W]``, ``encoder``
    maps clips ``[N, F, 3, H, W]`` to ``[N, d]``.
    """

    def views(self, inputs: Tensor, gen: torch.Generator | None) -> Tensor:
        """:func:`picture_views` of the pictures."""
        return picture_views(inputs, gen)

    def encode(self, encoder: nn.Module, views: Tensor) -> Tensor:
        """Each view as a one-frame clip."""
        return encoder(views[:, None])


def sample_pictured_clips(mask: Tensor, count: int, gen: torch.Generator | None = None) -> Tensor:
    """Up to ``count`` of a window's clips that have a picture, as flat clip indices.

    Args:
        mask: ``[B, T]`` which clips have video.
        count: most clips returned.
        gen: random generator of the sample.

    Returns:
        ``[n]`` indices into the window's ``B·T`` clips, n = min(count, present clips);
        :func:`first_frames` gives their pictures.
    """
    present = mask.bool().reshape(-1).nonzero().squeeze(1)
    if present.numel() > count:
        pick = torch.randperm(present.numel(), generator=gen)[:count]
        present = present[pick.to(present.device)]
    return present


def first_frames(video: Tensor, clips: Tensor) -> Tensor:
    """The first frame ``[n, 3, H, W]`` of each of ``clips`` ``[n]`` (a window's flat indices).

    Args:
        video: ``[B, T, F, 3, H, W]`` clips.
        clips: indices into the ``B·T`` clips.
    """
    return video.reshape(-1, *video.shape[2:]).index_select(0, clips)[:, 0]


def sample_neighbour_clips(mask: Tensor, stream: Tensor, when: Tensor, reach: int,
                           count: int, gen: torch.Generator | None = None
                           ) -> tuple[Tensor, Tensor]:
    """Up to ``count`` pairs of pictured clips of one recording at most ``reach`` clips apart.

    A head camera keeps looking at the same things for seconds, so what a picture
    shares with the picture a second later (the object, not its place, size or
    the light) is what the pictures' contrastive term should keep: time gives the
    views (Orhan et al. 2020 learnt SAYCam's frames from their time alone).

    Args:
        mask: ``[B, T]`` which clips have video.
        stream: ``[B·T]`` each clip's recording (an id;
            :func:`~obs_dist.model.av_stream.clip_positions`).
        when: ``[B·T]`` each clip's index in its recording.
        reach: most clips between a picture and its twin (>= 1).
        count: most pairs returned.
        gen: random generator of the draws (the global one when None).

    Returns:
        ``(first, second)``, each ``[n]`` flat clip indices (:func:`first_frames`
        gives their pictures): every present clip with a present clip 1 to
        ``reach`` later in its recording is a candidate ``first``, its twin drawn
        among those; n = min(count, candidates).
    """
    if reach < 1:
        raise ValueError(f"reach must be >= 1, got {reach}")
    present = mask.bool().reshape(-1)
    gap = when[None, :] - when[:, None]
    near = (stream[:, None] == stream[None, :]) & (gap >= 1) & (gap <= reach)
    near = near & present[None, :] & present[:, None]
    firsts = near.any(1).nonzero().squeeze(1)
    if firsts.numel() > count:
        firsts = firsts[torch.randperm(firsts.numel(), generator=gen)[:count].to(firsts.device)]
    # One twin each, uniform among its candidates: the largest random draw where allowed.
    draw = torch.rand(firsts.numel(), near.shape[1], generator=gen).to(mask.device)
    seconds = draw.masked_fill(~near[firsts], -1.0).argmax(1)
    return firsts, seconds
