"""State tracking: parity and modular arithmetic, trained short and tested long.

Both tasks ask a sequence model to carry a small finite state (a group element)
through every step, which linear-recurrent SSMs with real, time-invariant
transitions cannot do at arbitrary length (AUSSM, seed ``004``). The usual
protocol, followed here: train on sequences of at most 40 tokens, test on
sequences of up to 256, and report accuracy as a function of position.

* **parity**: tokens are bits ``{0, 1}``; the target at every position is the
  parity (XOR) of the bits so far.
* **modular**: ``n₁ op₁ n₂ op₂ n₃ …`` with numbers in ``[0, m)`` and operators
  ``+``/``−`` (tokens ``m`` and ``m + 1``); the target at every number is the
  running value ``n₁ op₁ n₂ … mod m``, operators are not scored. The first
  number is the starting value.

Every position that has a target is scored (dense supervision), so the
per-position accuracy curve shows exactly where a model stops tracking.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from obs_dist.tasks.mqar import IGNORE

KINDS = ("parity", "modular")


@dataclass
class StateTrackingConfig:
    """One state-tracking task and its length protocol.

    Attributes:
        kind: ``parity`` or ``modular``.
        modulus: m of the modular task (parity is m = 2 with only ``+``).
        train_min_len: shortest training sequence.
        train_max_len: longest training sequence (the protocol uses 40).
        test_lengths: lengths evaluated after training (up to 256).
        batch: sequences per batch.
        seed: seed of the stream.
    """

    kind: Literal["parity", "modular"] = "parity"
    modulus: int = 5
    train_min_len: int = 4
    train_max_len: int = 40
    test_lengths: list[int] = field(default_factory=lambda: [40, 64, 128, 256])
    batch: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.modulus < 2:
            raise ValueError(f"modulus must be >= 2, got {self.modulus}")
        if not 2 <= self.train_min_len <= self.train_max_len:
            raise ValueError(f"train_min_len ({self.train_min_len}) must be in "
                             f"[2, train_max_len={self.train_max_len}]")
        if not self.test_lengths or min(self.test_lengths) < 2:
            raise ValueError(f"test_lengths must be a non-empty list of lengths >= 2, "
                             f"got {self.test_lengths}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")

    @property
    def input_vocab(self) -> int:
        """Input tokens: bits, or numbers plus the two operators."""
        return 2 if self.kind == "parity" else self.modulus + 2

    @property
    def classes(self) -> int:
        """Output classes: the values of the tracked state."""
        return 2 if self.kind == "parity" else self.modulus


def parity_batch(batch: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random bit strings and their running parity.

    Args:
        batch: number of sequences.
        length: tokens per sequence (>= 1).
        generator: source of randomness.

    Returns:
        ``{"tokens": [B, L], "targets": [B, L]}``; every position is scored.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    bits = torch.randint(0, 2, (batch, length), generator=generator)
    return {"tokens": bits, "targets": bits.cumsum(dim=1) % 2}


def modular_batch(batch: int, length: int, modulus: int,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random ``n₁ op₁ n₂ …`` expressions and their running value mod ``modulus``.

    Args:
        batch: number of sequences.
        length: tokens per sequence (numbers at even, operators at odd positions).
        modulus: m; numbers are in ``[0, m)``, ``+`` is token m and ``−`` is m + 1.
        generator: source of randomness.

    Returns:
        ``{"tokens": [B, L], "targets": [B, L]}`` with targets at number positions.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if modulus < 2:
        raise ValueError(f"modulus must be >= 2, got {modulus}")
    n_numbers = (length + 1) // 2
    numbers = torch.randint(0, modulus, (batch, n_numbers), generator=generator)
    # One operator more than numbers: an even length ends on an operator.
    minus = torch.randint(0, 2, (batch, n_numbers + 1), generator=generator).bool()
    minus[:, 0] = False  # the first number is the starting value
    signed = torch.where(minus[:, :n_numbers], -numbers, numbers)
    running = signed.cumsum(dim=1).remainder(modulus)
    tokens = torch.empty(batch, length, dtype=torch.long)
    targets = torch.full((batch, length), IGNORE, dtype=torch.long)
    tokens[:, 0::2] = numbers
    targets[:, 0::2] = running
    # The operator before number i sits at position 2i − 1.
    ops = minus[:, 1: length // 2 + 1].long() + modulus
    tokens[:, 1::2] = ops
    return {"tokens": tokens, "targets": targets}


def state_tracking_batch(cfg: StateTrackingConfig, length: int,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One batch of ``cfg``'s task at a given length."""
    if cfg.kind == "parity":
        return parity_batch(cfg.batch, length, generator)
    return modular_batch(cfg.batch, length, cfg.modulus, generator)


def train_batches(cfg: StateTrackingConfig, seed_offset: int = 0
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches, each of one length drawn from the training range."""
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
    while True:
        length = int(torch.randint(cfg.train_min_len, cfg.train_max_len + 1, (1,),
                                   generator=gen))
        yield state_tracking_batch(cfg, length, gen)


def test_batches(cfg: StateTrackingConfig, length: int, count: int,
                 seed_offset: int = 1_000_003) -> list[dict[str, torch.Tensor]]:
    """``count`` evaluation batches of one length (a stream disjoint from training)."""
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset + length)
    return [state_tracking_batch(cfg, length, gen) for _ in range(count)]


def accuracy_by_position(correct: torch.Tensor, scored: torch.Tensor,
                         buckets: Sequence[int]) -> dict[str, float]:
    """Accuracy of the scored positions, grouped into position buckets.

    Args:
        correct: ``[B, L]`` bool, prediction right.
        scored: ``[B, L]`` bool, position has a target.
        buckets: increasing upper bounds of the buckets (positions are 1-based),
            e.g. ``[40, 64, 128, 256]`` gives ``1-40``, ``41-64``, ….

    Returns:
        ``{"1-40": acc, "41-64": acc, …}`` for the buckets that hold positions.
    """
    out: dict[str, float] = {}
    length = correct.shape[1]
    lo = 1
    for hi in buckets:
        if lo > length:
            break
        sl = slice(lo - 1, min(hi, length))
        n = int(scored[:, sl].sum())
        if n:
            out[f"{lo}-{min(hi, length)}"] = float((correct[:, sl] & scored[:, sl]).sum()) / n
        lo = hi + 1
    return out
