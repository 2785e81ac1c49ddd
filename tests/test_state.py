"""BigState: partitions, apply, checksums, moments, refusal of bad deltas."""

from __future__ import annotations

import pytest
import torch

from obs_dist.model.delta import SparseDelta
from obs_dist.model.state import BigState, StateConfig


def _delta(n: int, rows, cols, vals) -> SparseDelta:
    return SparseDelta.from_indices(torch.tensor(rows), torch.tensor(cols),
                                    torch.tensor(vals, dtype=torch.float32), n)


def test_seeded_gaussian_init_is_reproducible_and_gaussian() -> None:
    cfg = StateConfig(nodes=512, partitions=3, init_std=0.02, seed=7)
    a, b = BigState(cfg), BigState(cfg)
    assert a.checksums() == b.checksums()
    m = a.moments()
    assert abs(m["mean"]) < 1e-3 and abs(m["std"] - 0.02) < 1e-3 and abs(m["kurtosis"]) < 0.05
    assert [p.shape[0] for p in a.parts] == [171, 171, 170]
    assert BigState(StateConfig(nodes=512, partitions=3, seed=8)).checksums() != a.checksums()


def test_apply_changes_only_the_named_entries_and_their_partition_checksum() -> None:
    s = BigState(StateConfig(nodes=64, partitions=4, init_std=0.1))
    before = s.matrix().clone()
    sums = s.checksums()
    s.apply(_delta(64, [1, 1, 40], [2, 2, 3], [0.5, 0.25, -1.0]))
    diff = s.matrix() - before
    assert torch.count_nonzero(diff) == 2
    assert float(diff[1, 2]) == pytest.approx(0.75) and float(diff[40, 3]) == pytest.approx(-1.0)
    after = s.checksums()
    assert [x != y for x, y in zip(sums, after)] == [True, False, True, False]


def test_nonfinite_delta_is_refused_and_state_unchanged() -> None:
    s = BigState(StateConfig(nodes=16, partitions=2))
    sums = s.checksums()
    with pytest.raises(ValueError, match="NaN or inf"):
        s.apply(_delta(16, [0, 1], [0, 1], [1.0, float("nan")]))
    assert s.checksums() == sums


def test_bf16_state_adds_in_fp32_and_clip_bounds_entries() -> None:
    s = BigState(StateConfig(nodes=32, partitions=1, dtype="bf16", init_std=0.01,
                             clip_sigma=3.0))
    s.apply(_delta(32, [3, 4], [5, 6], [10.0, -10.0]))
    assert s.matrix().dtype == torch.bfloat16
    assert float(s.matrix()[3, 5]) == pytest.approx(0.03, rel=1e-2)
    assert float(s.matrix()[4, 6]) == pytest.approx(-0.03, rel=1e-2)


@pytest.mark.parametrize("bad,match", [
    ({"nodes": 2}, "nodes"), ({"partitions": 0}, "partitions"), ({"dtype": "fp8"}, "dtype"),
    ({"init_std": -1.0}, "init_std"),
])
def test_bad_state_config_is_refused(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        StateConfig(**bad)


def test_apply_and_entries_address_the_flat_offsets_of_rows_and_columns() -> None:
    """Entries are read and written at ``row · N + col`` (not transposed, no wrap)."""
    state = BigState(StateConfig(nodes=40, partitions=4, init_std=0.0))
    rows, cols = torch.tensor([0, 3, 39, 39], dtype=torch.int32), torch.tensor([39, 2, 0, 39],
                                                                               dtype=torch.int32)
    state.apply(SparseDelta(rows, cols, torch.tensor([1.0, 2.0, 3.0, 4.0]), 40))
    want = torch.zeros(40, 40)
    want[0, 39], want[3, 2], want[39, 0], want[39, 39] = 1.0, 2.0, 3.0, 4.0
    assert torch.equal(state.matrix(), want)
    got = state.entries(torch.tensor([[3, 39], [0, 0]]), torch.tensor([[2, 0], [39, 1]]))
    assert torch.equal(got, torch.tensor([[2.0, 3.0], [1.0, 0.0]]))
