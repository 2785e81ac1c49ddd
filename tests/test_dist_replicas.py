"""The distributed engine with 2 and 4 real processes (gloo over loopback), and NCCL.

One run of ``tests/support/dist_harness.py`` per world executes every scenario on every
rank; the tests below compare what the ranks wrote and replay the recorded sync
inputs in this (single) process. The ``nccl2`` world runs the same scenarios on
CUDA tensors over NCCL when the machine has two GPUs (NCCL needs one per rank);
``OBS_DIST_RESULTS=DIR`` checks results produced elsewhere instead (e.g.
``torchrun --nproc_per_node 2 tests/support/dist_harness.py DIR --device cuda --backend nccl``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from support.dist_harness import CHECK_EVERY, PARALLEL_EVERY, STEPS, run_world, small_config

from obs_dist.model.delta import SparseDelta
from obs_dist.model.state import BigState

WORLDS = ["gloo2", "gloo4", "nccl2"]
# Every test reads one multi-rank harness run per world (45-95 s each): slow.
pytestmark = pytest.mark.slow


def _external() -> tuple[int, Path, list[dict[str, Any]]]:
    out = Path(os.environ["OBS_DIST_RESULTS"])
    files = sorted(out.glob("rank*.json"), key=lambda f: int(f.stem[4:]))
    ranks = [json.loads(f.read_text()) for f in files]
    return len(ranks), out, ranks


@pytest.fixture(scope="module", params=WORLDS)
def world_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[int, Path, list[dict[str, Any]]]:
    name = str(request.param)
    if "OBS_DIST_RESULTS" in os.environ:
        if name != "gloo2":
            pytest.skip("OBS_DIST_RESULTS is set: checking those results once")
        return _external()
    world = int(name[-1])
    out = tmp_path_factory.mktemp(name)
    if name.startswith("nccl"):
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus < world:
            pytest.skip(f"NCCL check needs {world} GPUs (one per rank); this machine has {gpus}")
        return world, out, run_world(world, out, device="cuda", backend="nccl")
    return world, out, run_world(world, out)


def expected_parallel_syncs() -> int:
    """Syncs of the parallel phase: every K windows, plus a flush at every replica check."""
    syncs = pending = 0
    for step in range(1, STEPS + 1):
        pending += 1  # one window per step
        if pending == PARALLEL_EVERY:
            syncs, pending = syncs + 1, 0
        if step % CHECK_EVERY == 0 and pending:
            syncs, pending = syncs + 1, 0
    return syncs + (1 if pending else 0)


def _replay(out: Path, world: int, phase: str, syncs: int, device: str) -> list[int]:
    """A single process applying, per sync, the rank-ordered sum of every rank's input."""
    # On the ranks' device type: CPU and CUDA coalesce add in different orders.
    kind = device.split(":")[0]
    state = BigState(small_config().state, device=kind)
    inputs = [load_file(str(out / f"rank{r}_{phase}_inputs.safetensors"), device=kind)
              for r in range(world)]
    n = state.num_nodes
    for i in range(syncs):
        parts = [SparseDelta(inp[f"{i}.rows"], inp[f"{i}.cols"], inp[f"{i}.values"], n)
                 for inp in inputs]
        state.apply(SparseDelta.cat(parts).coalesce())
    return state.checksums()


@pytest.mark.parametrize("phase", ["sequential", "parallel"])
def test_replicas_bit_identical_after_200_steps(world_run, phase: str) -> None:
    world, _, ranks = world_run
    results = [r[phase] for r in ranks]
    assert all(r["steps"] == STEPS for r in results)
    assert len({tuple(r["checksums"]) for r in results}) == 1, [r["checksums"] for r in results]
    assert len({r["slow"] for r in results}) == 1  # slow weights too
    # Mid-run checks ran and found nothing.
    assert all(r["checks"] == STEPS // CHECK_EVERY and r["mismatches"] == 0 for r in results)
    first = results[0]
    assert first["checksums"] != BigState(small_config().state).checksums()  # it changed
    assert first["sync_bytes"] > 0
    assert first["syncs"] == (expected_parallel_syncs() if phase == "parallel" else STEPS)


def test_both_summation_paths_ran_in_the_200_step_runs(world_run) -> None:
    _, _, ranks = world_run
    runs = [ranks[0][phase] for phase in ("sequential", "parallel")]
    dense = sum(r["dense_partitions"] for r in runs)
    assert 0 < dense < sum(r["syncs"] * r["partitions"] for r in runs)


@pytest.mark.parametrize("phase", ["parallel", "sequential"])
def test_replicas_equal_single_process_sum_of_rank_deltas(world_run, phase: str) -> None:
    """Replaying every sync's per-rank inputs, summed in one process, gives the same bits."""
    world, out, ranks = world_run
    replay = _replay(out, world, phase, ranks[0][phase]["syncs"], ranks[0]["device"])
    assert replay == ranks[0][phase]["checksums"]


@pytest.mark.parametrize("phase", ["parallel", "sequential"])
def test_phase_equals_one_process_running_all_streams(world_run, phase: str) -> None:
    """W ranks × 3 streams equal one process × 3W streams (fp32 rounding of the sums aside)."""
    _, _, ranks = world_run
    res = [r[f"equivalence_{phase}"] for r in ranks]
    assert len({tuple(r["checksums"]) for r in res}) == 1
    assert res[0]["max_change"] > 0.1  # the windows wrote a lot
    assert res[0]["max_abs_diff"] < 1e-5, res[0]


def test_sequential_write_visible_to_other_streams_next_step(world_run) -> None:
    _, _, ranks = world_run
    for r in ranks:
        got = r["visibility"]
        own_stream_sees_at_once = [3.0, 0.0] if r["rank"] == 0 else [0.0, 0.0]
        assert got["before"] == own_stream_sees_at_once, (r["rank"], got)
        assert got["after"] == [3.0, 3.0], (r["rank"], got)


def test_dense_path_gives_the_same_bits_as_the_sparse_path(world_run) -> None:
    world, _, ranks = world_run
    for name in ("mixed", "uneven"):
        crcs = {r["dense_vs_sparse"][f"{name}.{m}"]["crc"] for r in ranks
                for m in ("sparse", "dense", "auto")}
        assert len(crcs) == 1, (name, crcs)
    first = ranks[0]["dense_vs_sparse"]
    for name in ("mixed", "uneven"):
        # Averaged over the ranks that wrote each entry: the same bits on every
        # path and rank, and those of the rank-order reference.
        crcs = {r["dense_vs_sparse"][f"{name}.mean.{m}"]["crc"] for r in ranks
                for m in ("sparse", "dense", "auto")}
        assert crcs == {first[f"{name}.mean.reference"]["crc"]}, (name, crcs)
        assert first[f"{name}.sparse"]["crc"] == first[f"{name}.sum.reference"]["crc"]
    # The dense partitions overlap across ranks, so there the mean is not the sum.
    assert first["mixed.mean.reference"]["crc"] != first["mixed.sum.reference"]["crc"]
    assert first["mixed.mean.dense"]["bytes"] > first["mixed.dense"]["bytes"]  # counts travel
    assert first["mixed.dense"]["dense_partitions"] == 4
    assert 0 < first["mixed.auto"]["dense_partitions"] < 4  # auto mixed both paths
    assert first["mixed.sparse"]["nnz"] > 0
    # The strongly unbalanced gather used exact splits (no padding to the largest rank).
    assert "all_to_all" in first["uneven.sparse"]["kinds"]


def test_corrupted_replica_is_detected_and_named(world_run) -> None:
    world, _, ranks = world_run
    for r in ranks:
        got = r["corruption"]
        assert got["error"] is not None and got["step"] == 10, got
        assert "partition 1" in got["error"] and f"rank(s) [{world - 1}]" in got["error"]
        assert got["exported"] == 1.0  # checksum_mismatches_total reached the sink


def test_adaptive_scheduler_decides_the_same_on_every_rank(world_run) -> None:
    _, _, ranks = world_run
    phases = [r["scheduler_agreement"]["phases"] for r in ranks]
    assert all(p == phases[0] for p in phases)
    assert {"sequential", "parallel"} <= set(phases[0])  # it did switch
    metrics = [r["scheduler_agreement"]["metrics"] for r in ranks]
    assert all(m == metrics[0] for m in metrics)


def test_ranks_agree_on_what_they_ran(world_run) -> None:
    world, _, ranks = world_run
    assert [r["rank"] for r in ranks] == list(range(world))
    assert all(r["world"] == world for r in ranks)
    assert torch.distributed.is_available()
