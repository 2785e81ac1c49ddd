"""Memory function: how well the state recalls an input as a function of its delay.

Seed ``002`` (Guan et al., "Memory determines learning direction") measures an
SSM's *memory function* ``MF(k)``: how well the input ``k`` steps back can be
reconstructed from the current state, and the *memory capacity*
``MC = Σ_k MF(k)``. For linear reservoirs ``MF(k)`` is the squared correlation
of the best linear readout; for discrete tokens the analogue used here is the
chance-corrected recall accuracy

    MF(k) = (acc_k − 1/V) / (1 − 1/V),

where ``acc_k`` is the accuracy of naming the item shown ``k`` steps before a
probe. The stream is random items from ``[0, V)``; at random positions the item
is replaced by a *probe token* ``V + j`` that asks for the item at delay
``delays[j]``. Probes never point at another probe (such positions are not
scored), so every scored target is an item.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from obs_dist.tasks.mqar import IGNORE


@dataclass
class MemoryFunctionConfig:
    """The recall-at-delay stream.

    Attributes:
        vocab: V, number of item tokens (also the output classes).
        length: tokens per sequence.
        delays: the delays k that probes ask for (each < length).
        probe_rate: chance that a position (after the longest delay) is a probe.
        batch: sequences per batch.
        seed: seed of the stream.
    """

    vocab: int = 16
    length: int = 96
    delays: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    probe_rate: float = 0.25
    batch: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vocab < 2:
            raise ValueError(f"vocab must be >= 2, got {self.vocab}")
        if not self.delays or min(self.delays) < 1:
            raise ValueError(f"delays must be a non-empty list of integers >= 1, "
                             f"got {self.delays}")
        if max(self.delays) >= self.length:
            raise ValueError(f"length ({self.length}) must exceed the longest delay "
                             f"({max(self.delays)})")
        if len(set(self.delays)) != len(self.delays):
            raise ValueError(f"delays must be distinct, got {self.delays}")
        if not 0 < self.probe_rate < 1:
            raise ValueError(f"probe_rate must be in (0, 1), got {self.probe_rate}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")

    @property
    def input_vocab(self) -> int:
        """Items plus one probe token per delay."""
        return self.vocab + len(self.delays)


def memory_function_batch(cfg: MemoryFunctionConfig,
                          generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One batch of probed item streams.

    Returns:
        ``tokens [B, L]``, ``targets [B, L]`` (the item ``delays[j]`` steps back at
        probes, ``-100`` elsewhere) and ``delay_index [B, L]`` (``j`` at scored
        probes, ``-1`` elsewhere) for per-delay accuracy.
    """
    bsz, length = cfg.batch, cfg.length
    delays = torch.tensor(cfg.delays, dtype=torch.long)
    tokens = torch.randint(0, cfg.vocab, (bsz, length), generator=generator)
    start = int(delays.max())
    probe = torch.rand(bsz, length, generator=generator) < cfg.probe_rate
    probe[:, :start] = False
    which = torch.randint(0, len(cfg.delays), (bsz, length), generator=generator)
    tokens = torch.where(probe, cfg.vocab + which, tokens)
    pos = torch.arange(length)[None, :].expand(bsz, -1)
    source = (pos - delays[which]).clamp_min(0)
    recalled = tokens.gather(1, source)
    # A probe that points at another probe has no item to recall: not scored.
    scored = probe & (recalled < cfg.vocab)
    targets = torch.where(scored, recalled, torch.full_like(recalled, IGNORE))
    delay_index = torch.where(scored, which, torch.full_like(which, -1))
    return {"tokens": tokens, "targets": targets, "delay_index": delay_index}


def memory_function_batches(cfg: MemoryFunctionConfig, seed_offset: int = 0
                            ) -> Iterator[dict[str, torch.Tensor]]:
    """An endless stream of batches, deterministic from ``cfg.seed + seed_offset``."""
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
    while True:
        yield memory_function_batch(cfg, gen)


def memory_function(correct: torch.Tensor, delay_index: torch.Tensor,
                    delays: Sequence[int], vocab: int) -> dict[str, object]:
    """Per-delay accuracy, ``MF(k)`` and the capacity ``MC = Σ_k MF(k)``.

    Args:
        correct: ``[B, L]`` bool, prediction right.
        delay_index: ``[B, L]``, index into ``delays`` at scored probes, else -1.
        delays: the delays of the task.
        vocab: V (chance is 1/V).

    Returns:
        ``{"accuracy": [acc per delay], "mf": [MF per delay], "capacity": MC,
        "probes": [count per delay]}``.
    """
    chance = 1.0 / vocab
    accs: list[float] = []
    mfs: list[float] = []
    counts: list[int] = []
    for j in range(len(delays)):
        at = delay_index == j
        n = int(at.sum())
        acc = float((correct & at).sum()) / n if n else float("nan")
        counts.append(n)
        accs.append(acc)
        mfs.append(max(0.0, (acc - chance) / (1.0 - chance)) if n else float("nan"))
    capacity = float(sum(m for m in mfs if m == m))  # NaN-free sum
    return {"accuracy": accs, "mf": mfs, "capacity": capacity, "probes": counts}
