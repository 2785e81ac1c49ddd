"""``BlockIndices``: the window's block indices in buffers that double when full."""

from __future__ import annotations

import torch

from obs_dist.model.block_indices import BlockIndices


def _blocks(steps: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randint(0, 1000, (3, 5), generator=gen),
             torch.randint(0, 1000, (3, 2), generator=gen)) for _ in range(steps)]


def test_appends_past_the_capacity_keep_every_block_in_order() -> None:
    blocks = _blocks(150, torch.Generator().manual_seed(0))
    index = BlockIndices(*blocks[0], step=0)
    early = None
    for t, (rows, cols) in enumerate(blocks[1:], start=1):
        index.append(rows, cols, step=t)
        if t == 10:
            early = index.rows.clone(), index.rows  # a copy, and the view a read would keep
    assert index.length == 150
    assert torch.equal(index.rows, torch.stack([r for r, _ in blocks], 1))
    assert torch.equal(index.cols, torch.stack([c for _, c in blocks], 1))
    assert torch.equal(index.step, torch.arange(150))
    assert early is not None
    assert torch.equal(early[1], early[0])  # growing never changes what a view showed
    # The window's reads index flat views of the buffers without copying them.
    flat = index.rows.flatten(1)
    assert flat.data_ptr() == index.rows.data_ptr()


def test_carried_blocks_are_a_copy_marked_carried_in() -> None:
    blocks = _blocks(70, torch.Generator().manual_seed(1))
    index = BlockIndices(*blocks[0], step=0)
    for t, (rows, cols) in enumerate(blocks[1:], start=1):
        index.append(rows, cols, step=t)
    carried = index.carried()
    assert torch.equal(carried.rows, index.rows) and torch.equal(carried.cols, index.cols)
    assert torch.equal(carried.step, torch.full((70,), -1))
    carried.append(blocks[0][0], blocks[0][1], step=0)
    assert carried.length == 71 and index.length == 70
    assert torch.equal(index.step, torch.arange(70))  # the earlier window's blocks untouched
