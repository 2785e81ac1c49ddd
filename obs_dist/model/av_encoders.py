"""Audio-visual clip encoder: one feature per clip from its video frames and log-mel audio.

Input is the loader's batch (``video`` uint8 [B, T, F, 3, H, W], ``audio``
float32 [B, T, n_mels, A], and the two presence masks); output is
``[B, T, d_model]``. Each modality has a small strided conv encoder, run only on
the clips where that modality is present (absent clips cost nothing and get no
gradient), plus a learned modality embedding; a clip's feature is the sum over
its present modalities, zero for a clip with neither (padding).

The encoders are sized for CPU training (B=8, T=16 at several windows per
second on two cores): video uses ``frames_used`` frames (default 2: the first
and middle) stacked as channels, three convolutions down to 4×4 and global
pooling; audio uses two strided 1-D convolutions over time, per-clip
normalised, with mean and max pooling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VideoClipEncoder(nn.Module):
    """uint8 clips ``[N, F, 3, H, W]`` → ``[N, d_model]``.

    Args:
        d_model: output width.
        image_size: H = W of the frames.
        frames_used: frames taken evenly from each clip (stacked as channels).
        width: channels of the convolutions.
    """

    def __init__(self, d_model: int, image_size: int = 64, frames_used: int = 2,
                 width: int = 64) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if frames_used < 1:
            raise ValueError(f"frames_used must be >= 1, got {frames_used}")
        self.frames_used = frames_used
        stem = 4 if image_size >= 32 else 2
        self.convs = nn.Sequential(
            nn.Conv2d(3 * frames_used, width // 2, kernel_size=stem, stride=stem),
            nn.GELU(),
            nn.Conv2d(width // 2, width, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
        )
        self.proj = nn.Linear(2 * width, d_model)

    def forward(self, clips: Tensor) -> Tensor:
        """Encode ``[N, F, 3, H, W]`` uint8 (or float in [0, 1]) clips."""
        n, f = clips.shape[0], clips.shape[1]
        picks = torch.linspace(0, f - 1, min(f, self.frames_used) + 1)[:-1] \
            if f > 1 else torch.zeros(1)
        idx = picks.round().long().clamp(0, f - 1)
        if idx.numel() < self.frames_used:  # fewer frames than used: repeat the last
            idx = torch.cat([idx, idx[-1:].expand(self.frames_used - idx.numel())])
        x = clips[:, idx]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - 0.5) / 0.25
        h = self.convs(x.reshape(n, -1, x.shape[-2], x.shape[-1]))
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.proj(pooled)


class AudioClipEncoder(nn.Module):
    """log-mel clips ``[N, n_mels, A]`` → ``[N, d_model]``.

    Args:
        d_model: output width.
        n_mels: mel bands of the input.
        width: channels of the convolutions.
        layers: strided convolutions over time. Each doubles the span a feature
            sees before pooling: 2 layers see 13 frames (a phoneme at 10 ms
            frames), 4 see 61 (a syllable sequence: a short word).
        pool: how the mean over time is taken: ``mean`` (every frame alike) or
            ``speech`` (each frame weighted by how far its loudness rises above
            the clip's quietest frame, :func:`speech_weights`, both in the
            clip's normalisation and in the mean over time). A word of half a
            second in a clip of one to three seconds is otherwise a small part of
            both, and the same word heard twice gives two features that differ
            by how much silence surrounds it. The max is taken over every frame
            either way.
    """

    def __init__(self, d_model: int, n_mels: int = 64, width: int = 96,
                 layers: int = 2, pool: str = "mean") -> None:
        super().__init__()
        if n_mels < 1:
            raise ValueError(f"n_mels must be >= 1, got {n_mels}")
        if not 1 <= layers <= 6:
            raise ValueError(f"audio layers must be in [1, 6], got {layers}")
        if pool not in AUDIO_POOLS:
            raise ValueError(f"audio pool must be one of {list(AUDIO_POOLS)}, got {pool!r}")
        self.pool = pool
        convs: list[nn.Module] = []
        for i in range(layers):
            convs += [nn.Conv1d(n_mels if i == 0 else width, width, kernel_size=5, stride=2,
                                padding=2), nn.GELU()]
        self.convs = nn.Sequential(*convs)
        self.proj = nn.Linear(2 * width, d_model)

    def forward(self, mels: Tensor) -> Tensor:
        """Encode ``[N, n_mels, A]`` log-mel spectrograms."""
        x = mels.float()
        # Per-clip normalisation: recording level and microphone vary, the words do not.
        if self.pool == "speech":
            # Over the loud frames: a word's level should not depend on how much
            # silence the clip holds around it.
            w = speech_weights(x, x.shape[-1])[:, None, :] / x.shape[1]
            mean = (x * w).sum(dim=(1, 2), keepdim=True)
            std = ((x - mean).square() * w).sum(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-3)
        else:
            mean = x.mean(dim=(1, 2), keepdim=True)
            std = x.std(dim=(1, 2), keepdim=True).clamp_min(1e-3)
        h = self.convs((x - mean) / std)
        if self.pool == "speech":
            average = (h * speech_weights(x, h.shape[-1])[:, None, :]).sum(dim=2)
        else:
            average = h.mean(dim=2)
        pooled = torch.cat([average, h.amax(dim=2)], dim=1)
        return self.proj(pooled)


AUDIO_POOLS = ("mean", "speech")


def speech_weights(mels: Tensor, steps: int) -> Tensor:
    """``[N, steps]`` weights over time (each row sums to 1): where a clip is loud.

    A frame's loudness is its mean log-mel over bands; its weight is how far that
    rises above the clip's quietest frame, averaged down to the encoder's
    ``steps`` output positions. A clip with no frame above its quietest (silence,
    or a constant tone) is weighted evenly.

    Args:
        mels: ``[N, n_mels, A]`` log-mel clips, as the encoder hears them.
        steps: time positions of the convolutions' output.
    """
    loud = mels.float().mean(dim=1, keepdim=True)
    rise = loud - loud.amin(dim=2, keepdim=True)
    rise = F.adaptive_avg_pool1d(rise, steps)[:, 0] + 1e-6
    return rise / rise.sum(dim=1, keepdim=True)


def encode_present(encoder: nn.Module, inputs: Tensor, mask: Tensor, offset: Tensor) -> Tensor:
    """``encoder(x) + offset`` for the clips where ``mask`` is set, zero elsewhere.

    Args:
        encoder: maps ``[n, ...]`` clips to ``[n, d]``.
        inputs: ``[B, T, ...]`` clips of one modality.
        mask: ``[B, T]`` presence of that modality.
        offset: ``[d]`` added to every present clip (the modality embedding).

    Returns:
        ``[B·T, d]``; absent clips cost nothing and get no gradient.
    """
    b, t = mask.shape
    out = offset.new_zeros(b * t, offset.shape[-1])
    idx = mask.bool().reshape(-1).nonzero().squeeze(1)
    if idx.numel():
        clips = inputs.reshape(b * t, *inputs.shape[2:]).index_select(0, idx.to(inputs.device))
        out = out.index_add(0, idx.to(out.device), encoder(clips) + offset)
    return out


class AVEncoder(nn.Module):
    """Batch of clips → ``[B, T, d_model]``, summing the present modalities.

    Args:
        d_model: feature width.
        n_mels: mel bands of ``audio``.
        image_size: frame size of ``video``.
    """

    def __init__(self, d_model: int, n_mels: int = 64, image_size: int = 64) -> None:
        super().__init__()
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        self.d_model = d_model
        self.video: nn.Module = VideoClipEncoder(d_model, image_size)  # or a front end
        self.audio: nn.Module = AudioClipEncoder(d_model, n_mels)  # or a front end
        # Row 0: video, row 1: audio. Tells the model which senses a clip had.
        self.modality = nn.Parameter(torch.randn(2, d_model) * 0.02)

    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """Encode ``batch["video"]``/``["audio"]`` where their masks are True.

        Returns:
            ``[B, T, d_model]`` features; zero where a clip has no modality.
        """
        video: Tensor = batch["video"]
        audio: Tensor = batch["audio"]
        video_mask: Tensor = batch["video_mask"].bool()
        audio_mask: Tensor = batch["audio_mask"].bool()
        b, t = video_mask.shape
        if audio_mask.shape != (b, t):
            raise ValueError(f"audio_mask shape {tuple(audio_mask.shape)} != video_mask "
                             f"shape {(b, t)}")
        out = (encode_present(self.video, video, video_mask, self.modality[0])
               + encode_present(self.audio, audio, audio_mask, self.modality[1]))
        return out.reshape(b, t, self.d_model)

