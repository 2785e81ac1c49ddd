"""``obs bench mqar``: the MQAR command's training time to 0.99, side by side with a revision.

Issue #17 asks that MQAR with 32 pairs at length 256 (``docs/results.md``'s
``mqar_obs_300s``) reach 0.99 in half the time of an earlier step. Training
time to a target is a whole run, not a window, so this bench runs that command
(``obs eval --task mqar-sweep --config configs/eval_mqar.toml`` with OBS alone at
``[32, 256]``, batch 16) in a fresh process for this tree and, with
``--reference REV``, for a revision checked out by ``git archive``, alternating
which goes first, ``--rounds`` times. Each run reports its training seconds,
steps and held-out accuracy; the medians and their ratio are the figure. Every
child sets its own thread count (``--threads``, default 1) before torch loads.

The runs of both trees use the same seeds, batches and stopping rule, so a
speed-up with equal steps is the step's alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from launch.bench._side_by_side import THIS_TREE, add_side_by_side_args, alternate, compare
from launch.bench.step import thread_env
from launch.output import emit

# The docs/results.md command of the MQAR figure (mqar_obs_300s).
HEADLINE = ['models=["obs"]', "points=[[32, 256]]", "state_sizes=[]", "batch=16", "seconds=300",
            "eval_batches=4"]


def _run_once(tree: str | None, sets: list[str], quick: bool, threads: int) -> dict[str, Any]:
    """One training run of the MQAR command in a fresh process of ``tree`` (None: this one)."""
    root = tree or THIS_TREE
    env = thread_env(threads)
    env["PYTHONPATH"] = root
    with tempfile.TemporaryDirectory(prefix="obs-bench-mqar-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "launch.cli", "eval", "--task", "mqar-sweep",
               "--config", "configs/eval_mqar.toml", "--out", str(out),
               "--set", f"threads={threads}"]
        for s in sets:
            cmd += ["--set", s]
        if quick:
            cmd.append("--quick")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env,
                              cwd=root)
        if proc.returncode != 0 or not out.is_file():
            which = "the reference" if tree is not None else "this tree"
            raise RuntimeError(f"bench mqar ({which}) failed:\n{proc.stderr[-4000:]}")
        rows = [r for r in json.loads(out.read_text())["results"] if r.get("model") == "obs"]
    if len(rows) != 1:
        raise RuntimeError(f"bench mqar: expected one OBS row, got {len(rows)}")
    row = rows[0]
    return {k: row[k] for k in ("seconds", "steps", "accuracy", "stopped", "nodes", "pairs",
                                "length")}


def run(args: argparse.Namespace) -> int:
    """Run the MQAR command ``--rounds`` times per tree, alternating, and report the ratio."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    sets = [*HEADLINE, *args.overrides]
    mine, theirs = alternate(lambda tree: _run_once(tree, sets, args.quick, args.threads),
                             args.reference, args.rounds, "bench mqar")
    summary = compare({"command_sets": sets, "quick": args.quick, "threads": args.threads,
                       "rounds": args.rounds, "reference": args.reference}, mine, theirs)
    for tree in ("this_tree", "reference_tree"):
        if tree in summary:
            summary[tree]["reached_target"] = all(r["stopped"] == "target"
                                                  for r in summary[tree]["runs"])
    emit(summary, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs bench mqar``."""
    p = sub.add_parser("mqar", help="the MQAR command's seconds to 0.99, side by side with a "
                                    "git revision")
    add_side_by_side_args(p)
    p.add_argument("--quick", action="store_true",
                   help="the suite's tiny sizes (seconds): checks the bench, not a figure")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
