"""The sounds teach the audio encoder by themselves: a label-free contrastive term.

The pictures' term (:mod:`obs_dist.model.video_ssl`) made two views of one
picture find each other. This is its counterpart for what is heard. A word's
addresses must agree when the word is said again: in another voice, at another
pitch and speed, in another room, with its start cut differently by the
one-second clip. Learnt only from the moments a picture answers it, the audio
encoder sees each name a few dozen times per recording. Here every sound above
the noise floor (the speech gate) is a training example of its own:

* two views of each sampled clip (:func:`sound_views`): moved in time, shifted
  by up to ``max_band`` mel bands (a higher or lower voice moves its formants
  along the mel axis), its loudness scaled, one band range and one time range
  masked (SpecAugment, Park et al. 2019);
* the audio encoder's feature of each view through a small projection
  (:class:`SoundContrast`) and SimCLR's loss (:mod:`obs_dist.model.view_contrast`).

Nothing here knows what a word is, which voices exist or how many: the views
are generic changes of a log-mel spectrogram. The term is added to the window's
loss with weight ``model.stream.audio_ssl``; the dual-encoder peer gets it too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from obs_dist.model.view_contrast import ViewContrast


def sound_views(mels: Tensor, gen: torch.Generator | None = None, max_time: int = 10,
                max_band: int = 2, mask_bands: int = 6, mask_frames: int = 12) -> Tensor:
    """One random view of each log-mel clip ``[N, n_mels, A]``.

    Args:
        mels: what the encoder hears (after any floor removal).
        gen: random generator (the global one when None, held by every checkpoint).
        max_time: largest shift in time, frames (wrapping round).
        max_band: largest shift along the mel axis, bands (the edge band repeats).
        mask_bands: widest masked band range.
        mask_frames: widest masked time range.

    Returns:
        ``[N, n_mels, A]`` float.
    """
    if mels.dim() != 3:
        raise ValueError(f"mels must be [N, n_mels, A], got shape {tuple(mels.shape)}")
    x = mels.float()
    n, bands, frames = x.shape
    u = torch.rand(n, 7, generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        view = x[i].roll(int(round((2 * float(u[i, 0]) - 1) * max_time)), dims=-1)
        shift = int(round((2 * float(u[i, 1]) - 1) * max_band))
        if shift > 0:
            view = torch.cat([view[:1].expand(shift, -1), view[:-shift]], 0)
        elif shift < 0:
            view = torch.cat([view[-shift:], view[-1:].expand(-shift, -1)], 0)
        view = view * (0.8 + 0.4 * float(u[i, 2]))
        floor = view.amin()
        width = int(float(u[i, 3]) * (mask_bands + 1))
        lo = int(float(u[i, 4]) * max(bands - width, 1))
        view = view.clone()
        view[lo:lo + width] = floor
        width = int(float(u[i, 5]) * (mask_frames + 1))
        lo = int(float(u[i, 6]) * max(frames - width, 1))
        view[:, lo:lo + width] = floor
        out[i] = view
    return out


class SoundContrast(ViewContrast):
    """SimCLR's objective over an audio encoder: each sound's two views must find each other.

    ``forward(encoder, mels, gen)``: ``mels`` ``[N, n_mels, A]`` as the encoder
    hears them, ``encoder`` maps them to ``[N, d]``.
    """

    def views(self, inputs: Tensor, gen: torch.Generator | None) -> Tensor:
        """:func:`sound_views` of the sounds."""
        return sound_views(inputs, gen)


def sample_sounds(audio: Tensor, heard: Tensor, count: int,
                  gen: torch.Generator | None = None) -> Tensor:
    """Up to ``count`` clips of a window that carry sound above the floor.

    Args:
        audio: ``[B, T, n_mels, A]`` log-mel clips as the encoder hears them.
        heard: ``[B, T]`` the speech gate (1 where a clip rises above the floor).
        count: most clips returned.
        gen: random generator of the sample.

    Returns:
        ``[n, n_mels, A]``, n = min(count, heard clips).
    """
    present = heard.bool().reshape(-1).nonzero().squeeze(1)
    if present.numel() > count:
        pick = torch.randperm(present.numel(), generator=gen)[:count]
        present = present[pick.to(present.device)]
    return audio.reshape(-1, *audio.shape[2:]).index_select(0, present)
