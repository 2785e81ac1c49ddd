"""The step's speed-ups compute what the plain forms compute (issue #17).

* :class:`~obs_dist.model.table_bag.TableBags` (one dense gradient for a
  window's lookups of E) against ``F.embedding_bag`` under plain autograd;
* ``SparseDelta.coalesce`` through a dense scratch (small N) against the sort
  path, bit for bit;
* ``WindowMemory.to_delta`` (indices looked up for nonzero values only) against
  the expansion of every block entry, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from obs_dist.model import delta as delta_module
from obs_dist.model.delta import SparseDelta
from obs_dist.model.table_bag import TableBags
from obs_dist.model.window import WindowMemory


def _lookups(n: int, steps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, n, (4, 6), generator=gen),
             torch.randn(4, 6, generator=gen, dtype=torch.float64).requires_grad_())
            for _ in range(steps)]


def _loss(outs: list[torch.Tensor]) -> torch.Tensor:
    # Each lookup's output is used differently, and one is chained into the next,
    # so gradients reach the table through several paths.
    total = outs[0].pow(2).sum()
    for i, out in enumerate(outs[1:], 1):
        total = total + (out * outs[i - 1].detach().sin()).sum() * (i % 3 - 1)
    return total


@pytest.mark.parametrize("windows", [1, 2])
def test_table_bags_gradients_equal_embedding_bag(windows: int) -> None:
    torch.manual_seed(0)
    table = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    looks = _lookups(50, 12, seed=1)
    grads = []
    for mode in ("plain", "bags"):
        table.grad = None
        for _, w in looks:
            w.grad = None
        per = len(looks) // windows
        for k in range(windows):  # one backward per window, gradients accumulated
            part = looks[k * per:(k + 1) * per]
            if mode == "plain":
                outs = [F.embedding_bag(i, table, per_sample_weights=w, mode="sum")
                        for i, w in part]
            else:
                bags = TableBags(table)
                outs = [bags.bag(i, w) for i, w in part]
            _loss(outs).backward()
        assert table.grad is not None and not table.grad.is_sparse
        grads.append((table.grad.clone(), [w.grad.clone() for _, w in looks]))
    (plain_table, plain_w), (bags_table, bags_w) = grads
    assert float(plain_table.abs().max()) > 0
    torch.testing.assert_close(bags_table, plain_table, atol=1e-10, rtol=0)
    for a, b in zip(bags_w, plain_w):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_table_bags_without_gradients_is_a_plain_bag() -> None:
    table = torch.randn(20, 4, requires_grad=True)
    ids, w = torch.randint(0, 20, (3, 5)), torch.rand(3, 5)
    with torch.no_grad():
        out = TableBags(table).bag(ids, w)
    assert not out.requires_grad
    torch.testing.assert_close(out, F.embedding_bag(ids, table.detach(),
                                                    per_sample_weights=w, mode="sum"))


@pytest.mark.parametrize("nodes,entries,rows", [(64, 20000, 64), (128, 9000, 16), (512, 3000, 8)])
def test_dense_coalesce_is_bit_identical_to_the_sort(monkeypatch: pytest.MonkeyPatch,
                                                     nodes: int, entries: int, rows: int) -> None:
    gen = torch.Generator().manual_seed(nodes)
    r = torch.randint(0, rows, (entries,), generator=gen, dtype=torch.int32)
    c = torch.randint(0, nodes, (entries,), generator=gen, dtype=torch.int32)
    v = torch.randn(entries, generator=gen)
    monkeypatch.setattr(delta_module, "DENSE_COALESCE", 10**9)  # always dense
    dense = SparseDelta(r, c, v, nodes).coalesce()
    monkeypatch.setattr(delta_module, "DENSE_COALESCE", 0)  # always sorted
    ordered = SparseDelta(r, c, v, nodes).coalesce()
    assert dense.nnz == ordered.nnz < entries  # duplicates were summed
    for a, b in ((dense.rows, ordered.rows), (dense.cols, ordered.cols),
                 (dense.values, ordered.values)):
        assert torch.equal(a, b)


def test_to_delta_equals_every_entry_expanded() -> None:
    gen = torch.Generator().manual_seed(3)
    n, bsz = 40, 3
    memory = WindowMemory(torch.zeros(n, n), bsz)
    for _ in range(7):
        for kind, (r, c) in {"link": (6, 4), "back": (4, 4)}.items():
            a = torch.randn(bsz, r, generator=gen) * (torch.rand(bsz, r, generator=gen) > 0.4)
            b = torch.randn(bsz, c, generator=gen) * (torch.rand(bsz, c, generator=gen) > 0.4)
            memory.write(kind, torch.randint(0, n, (bsz, r), generator=gen), a,
                         torch.randint(0, n, (bsz, c), generator=gen), b)
        memory.next_step()
    carried = memory.carry()  # carried blocks (step -1) are never committed
    for _ in range(2):
        carried.write("link", torch.randint(0, n, (bsz, 6), generator=gen),
                      torch.randn(bsz, 6, generator=gen),
                      torch.randint(0, n, (bsz, 4), generator=gen),
                      torch.randn(bsz, 4, generator=gen))
        carried.next_step()
    for mem in (memory, carried):
        rows, cols, vals = mem.entries()
        keep = vals != 0
        expected = SparseDelta.from_indices(rows[keep], cols[keep], vals[keep].float(),
                                            n).coalesce()
        got = mem.to_delta()
        assert got.nnz == expected.nnz > 0
        for a, b in ((got.rows, expected.rows), (got.cols, expected.cols),
                     (got.values, expected.values)):
            assert torch.equal(a, b)
