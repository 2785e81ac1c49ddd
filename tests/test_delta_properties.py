"""Property tests of SparseDelta and BigState.apply (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from obs_dist.model.delta import SparseDelta
from obs_dist.model.state import BigState, StateConfig, partition_bounds

N = 23


@st.composite
def deltas(draw, n: int = N, max_size: int = 40):
    size = draw(st.integers(0, max_size))
    rows = draw(st.lists(st.integers(0, n - 1), min_size=size, max_size=size))
    cols = draw(st.lists(st.integers(0, n - 1), min_size=size, max_size=size))
    vals = draw(st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=size,
                         max_size=size))
    return SparseDelta.from_indices(torch.tensor(rows, dtype=torch.int64),
                                    torch.tensor(cols, dtype=torch.int64),
                                    torch.tensor(vals, dtype=torch.float32), n)


@settings(max_examples=60, deadline=None)
@given(st.lists(deltas(), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_any_grouping_and_order_gives_the_same_state(parts, rnd) -> None:
    state_cfg = StateConfig(nodes=N, partitions=3, init_std=0.1, seed=5)
    one_by_one = BigState(state_cfg)
    for d in parts:
        one_by_one.apply(d)
    shuffled = list(parts)
    rnd.shuffle(shuffled)
    grouped = BigState(state_cfg)
    grouped.apply(SparseDelta.cat(shuffled))
    reference = BigState(state_cfg).matrix().double() + sum(d.to_dense().double() for d in parts)
    torch.testing.assert_close(one_by_one.matrix().double(), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped.matrix().double(), reference, atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(deltas())
def test_coalesce_is_deterministic_sorted_and_unique(d) -> None:
    a = d.coalesce()
    b = SparseDelta(d.rows.clone(), d.cols.clone(), d.values.clone(), d.num_nodes).coalesce()
    assert torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols)
    assert torch.equal(a.values.view(torch.int32), b.values.view(torch.int32))  # bit-identical
    keys = a.flat_keys()
    assert bool((keys[1:] > keys[:-1]).all())
    torch.testing.assert_close(a.to_dense(), d.to_dense(), atol=1e-5, rtol=1e-5)
    assert a.rows.dtype == torch.int32 and a.cols.dtype == torch.int32


@settings(max_examples=40, deadline=None)
@given(deltas(), st.integers(1, N))
def test_split_by_partition_covers_every_entry_once(d, parts) -> None:
    bounds = partition_bounds(N, parts)
    pieces = d.split_by_partition(bounds)
    assert sum(p.nnz for p in pieces) == d.nnz
    for p, piece in enumerate(pieces):
        if piece.nnz:
            assert int(piece.rows.min()) >= bounds[p] and int(piece.rows.max()) < bounds[p + 1]


def test_int32_indices_hold_at_65536_nodes_without_dense_allocation() -> None:
    n = 65_536
    rows = torch.tensor([n - 1, n - 1, 0, 46_341, n - 1], dtype=torch.int64)
    cols = torch.tensor([n - 1, n - 2, n - 1, 46_341, n - 1], dtype=torch.int64)
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    d = SparseDelta.from_indices(rows, cols, vals, n).coalesce()
    assert d.rows.dtype == torch.int32
    # (n-1, n-1) was given twice: summed; flat key (n-1)*n+(n-1) > 2**31 is exact.
    assert d.nnz == 4
    last = (d.rows == n - 1) & (d.cols == n - 1)
    assert float(d.values[last]) == 6.0
    assert int(d.flat_keys().max()) == (n - 1) * n + (n - 1) > 2**31
    assert d.nbytes == 4 * (4 + 4 + 4)
    pieces = d.split_by_partition(partition_bounds(n, 8))
    assert [p.nnz for p in pieces] == [1, 0, 0, 0, 0, 1, 0, 2]


def test_out_of_range_index_is_refused() -> None:
    try:
        SparseDelta.from_indices(torch.tensor([5]), torch.tensor([0]), torch.tensor([1.0]), 5)
    except ValueError as exc:
        assert "out of range" in str(exc)
    else:
        raise AssertionError("index 5 of a 5-node state was accepted")
