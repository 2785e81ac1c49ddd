"""Baselines with the same ``batch → logits`` interface, so one harness trains all.

``build_baseline(cfg, vocab, classes)`` returns a :class:`SequenceBaseline` whose
blocks mix the sequence with softmax attention, DeltaNet, Gated DeltaNet, Longhorn
or a GRU.
"""

from __future__ import annotations

from torch import nn

from obs_dist.baselines.attention import CausalSelfAttention
from obs_dist.baselines.common import KINDS, BaselineConfig, SequenceBaseline, count_parameters
from obs_dist.baselines.deltanet import DeltaNetMixer, ShortConvMixer
from obs_dist.baselines.gated_deltanet import GatedDeltaNetMixer
from obs_dist.baselines.gru import GRUMixer
from obs_dist.baselines.longhorn import LonghornMixer

__all__ = ["KINDS", "BaselineConfig", "SequenceBaseline", "build_baseline", "count_parameters"]

_MIXERS: dict[str, type[nn.Module]] = {
    "attention": CausalSelfAttention,
    "deltanet": DeltaNetMixer,
    "gated_deltanet": GatedDeltaNetMixer,
    "longhorn": LonghornMixer,
    "gru": GRUMixer,
}


def build_baseline(cfg: BaselineConfig, vocab: int, classes: int) -> SequenceBaseline:
    """The baseline ``cfg.kind`` for a task with ``vocab`` inputs and ``classes`` outputs."""
    first = ShortConvMixer if cfg.conv_first else None
    return SequenceBaseline(cfg, vocab, classes, _MIXERS[cfg.kind], first)
