"""The shared frame of every baseline: encoder → L residual blocks → norm → head.

A baseline is a ``batch → logits`` module (``forward(batch) -> [B, T, classes]``)
built around one *mixer* per block, the part that moves information along the
sequence (softmax attention, a DeltaNet or Longhorn recurrence, a GRU). Each
block is pre-norm ``x + mixer(LN(x))`` then ``x + MLP(LN(x))``. The encoder is
the same module family OBS uses (:func:`obs_dist.model.encoders.build_encoder`), so a
harness trains every model on the same batches with the same loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from obs_dist.model.encoders import build_encoder

KINDS = ("attention", "deltanet", "gated_deltanet", "longhorn", "gru")


@dataclass
class BaselineConfig:
    """One baseline model.

    Attributes:
        kind: ``attention`` (softmax), ``deltanet``, ``gated_deltanet``, ``longhorn``
            or ``gru``.
        d_model: residual width.
        layers: number of blocks.
        heads: attention / DeltaNet heads (must divide ``d_model``).
        state_dim: Longhorn state size per channel.
        mlp_ratio: width of each block's MLP relative to ``d_model`` (0: no MLP).
        delta_form: (gated) DeltaNet's delta rule ``chunked`` (WY form, for
            training) or ``recurrent`` (the step-by-step reference); same outputs.
        longhorn_form: Longhorn's recurrence ``recurrent`` (step by step: the
            fastest on CPU, where both forms are bound by memory traffic) or
            ``chunked`` (a parallel scan within chunks: fewer, larger operations,
            for devices bound by kernel launches); same outputs.
        chunk_size: steps per chunk of the chunked forms.
        conv_first: the first block's mixer is a short convolution
            (``ShortConvMixer``), the others are ``kind`` (Zoology's MQAR models:
            two layers, convolution then mixer).
        tie_head: the output head shares the token embedding's weights (Zoology's
            and GPT-2's language models; needs the ``tokens`` encoder and as many
            classes as tokens). Recall then has to copy an embedding, not learn a
            second table that matches the first.
        init_std: ``> 0``: Zoology's / GPT-2's initialisation: every linear and
            embedding weight ``N(0, init_std)``, biases zero, and the residual
            branches' last projections (mixer ``out``, MLP second layer) scaled by
            ``1/sqrt(2·layers)``; ``0``: PyTorch's default initialisation.
        encoder: ``tokens`` or ``av`` (as ``model.encoder`` of OBS).
        n_mels: log-mel bands (``av``).
        image_size: frame side (``av``).
    """

    kind: Literal["attention", "deltanet", "gated_deltanet", "longhorn", "gru"] = "attention"
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    state_dim: int = 16
    mlp_ratio: int = 2
    delta_form: Literal["chunked", "recurrent"] = "chunked"
    longhorn_form: Literal["chunked", "recurrent"] = "recurrent"
    chunk_size: int = 64
    conv_first: bool = False
    tie_head: bool = False
    init_std: float = 0.0
    encoder: Literal["tokens", "av"] = "tokens"
    n_mels: int = 64
    image_size: int = 64

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.d_model < 2:
            raise ValueError(f"d_model must be >= 2, got {self.d_model}")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.heads < 1 or self.d_model % self.heads:
            raise ValueError(f"heads ({self.heads}) must be >= 1 and divide d_model "
                             f"({self.d_model})")
        if self.kind == "attention" and (self.d_model // self.heads) % 2:
            raise ValueError(f"attention head width d_model/heads = "
                             f"{self.d_model // self.heads} must be even (rotary positions)")
        if self.state_dim < 1:
            raise ValueError(f"state_dim must be >= 1, got {self.state_dim}")
        if self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0, got {self.mlp_ratio}")
        if self.delta_form not in ("chunked", "recurrent"):
            raise ValueError(f"delta_form must be 'chunked' or 'recurrent', "
                             f"got {self.delta_form!r}")
        if self.longhorn_form not in ("chunked", "recurrent"):
            raise ValueError(f"longhorn_form must be 'chunked' or 'recurrent', "
                             f"got {self.longhorn_form!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.conv_first and self.layers < 2:
            raise ValueError(f"conv_first needs layers >= 2 (a convolution, then the mixer), "
                             f"got {self.layers}")
        if self.encoder not in ("tokens", "av"):
            raise ValueError(f"encoder must be 'tokens' or 'av', got {self.encoder!r}")
        if self.tie_head and self.encoder != "tokens":
            raise ValueError(f"tie_head needs the 'tokens' encoder (the head shares its "
                             f"embedding), got encoder {self.encoder!r}")
        if not self.init_std >= 0:
            raise ValueError(f"init_std must be >= 0 (0: PyTorch's defaults), "
                             f"got {self.init_std}")


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(LN(x))``, then ``x + MLP(LN(x))``.

    Args:
        d_model: residual width.
        mixer: the sequence mixer ``[B, T, d] → [B, T, d]``.
        mlp_ratio: hidden width of the MLP in units of ``d_model`` (0: none).
    """

    def __init__(self, d_model: int, mixer: nn.Module, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.mixer = mixer
        self.mlp: nn.Module | None = None
        if mlp_ratio:
            self.norm2 = nn.LayerNorm(d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                     nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, d] → [B, T, d]``."""
        x = x + self.mixer(self.norm1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class SequenceBaseline(nn.Module):
    """Encoder, ``layers`` blocks of one mixer kind, final norm and linear head.

    Args:
        cfg: the baseline.
        vocab: input tokens (``tokens`` encoder).
        classes: outputs of the head.
        make_mixer: builds one block's mixer from ``cfg``.
        make_first: builds the first block's mixer instead (``cfg.conv_first``).
    """

    def __init__(self, cfg: BaselineConfig, vocab: int, classes: int,
                 make_mixer: Callable[[BaselineConfig], nn.Module],
                 make_first: Callable[[BaselineConfig], nn.Module] | None = None) -> None:
        super().__init__()
        if classes < 2:
            raise ValueError(f"classes must be >= 2, got {classes}")
        if cfg.encoder == "tokens" and vocab < 2:
            raise ValueError(f"vocab must be >= 2 for the tokens encoder, got {vocab}")
        self.config = cfg
        self.encoder = build_encoder(cfg.encoder, cfg.d_model, vocab, cfg.n_mels,
                                     cfg.image_size)
        makers = [make_mixer] * cfg.layers
        if make_first is not None:
            makers[0] = make_first
        self.blocks = nn.ModuleList(Block(cfg.d_model, make(cfg), cfg.mlp_ratio)
                                    for make in makers)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, classes)
        if cfg.init_std > 0:
            initialise(self, cfg.init_std, cfg.layers)
        if cfg.tie_head:
            if classes != vocab:
                raise ValueError(f"tie_head needs as many classes as tokens (the head is "
                                 f"the embedding), got {classes} classes and {vocab} tokens")
            self.head = nn.Linear(cfg.d_model, classes, bias=False)
            embed = self.encoder.embed
            assert isinstance(embed, nn.Embedding)
            self.head.weight = embed.weight

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits ``[B, T, classes]`` for every step of the batch."""
        x = self.encoder(batch)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def initialise(model: SequenceBaseline, std: float, layers: int) -> None:
    """Zoology's / GPT-2's initialisation of ``model`` (see ``BaselineConfig.init_std``).

    Scaling the residual branches' last projections by ``1/sqrt(2·layers)`` keeps
    the residual stream's variance from growing with depth at initialisation
    (GPT-2; Zoology's ``_init_weights``). Other parameters (norms, a GRU's
    recurrence, Gated DeltaNet's decay) keep their own initialisation.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
    for block in model.blocks:
        assert isinstance(block, Block)
        last = [getattr(block.mixer, "out", None)]
        if isinstance(block.mlp, nn.Sequential):
            last.append(block.mlp[-1])
        for linear in last:
            if isinstance(linear, nn.Linear):
                nn.init.normal_(linear.weight, std=std / math.sqrt(2 * layers))


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
