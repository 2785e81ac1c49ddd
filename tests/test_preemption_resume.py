"""A preempted 2-rank ``obs train`` stops at a sync point, and resumes exactly.

The SLURM tests (tests/test_slurm_cluster.py) check this end to end on a real
cluster, where the signal lands wherever it lands; here it is forced between
two parallel-phase syncs. Saving there would sync the ranks' held-back windows
early and change the trajectory; the run must stop at the next sync point.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from launch.jobs.spawn import spawn_local

STEPS = 24
TINY = ["state.nodes=96", "state.partitions=3", "model.d_model=16", "model.writer.k_max=4",
        "model.writer.active=8", "model.writer.key_dim=16", "task.vocab=16", "task.seq_len=12",
        "task.pairs=2", "task.batch=2", "task.commit=true", "train.progress=false",
        "train.warmup=2", f"train.steps={STEPS}", "train.window=4", "checkpoint.every=8",
        "train.eval_every=0", "dist.engine=torch",
        # Parallel phase throughout: windows are held back and summed every 4.
        "scheduler.policy=always-parallel", "sync.parallel_every=4"]


def _run(tmp: Path, name: str, signal_at: int = 0) -> list[dict[str, float]]:
    sets = [*TINY, f"checkpoint.url={tmp / name}", f"out_dir={tmp / name / 'out'}"]
    result = tmp / f"{name}-{signal_at}.json"
    argv = [sys.executable, "tests/support/preempt_driver.py", str(result), str(signal_at)]
    for item in sets:
        argv += ["--set", item]
    assert spawn_local(argv, 2, timeout_s=300) == 0
    return [json.loads(Path(f"{result}.rank{r}").read_text()) for r in range(2)]


@pytest.mark.slow
def test_preempted_two_rank_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    reference = _run(tmp_path, "reference")
    # 3 windows per step: after the 10th step's poll, 2 windows are held back.
    stopped = _run(tmp_path, "preempted", signal_at=10)
    stop = stopped[0]["step"]
    assert all(r["step"] == stop for r in stopped) and 10 < stop < STEPS
    resumed = _run(tmp_path, "preempted")
    for rank in range(2):
        assert resumed[rank]["resumed_from"] == stop and resumed[rank]["step"] == STEPS
        for key in ("loss", "accuracy", "committed_entries_total", "samples_total"):
            assert resumed[rank][key] == reference[rank][key], (rank, key)
