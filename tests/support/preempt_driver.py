"""One rank of a training run whose preemption signal arrives at a chosen poll.

Run by tests/test_preemption_resume.py through ``launch.jobs.spawn.spawn_local``:
``python tests/support/preempt_driver.py OUT_JSON SIGNAL_AT [--set a.b=v ...]``. Every
rank polls once per step, so a per-rank count stands in for the collective
vote of :func:`launch.jobs.job.preemption_requested` (all ranks agree).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import launch.jobs.job as job
from launch.runner import run_training
from obs_dist.engine.dist import get_rank


def main() -> int:
    out, signal_at, *rest = sys.argv[1:]
    sets = [rest[i + 1] for i in range(0, len(rest), 2) if rest[i] == "--set"]
    polls = [0]

    def requested() -> bool:
        polls[0] += 1
        return 0 < int(signal_at) <= polls[0]

    job.preemption_requested = requested  # the preemption hook looks it up at every poll
    metrics = run_training("configs/mqar.toml", sets)
    Path(f"{out}.rank{get_rank()}").write_text(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
