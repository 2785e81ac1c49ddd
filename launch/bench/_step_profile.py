"""The bench's training step, and its profile (``obs bench step --profile``).

:func:`build` makes the trainer and MQAR batches that ``obs bench step`` times;
:func:`profile` runs ``torch.profiler`` over a few of its windows and returns
the operators that took the most self CPU time, per window.

Run as a script by path (``python launch/bench/_step_profile.py PARAMS``), the
same profiling runs on this tree or, with ``PYTHONPATH`` set to a reference
checkout (``--reference``), on the reference's step: it uses only APIs both
have (``RunConfig``, ``build_model``, ``Trainer``, ``task_batches``), so the
profile before and after a change comes from one command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any


def build(nodes: int, k_max: int, active: int, d_model: int, batch: int, window: int,
          windows: int, device: str, threads: int = 1) -> tuple[Any, Any, Iterator[Any]]:
    """``(trainer, state, batches)``: the bench's committing MQAR step at N = ``nodes``.

    Args:
        nodes: N.
        k_max: most nodes written per step (``k_min`` = half).
        active: m, nodes kept active.
        d_model: d.
        batch: streams.
        window: time steps per window (one window per batch).
        windows: windows that will be run (sizes the step count).
        device: ``cpu`` or ``cuda``.
        threads: torch intra-op threads, set before anything is built.
    """
    import torch

    torch.set_num_threads(threads)
    from launch.run_config import RunConfig
    from launch.runner import build_model
    from obs_dist.config import from_dict
    from obs_dist.tasks import task_batches
    from obs_dist.trainer import Trainer

    cfg = from_dict(RunConfig, {
        "state": {"nodes": nodes, "partitions": 4},
        "model": {"d_model": d_model, "writer": {"k_min": k_max // 2, "k_max": k_max,
                                                 "active": active}},
        "task": {"name": "mqar", "vocab": 256, "seq_len": window, "pairs": window // 4,
                 "batch": batch, "commit": True},
        "train": {"steps": windows + 1, "progress": False, "device": device},
    })
    model, state = build_model(cfg, torch.device(device))
    trainer = Trainer(cfg.train, model, state, commit=True)
    return trainer, state, task_batches(cfg.task)


def profile(params: dict[str, Any], windows: int = 3, top: int = 12) -> list[dict[str, Any]]:
    """The ``top`` operators by self CPU time over ``windows`` profiled windows.

    Returns:
        Rows of ``op``, ``calls_per_window`` and ``self_ms_per_window`` (the
        profiler's own overhead inflates small operators; compare like with like).
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer, _, batches = build(**{**params, "windows": windows + 1})
    trainer.train_step(next(batches))  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(windows):
            trainer.train_step(next(batches))
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "calls_per_window": e.count / windows,
             "self_ms_per_window": e.self_cpu_time_total / 1000 / windows}
            for e in events[:top]]


if __name__ == "__main__":
    print(json.dumps(profile(json.loads(sys.argv[1]))))
