"""Evaluation suites of ``obs eval --task``: one module per suite plus the shared harness.

Each suite module declares itself once as ``SUITE``, a :class:`~launch.evals.suite.Suite`:
its name, report title, config dataclass (a :class:`~launch.evals.harness.SuiteConfig`
with the suite's own fields), ``--quick`` overrides, ``run(cfg) -> {"results": [rows…],
…}``, the targets its results check, its figures and extra report parts.
:data:`SUITES` gathers them, in the order ``obs report`` writes them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from launch.evals import continual, crossmodal, memory, mqar_sweep, state_tracking, word_referent
from launch.evals.suite import Suite
from obs_dist.config import load_config, to_dict

# Every suite by name, in report order.
SUITES: dict[str, Suite] = {m.SUITE.name: m.SUITE for m in (
    mqar_sweep, crossmodal, continual, memory, state_tracking, word_referent)}


def suite_config(name: str, config_path: str | None, overrides: list[str],
                 quick: bool = False) -> Any:
    """Defaults < TOML file < ``--quick`` sizes < ``--set`` overrides, validated."""
    if name not in SUITES:
        raise ValueError(f"unknown eval task {name!r}; choose from {sorted(SUITES)}")
    suite = SUITES[name]
    extra = list(suite.quick) if quick else []
    return load_config(suite.config, config_path, extra + list(overrides))


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def run_suite(name: str, config_path: str | None, overrides: list[str], quick: bool = False,
              command: list[str] | None = None) -> dict[str, Any]:
    """Run one suite; the result carries its config, command and machine facts."""
    cfg = suite_config(name, config_path, overrides, quick)
    torch.set_num_threads(cfg.threads)
    start = time.time()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = SUITES[name].run(cfg)
    result.update({
        "suite": name, "quick": quick, "config": to_dict(cfg),
        "command": shlex.join(["obs", *(command if command is not None else sys.argv[1:])]),
        "wall_seconds": round(time.time() - start, 1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_start": load_before, "python": platform.python_version(),
                    "torch": torch.__version__, "git": _git_commit()},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    return result


def _strict(value: Any) -> Any:
    """NaN and infinities become null: the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    """Write a suite result as JSON (directories created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_strict(result), indent=1, default=float,
                              allow_nan=False))
    return out
