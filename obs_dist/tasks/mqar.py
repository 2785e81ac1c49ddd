"""Multi-query associative recall (Zoology-style MQAR).

A sequence holds ``pairs`` key-value pairs (keys from the lower half of the
vocabulary, values from the upper half), then every key once more as a query at
a random later position; the rest is the padding token 0. Only queries are
scored: the target at a query position is the value paired with that key.
"""

from __future__ import annotations

import torch

IGNORE = -100


def mqar_batch(batch: int, vocab: int, seq_len: int, pairs: int,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One batch of MQAR sequences.

    Args:
        batch: number of sequences.
        vocab: vocabulary size (token 0 is padding; keys in ``[1, vocab/2)``,
            values in ``[vocab/2, vocab)``).
        seq_len: sequence length (``>= 3·pairs``).
        pairs: key-value pairs per sequence.
        generator: source of randomness.

    Returns:
        ``{"tokens": [B, L] int64, "targets": [B, L] int64 (-100 where unscored)}``.
    """
    half = vocab // 2
    if pairs > half - 1:
        raise ValueError(f"task.pairs ({pairs}) must be < vocab/2 ({half}) for distinct keys")
    if seq_len < 3 * pairs:
        raise ValueError(f"task.seq_len ({seq_len}) must be >= 3 * pairs ({3 * pairs})")
    keys = torch.argsort(torch.rand(batch, half - 1, generator=generator), dim=1)[:, :pairs] + 1
    values = torch.randint(half, vocab, (batch, pairs), generator=generator)
    tokens = torch.zeros(batch, seq_len, dtype=torch.long)
    targets = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    tokens[:, 0:2 * pairs:2] = keys
    tokens[:, 1:2 * pairs:2] = values
    free = seq_len - 2 * pairs
    # Query slots: a random subset of the free positions, in random key order.
    slots = torch.argsort(torch.rand(batch, free, generator=generator), dim=1)[:, :pairs]
    slots = torch.sort(slots, dim=1).values + 2 * pairs
    order = torch.argsort(torch.rand(batch, pairs, generator=generator), dim=1)
    tokens.scatter_(1, slots, keys.gather(1, order))
    targets.scatter_(1, slots, values.gather(1, order))
    return {"tokens": tokens, "targets": targets}
