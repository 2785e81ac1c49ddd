"""The phase scheduler: fixed policies, the adaptive score, hysteresis, metric names."""

from __future__ import annotations

import pytest
import torch

from obs_dist.engine.scheduler import (
    PARALLEL,
    SEQUENTIAL,
    PhaseScheduler,
    SchedulerConfig,
    WindowSignals,
    declared_continuous,
)


@pytest.mark.parametrize("policy,phase", [("always-sequential", SEQUENTIAL),
                                          ("always-parallel", PARALLEL)])
def test_fixed_policies_never_switch(policy: str, phase: str) -> None:
    sched = PhaseScheduler(SchedulerConfig(policy=policy))
    for kind in (1.0, 0.0, -1.0, 1.0):
        sched.observe_window(WindowSignals(100, 10, 5.0, 10, 0.1))  # heavy conflict
        assert sched.decide(kind) == phase
    m = sched.metrics()
    assert m[f"scheduler_decisions_total.{phase}"] == 4
    assert m["phase"] == (1.0 if phase == SEQUENTIAL else 0.0)
    assert m["write_conflict"] == pytest.approx(0.9)


def test_metric_names_are_the_monitoring_contract() -> None:
    m = PhaseScheduler().metrics()
    assert {"scheduler_decisions_total.sequential", "scheduler_decisions_total.parallel",
            "phase", "write_conflict"} <= set(m)


def test_adaptive_follows_declared_kind_with_hysteresis() -> None:
    cfg = SchedulerConfig(weight_conflict=0.0, weight_novelty=0.0, weight_cost=0.0)
    sched = PhaseScheduler(cfg)
    assert sched.decide(0.0) == PARALLEL
    assert sched.decide(1.0) == SEQUENTIAL          # 0.6 >= enter (0.5)
    assert sched.decide(0.6) == SEQUENTIAL          # 0.36: between leave and enter, stays
    assert sched.decide(0.5) == SEQUENTIAL          # 0.30 > leave (0.25), stays
    assert sched.decide(0.3) == PARALLEL            # 0.18 <= leave
    assert sched.decide(0.7) == PARALLEL            # 0.42 < enter: stays parallel
    assert sched.decisions == {SEQUENTIAL: 3, PARALLEL: 3}


def test_adaptive_min_windows_delays_switching() -> None:
    cfg = SchedulerConfig(weight_conflict=0.0, weight_novelty=0.0, weight_cost=0.0,
                          min_windows=3)
    sched = PhaseScheduler(cfg)
    got = [sched.decide(k) for k in (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0)]
    assert got == [PARALLEL, PARALLEL, SEQUENTIAL, SEQUENTIAL, SEQUENTIAL, PARALLEL, PARALLEL]


def test_adaptive_max_windows_probes_the_other_phase() -> None:
    cfg = SchedulerConfig(weight_conflict=0.0, weight_novelty=0.0, weight_cost=0.0,
                          min_windows=2, max_windows=4)
    sched = PhaseScheduler(cfg)
    got = []
    for _ in range(8):
        sched.observe_window(WindowSignals(seconds=0.1))
        got.append(sched.decide(1.0))  # score 0.6: sequential is where it belongs
    # Sequential is held for 4 windows, then parallel is probed for min_windows (2),
    # after which the score takes it back to sequential.
    assert got == [PARALLEL, SEQUENTIAL, SEQUENTIAL, SEQUENTIAL, SEQUENTIAL,
                   PARALLEL, PARALLEL, SEQUENTIAL]
    assert set(sched.seconds_ema) == {SEQUENTIAL, PARALLEL}
    # Without max_windows the same run stays sequential once it got there.
    steady = PhaseScheduler(SchedulerConfig(weight_conflict=0.0, weight_novelty=0.0,
                                            weight_cost=0.0, min_windows=2))
    assert [steady.decide(1.0) for _ in range(8)] == [PARALLEL] + [SEQUENTIAL] * 7


def test_write_conflict_within_and_across_ranks_drives_the_adaptive_policy() -> None:
    cfg = SchedulerConfig(weight_kind=0.0, weight_novelty=0.0, weight_cost=0.0)
    sched = PhaseScheduler(cfg)
    sched.observe_window(WindowSignals(stream_writes=100, union_writes=95))
    assert sched.decide() == PARALLEL  # 5 % conflict
    sched.observe_sync(gathered=200, union=100)  # half the entries written on two ranks
    sched.observe_window(WindowSignals(stream_writes=100, union_writes=95))
    assert sched.decide() == SEQUENTIAL
    assert sched.last["write_conflict"] == pytest.approx(1 - 0.95 * 0.5)


def test_novelty_and_cost_signals() -> None:
    cfg = SchedulerConfig(weight_kind=0.0, weight_conflict=0.0, weight_novelty=1.0,
                          weight_cost=0.0)
    sched = PhaseScheduler(cfg)
    for _ in range(5):
        sched.observe_window(WindowSignals(loss_sum=10.0, scored=10, seconds=0.1))
        assert sched.decide() == PARALLEL
    sched.observe_window(WindowSignals(loss_sum=30.0, scored=10, seconds=0.1))  # loss x3
    assert sched.decide() == SEQUENTIAL and sched.last["novelty"] == 1.0
    # Cost: sequential windows measured 4x slower than parallel ones lower the score.
    costly = PhaseScheduler(SchedulerConfig(weight_conflict=0.0, weight_novelty=0.0,
                                            weight_cost=0.2, min_windows=1))
    costly.observe_window(WindowSignals(seconds=1.0))
    assert costly.decide(1.0) == SEQUENTIAL  # parallel window measured: 1 s
    costly.observe_window(WindowSignals(seconds=4.0))
    costly.decide(0.55)  # sequential window measured: 4 s
    assert costly.last["cost_ratio"] == pytest.approx(4.0)
    assert costly.last["scheduler_score"] == pytest.approx(0.6 * 0.55 - 0.4)


def test_declared_kind_parsing() -> None:
    assert declared_continuous({}) == -1.0
    assert declared_continuous({"kind": ["continuous", "discrete", "continuous", "x"]}) == 0.5
    assert declared_continuous({"kind": torch.tensor([True, False])}) == 0.5
    assert declared_continuous({"kind": "continuous"}) == 1.0


def test_state_dict_round_trip() -> None:
    sched = PhaseScheduler()
    sched.observe_window(WindowSignals(10, 5, 3.0, 3, 0.2))
    sched.decide(1.0)
    other = PhaseScheduler()
    other.load_state_dict(sched.state_dict())
    assert other.state_dict() == sched.state_dict() and other.phase == sched.phase


@pytest.mark.parametrize("bad,match", [({"policy": "random"}, "policy"),
                                       ({"enter": 0.2, "leave": 0.3}, "leave"),
                                       ({"min_windows": 0}, "min_windows"),
                                       ({"min_windows": 3, "max_windows": 3}, "max_windows"),
                                       ({"weight_cost": -1.0}, "weight_cost"),
                                       ({"ema": 1.0}, "ema")])
def test_config_rejects_bad_values(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SchedulerConfig(**bad)
