"""Bit-for-bit comparison of checkpoint trees (tensors, dicts, lists, plain objects).

Shared by the checkpoint-resume tests and the SLURM requeue tests.
"""

from __future__ import annotations

from typing import Any

import torch

# Wall-clock measurements the phase scheduler keeps (its cost signal): they differ
# between any two runs; with scheduler.weight_cost = 0 they never decide anything.
WALL_CLOCK = ("/trainer/scheduler/pending/seconds", "/trainer/scheduler/seconds_ema")


def assert_identical(a: Any, b: Any, path: str = "") -> None:
    """Equal trees: tensors bit for bit, everything else ``==`` (wall-clock fields skipped)."""
    if path.endswith(WALL_CLOCK):
        return
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}/{i}")
    elif hasattr(a, "__dict__") and not isinstance(a, type):  # e.g. DeepSpeed's LossScaler
        assert type(a) is type(b), path
        assert_identical(vars(a), vars(b), path)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
