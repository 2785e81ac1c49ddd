"""Paired association with a delay: item A, then item B, … query A → B.

Each sequence shows ``pairs`` pairs ``(A_i, B_i)`` (A from the lower half of the
item vocabulary, B from the upper half), each pair followed by ``gap`` distractor
tokens, then ``delay`` more distractors, then every A once more as a query whose
target is its B. Distractors come from their own token range
``[vocab, vocab + distractors)`` so they never collide with items.

With ``fixed_mapping`` the pairs are drawn from one seeded world (the same A
always goes with the same B): a continual task whose associations can
accumulate in the committed state across windows.
"""

from __future__ import annotations

import torch

from obs_dist.tasks.mqar import IGNORE


def association_batch(batch: int, vocab: int, pairs: int, gap: int, delay: int,
                      distractors: int, generator: torch.Generator,
                      mapping: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One batch of delayed paired-association sequences.

    Args:
        batch: number of sequences.
        vocab: number of item tokens (targets are items; distractors extra).
        pairs: pairs per sequence.
        gap: distractors after each pair.
        delay: distractors between the last pair and the first query.
        distractors: size of the distractor token range (0 allowed if gap = delay = 0).
        generator: source of randomness.
        mapping: optional fixed ``[vocab/2]`` table A → B (continual variant).

    Returns:
        ``{"tokens": [B, L], "targets": [B, L]}`` with
        ``L = pairs·(2 + gap) + delay + pairs``.
    """
    half = vocab // 2
    if pairs > half:
        raise ValueError(f"task.pairs ({pairs}) must be <= vocab/2 ({half})")
    if (gap or delay) and distractors < 1:
        raise ValueError("task.distractors must be >= 1 when gap or delay is > 0")
    a = torch.argsort(torch.rand(batch, half, generator=generator), dim=1)[:, :pairs]
    if mapping is not None:
        b = mapping[a]
    else:
        b = torch.randint(half, vocab, (batch, pairs), generator=generator)
    stride = 2 + gap
    length = pairs * stride + delay + pairs
    if distractors:
        tokens = torch.randint(vocab, vocab + distractors, (batch, length), generator=generator)
    else:
        tokens = torch.zeros(batch, length, dtype=torch.long)
    targets = torch.full((batch, length), IGNORE, dtype=torch.long)
    starts = torch.arange(pairs) * stride
    tokens[:, starts] = a
    tokens[:, starts + 1] = b
    q0 = pairs * stride + delay
    order = torch.argsort(torch.rand(batch, pairs, generator=generator), dim=1)
    tokens[:, q0:] = a.gather(1, order)
    targets[:, q0:] = b.gather(1, order)
    return {"tokens": tokens, "targets": targets}


def association_mapping(vocab: int, seed: int) -> torch.Tensor:
    """The fixed world A → B for the continual variant."""
    gen = torch.Generator().manual_seed(seed)
    half = vocab // 2
    return torch.randint(half, vocab, (half,), generator=gen)
