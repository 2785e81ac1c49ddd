"""``WindowMemory.read_top``: the top-m of a read, with the gradient through m entries only (#17).

Its values and columns must be :meth:`WindowMemory.read`'s top-m bit for bit (the
forward pass, and so every write and commit, is unchanged), and its gradients
those of ``read(...).topk(m)`` up to summation order, for the coefficients and
for every block of the window, in both phases.
"""

from __future__ import annotations

import pytest
import torch

from obs_dist.model.window import WindowMemory, entries_at, top_m


def _memory(shared: bool, gen: torch.Generator, n: int = 200
            ) -> tuple[WindowMemory, list[torch.Tensor]]:
    bsz = 3
    memory = WindowMemory(torch.randn(n, n, generator=gen, dtype=torch.float64) * 0.02, bsz,
                          shared=shared)
    leaves = []
    for _ in range(5):
        for kind, (r, c) in {"link": (6, 4), "back": (4, 4)}.items():
            a = torch.randn(bsz, r, generator=gen, dtype=torch.float64, requires_grad=True)
            b = torch.randn(bsz, c, generator=gen, dtype=torch.float64, requires_grad=True)
            leaves += [a, b]
            # Rows among the first 200 (those read below), columns anywhere.
            memory.write(kind, torch.randint(0, 200, (bsz, r), generator=gen), a,
                         torch.randint(0, n, (bsz, c), generator=gen), b)
        memory.next_step()
    return memory, leaves


def _assert_scratch_is_clean(memory: WindowMemory) -> None:
    """Every read puts back the zeros it changed in the window's scratch buffer."""
    scratch = memory._buffers.get("zeros")
    assert scratch is not None and int(scratch.count_nonzero()) == 0


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("n", [200, 2560])  # 2,560: the top-m through blocks (40 of 64 columns)
def test_read_top_equals_the_top_of_a_read(shared: bool, n: int) -> None:
    results = []
    for mode in ("read", "read_top"):
        gen = torch.Generator().manual_seed(7)
        memory, leaves = _memory(shared, gen, n)
        rows = torch.randint(0, 200, (3, 5), generator=gen)
        weights = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
        if mode == "read":
            vals, ids = memory.read(rows, weights).topk(9, dim=1)
        else:
            vals, ids = memory.read_top(rows, weights, 9)
        (vals * torch.randn(vals.shape, generator=gen, dtype=torch.float64)).sum().backward()
        _assert_scratch_is_clean(memory)
        results.append((vals.detach(), ids, weights.grad, [leaf.grad for leaf in leaves]))
    (v0, i0, g0, l0), (v1, i1, g1, l1) = results
    assert torch.equal(v0, v1) and torch.equal(i0, i1)  # the forward pass is unchanged
    assert g0 is not None and float(g0.abs().max()) > 0
    torch.testing.assert_close(g1, g0, atol=1e-12, rtol=0)
    assert sum(1 for g in l0 if g is not None and float(g.abs().max()) > 0) > 0
    for a, b in zip(l1, l0):
        if b is None:
            assert a is None or float(a.abs().max()) == 0
        else:
            assert a is not None
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shared", [False, True])
def test_read_entries_equals_the_read_at_the_columns(shared: bool) -> None:
    """The delta rule's read at chosen columns: values and gradients of ``read(...)[cols]``.

    One column is asked for twice: it gets both gradients.
    """
    results = []
    for mode in ("read", "read_entries"):
        gen = torch.Generator().manual_seed(11)
        memory, leaves = _memory(shared, gen)
        # Rows and columns the blocks wrote, so that the window part is not zero there.
        link = memory.seqs["link"]
        rows = link.rows[:, 1, :5]
        weights = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
        cols = torch.cat([link.cols[:, 1], link.cols[:, 2, :2], link.cols[:, 1, :1]], 1)
        if mode == "read":
            got = memory.read(rows, weights).gather(1, cols)
        else:
            got = memory.read_entries(rows, weights, cols)
        (got * torch.randn(got.shape, generator=gen, dtype=torch.float64)).sum().backward()
        _assert_scratch_is_clean(memory)
        results.append((got.detach(), weights.grad, [leaf.grad for leaf in leaves]))
    (v0, g0, l0), (v1, g1, l1) = results
    torch.testing.assert_close(v1, v0, atol=1e-12, rtol=0)
    assert g0 is not None and g1 is not None and float(g0.abs().max()) > 0
    torch.testing.assert_close(g1, g0, atol=1e-12, rtol=0)
    assert sum(1 for g in l0 if g is not None and float(g.abs().max()) > 0) > 0
    for a, b in zip(l1, l0):
        torch.testing.assert_close(a if a is not None else torch.zeros_like(b),
                                   b if b is not None else torch.zeros_like(a), atol=1e-12, rtol=0)


def test_read_top_without_gradients_and_without_blocks() -> None:
    gen = torch.Generator().manual_seed(1)
    memory = WindowMemory(torch.randn(50, 50, generator=gen), 2)
    rows, weights = torch.randint(0, 50, (2, 3), generator=gen), torch.rand(2, 3, generator=gen)
    with torch.no_grad():
        vals, ids = memory.read_top(rows, weights, 4)
    want_vals, want_ids = memory.read(rows, weights).topk(4, dim=1)
    assert torch.equal(vals, want_vals) and torch.equal(ids, want_ids)
    assert not vals.requires_grad


# 2,560 and 4,096: through the blocks (>= 4·m of 64 columns); 4,100: not a multiple of 64,
# the plain topk.
@pytest.mark.parametrize("n", [2560, 4096, 4100])
def test_top_m_gives_the_values_of_a_full_topk(n: int) -> None:
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(4, n, generator=gen)
    h[0, :64] = 5.0 + torch.arange(64.0)  # the whole top in one block
    vals, ids = top_m(h, 10)
    want_vals, want_ids = h.topk(10, dim=1)
    assert torch.equal(vals, want_vals) and torch.equal(ids, want_ids)
    # Ties at and around the m-th place (small integers, many equal): the same
    # values in the same order, m distinct columns that hold them.
    h = torch.randint(0, 6, (4, n), generator=gen).float()
    vals, ids = top_m(h, 10)
    assert torch.equal(vals, h.topk(10, dim=1).values)
    assert torch.equal(h.gather(1, ids), vals)
    assert all(len(set(row.tolist())) == 10 for row in ids)


def test_entries_at_is_the_advanced_index() -> None:
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(300, 300, generator=gen)
    rows, cols = torch.randint(0, 300, (3, 5), generator=gen), torch.randint(0, 300, (3, 7))
    want = base[rows[:, :, None], cols[:, None, :]]
    assert torch.equal(entries_at(base, rows, cols), want)
    assert torch.equal(entries_at(base.t().contiguous().t(), rows, cols), want)  # strided
    assert torch.equal(entries_at(base.int(), rows, cols), want.int())
