"""A small av-stream model and a window of pictures and silence, for the pictures' terms' tests."""

from __future__ import annotations

from typing import Any

import torch

from obs_dist.model.av_stream import AVStreamModel
from obs_dist.model.model import ModelConfig, StreamConfig
from obs_dist.model.writer import WriterConfig


def small_stream_model(**stream: Any) -> AVStreamModel:
    """A small OBS stream model whose pictures teach themselves (``video_ssl``), N = 256."""
    cfg = ModelConfig(encoder="av", d_model=16, n_mels=8, image_size=16,
                      writer=WriterConfig(k_max=4, active=8, backward_links=True),
                      stream=StreamConfig(embed=8, video_ssl=0.5, video_ssl_pictures=6, **stream))
    return AVStreamModel(cfg, 256)


def silent_window(b: int, t: int) -> dict[str, torch.Tensor]:
    """A window of random pictures and silence (no clip is scored: only the pictures' term)."""
    return {"audio": torch.full((b, t, 8, 21), -8.0),
            "video": torch.randint(0, 255, (b, t, 2, 3, 16, 16), dtype=torch.uint8),
            "audio_mask": torch.ones(b, t, dtype=torch.bool),
            "video_mask": torch.ones(b, t, dtype=torch.bool),
            "targets": torch.full((b, t), -100)}
