"""Single-process pieces of the distributed engine: sync, deferred commits, checks, windows."""

from __future__ import annotations

import pytest
import torch

from obs_dist.engine.collectives import ByteMeter, gather_equal, gather_uneven, sum_in_rank_order
from obs_dist.engine.replica import (
    SLOW_WEIGHTS,
    DeferredCommits,
    ReplicaChecker,
    find_divergence,
    slow_weights_checksum,
)
from obs_dist.engine.sync import DeltaSync, SyncConfig
from obs_dist.model.delta import SparseDelta
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.window import BlockSeq, WindowMemory


def _delta(n: int, count: int, seed: int) -> SparseDelta:
    gen = torch.Generator().manual_seed(seed)
    return SparseDelta.from_indices(torch.randint(0, n, (count,), generator=gen),
                                    torch.randint(0, n, (count,), generator=gen),
                                    torch.randn(count, generator=gen), n)


def test_sync_of_one_process_is_the_coalesced_delta_and_counts() -> None:
    state = BigState(StateConfig(nodes=64, partitions=4))
    sync = DeltaSync(state.bounds, 64)
    d = _delta(64, 500, 0)
    out = sync(d)
    ref = d.coalesce()
    assert out.coalesced and torch.equal(out.values, ref.values) and torch.equal(out.rows, ref.rows)
    assert sync.counters["sync_calls_total"] == 1 and sync.counters["sync_bytes_total"] == 0
    assert sync.last.union_nnz == ref.nnz
    with pytest.raises(ValueError, match="N=32"):
        sync(_delta(32, 3, 1))


@pytest.mark.parametrize("bad,match", [({"dense_above": -1.0}, "dense_above"),
                                       ({"mode": "fast"}, "mode"),
                                       ({"parallel_every": 0}, "parallel_every"),
                                       ({"check_every": -2}, "check_every"),
                                       ({"combine": "max"}, "combine")])
def test_sync_config_rejects_bad_values(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyncConfig(**bad)


def test_combine_follows_the_writer_rule_unless_set() -> None:
    assert SyncConfig().combine_for("delta") == "mean"
    assert SyncConfig().combine_for("hebbian") == "sum"
    assert SyncConfig(combine="sum").combine_for("delta") == "sum"
    assert SyncConfig(combine="mean").combine_for("hebbian") == "mean"
    with pytest.raises(ValueError, match="'oja'"):
        SyncConfig().combine_for("oja")
    assert DeltaSync([0, 8], 8, rule="delta").combine == "mean"


def test_coalesce_mean_divides_each_key_by_its_copies() -> None:
    # Key (0, 1) three times, (2, 3) once, (1, 0) twice; order of arrival kept per key.
    d = SparseDelta.from_indices(torch.tensor([0, 2, 0, 1, 0, 1]), torch.tensor([1, 3, 1, 0, 1, 0]),
                                 torch.tensor([1.0, 5.0, 2.0, -4.0, 6.0, 2.0]), 4)
    got = d.coalesce("mean")
    assert got.rows.tolist() == [0, 1, 2] and got.cols.tolist() == [1, 0, 3]
    assert got.values.tolist() == [3.0, -1.0, 5.0]
    assert d.coalesce().values.tolist() == [9.0, -2.0, 5.0]
    with pytest.raises(ValueError, match="reduce"):
        d.coalesce("max")


def test_collectives_in_a_world_of_one() -> None:
    t = torch.arange(6.0).view(2, 3)
    assert torch.equal(gather_equal(t), t[None])
    assert torch.equal(sum_in_rank_order(t.reshape(-1)), t.reshape(-1))
    meter = ByteMeter()
    assert torch.equal(gather_uneven(t, [2], meter)[0], t) and meter.bytes_sent == 0
    with pytest.raises(ValueError, match="holds 2 rows"):
        gather_uneven(t, [3])


def test_deferred_commits_restore_the_exact_bits_then_return_the_sum() -> None:
    cfg = StateConfig(nodes=128, partitions=2, init_std=0.02, clip_sigma=2.0, seed=3)
    state = BigState(cfg)
    reference = BigState(cfg)
    before = state.checksums()
    deferred = DeferredCommits(state)
    deltas = [_delta(128, 400, s) for s in range(3)]
    for d in deltas:
        deferred.add(d.coalesce())
    deferred.add(SparseDelta.empty(128))
    assert deferred.windows == 4 and state.checksums() != before  # own writes visible at once
    touched = torch.unique(torch.cat([d.coalesce().flat_keys() for d in deltas])).numel()
    assert deferred.saved_entries == touched
    total = deferred.take()
    assert state.checksums() == before  # restored bit for bit (clipping included)
    assert deferred.windows == 0 and deferred.saved_entries == 0
    expected = SparseDelta.cat([d.coalesce() for d in deltas]).coalesce()
    assert torch.equal(total.values, expected.values) and torch.equal(total.cols, expected.cols)
    state.apply(total)
    reference.apply(expected)
    assert state.checksums() == reference.checksums()
    bad = SparseDelta.from_indices(torch.tensor([1]), torch.tensor([2]),
                                   torch.tensor([float("nan")]), 128)
    with pytest.raises(ValueError, match="NaN"):
        deferred.add(bad)


def test_find_divergence_names_items_and_odd_ranks() -> None:
    names = ["partition 0", "partition 1", SLOW_WEIGHTS]
    same = [[1, 2, 3]] * 4
    assert find_divergence(same, names) == []
    table = [[1, 2, 3], [1, 9, 3], [1, 2, 3], [7, 2, 3]]
    assert find_divergence(table, names) == [("partition 0", [3]), ("partition 1", [1])]
    # A tie between two values: the lowest rank's value is the reference.
    assert find_divergence([[1, 0, 0], [2, 0, 0]], names) == [("partition 0", [1])]


def test_replica_checker_hook_in_one_process() -> None:
    state = BigState(StateConfig(nodes=64, partitions=4))
    model = torch.nn.Linear(3, 2)
    flushed = []
    checker = ReplicaChecker(state, 5, model, before_check=lambda: flushed.append(1))
    assert checker.names()[-1] == SLOW_WEIGHTS and len(checker.checksums()) == 5

    class FakeStep:
        sink = None

        def __init__(self, step: int) -> None:
            self.step = step

    metrics: dict[str, float] = {}
    checker(FakeStep(3), metrics)
    assert flushed == [] and metrics["checksum_mismatches_total"] == 0
    checker(FakeStep(5), metrics)
    assert flushed == [1] and checker.checks == 1
    crc = slow_weights_checksum(model)
    with torch.no_grad():
        model.weight[0, 0] += 1
    assert slow_weights_checksum(model) != crc


def test_foreign_blocks_are_visible_next_step_to_all_streams_and_never_committed() -> None:
    n = 32
    memory = WindowMemory(torch.zeros(n, n), batch=2, shared=True)
    memory.write("link", torch.tensor([[1], [2]]), torch.tensor([[1.0], [1.0]]),
                 torch.tensor([[4], [5]]), torch.tensor([[2.0], [2.0]]))
    memory.receive("link", BlockSeq(torch.tensor([[[7]]]), torch.tensor([[[1.0]]]),
                                    torch.tensor([[[9]]]), torch.tensor([[[5.0]]]),
                                    torch.tensor([0])))
    probe = torch.tensor([[7], [7]])
    w = torch.ones(2, 1)
    assert memory.read(probe, w)[:, 9].tolist() == [0.0, 0.0]  # written this step
    memory.next_step()
    assert memory.read(probe, w)[:, 9].tolist() == [5.0, 5.0]  # every stream, next step
    delta = memory.to_delta()
    assert sorted(zip(delta.rows.tolist(), delta.cols.tolist())) == [(1, 4), (2, 5)]
    carried = memory.carry(shared=False)
    assert carried.read(probe, w)[:, 9].tolist() == [0.0, 0.0]  # parallel: own writes only
    with pytest.raises(ValueError, match="pseudo-stream"):
        memory.receive("link", BlockSeq(torch.zeros(2, 1, 1, dtype=torch.long),
                                        torch.zeros(2, 1, 1), torch.zeros(2, 1, 1,
                                                                          dtype=torch.long),
                                        torch.zeros(2, 1, 1), torch.tensor([0])))


def test_write_overlap_counts_entries_shared_by_streams() -> None:
    memory = WindowMemory(torch.zeros(16, 16), batch=2)
    rows = torch.tensor([[1, 2], [1, 3]])
    cols = torch.tensor([[4], [4]])
    a = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # stream 1 writes nothing at row 3
    memory.write("link", rows, a, cols, torch.ones(2, 1))
    per_stream, union = memory.write_overlap()
    assert (per_stream, union) == (3, 2)  # (1,4) by both streams, (2,4) by stream 0
    assert memory.to_delta().nnz == union
