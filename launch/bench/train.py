"""``obs bench train``: a training run's seconds, side by side with a git revision.

What a user waits for is ``obs train`` on their config, not one kernel: the
av-stream model's step, for one, is its encoders, its hundreds of state steps
and its audio front end together. This bench runs ``obs train --config CONFIG``
for ``--steps`` steps in a fresh process of this tree and, with ``--reference
REV``, of that revision (``git archive``), alternating which goes first,
``--rounds`` times (:mod:`launch.bench._side_by_side`). Both trees train the
same config file (this tree's, by absolute path) with the same overrides.

Per run: the training loop's seconds (``wall_seconds``: the steps and what the
config runs between them; start-up and data generation excluded), the steps,
and the final loss and accuracy. ``same_result`` says whether every run of both
trees ended with the same loss and accuracy: a speed-up that keeps it changed
the speed, not the mathematics.

Example (issue #14's workload)::

    OMP_NUM_THREADS=1 obs bench train --config configs/av_stream.toml \\
        --set data.source=SHARDS --steps 40 --reference REV --json
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

# The embedded default (make demo's config: it generates its own data, not timed).
DEFAULT_CONFIG = "configs/demo.toml"
# Fixed steps: no early stop on a target, no progress bar, no run history.
BASE_SETS = ["train.eval_every=0", "train.progress=false", "history.enabled=false"]


def _run_once(tree: str | None, config: str, sets: list[str], steps: int,
              threads: int) -> dict[str, Any]:
    """One ``obs train`` run in a fresh process of ``tree`` (None: this one)."""
    root = tree or THIS_TREE
    env = thread_env(threads)
    env["PYTHONPATH"] = root
    with tempfile.TemporaryDirectory(prefix="obs-bench-train-") as tmp:
        cmd = [sys.executable, "-m", "launch.cli", "train", "--config", config,
               "--set", f"out_dir={Path(tmp) / 'run'}", "--set", f"train.steps={steps}"]
        for s in [*BASE_SETS, *sets]:
            cmd += ["--set", s]
        proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=False,
                              env=env, cwd=root)
    which = "the reference" if tree is not None else "this tree"
    if proc.returncode != 0:
        raise RuntimeError(f"bench train ({which}) failed:\n{proc.stderr[-4000:]}")
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"bench train ({which}) printed no JSON result:\n"
                           f"{proc.stdout[-2000:]}") from exc
    return {"seconds": float(out["wall_seconds"]), "steps": int(out["step"]),
            "loss": out["loss"], "accuracy": out["accuracy"]}


def run(args: argparse.Namespace) -> int:
    """Train ``--rounds`` times per tree, alternating, and report the ratio of medians."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    config = Path(args.config).resolve() if args.config else Path(THIS_TREE) / DEFAULT_CONFIG
    if not config.is_file():
        raise ValueError(f"--config {args.config}: no such file")
    mine, theirs = alternate(
        lambda tree: _run_once(tree, str(config), args.overrides, args.steps, args.threads),
        args.reference, args.rounds, "bench train")
    summary = compare({"config": str(config), "sets": args.overrides, "steps": args.steps,
                       "threads": args.threads, "rounds": args.rounds,
                       "reference": args.reference}, mine, theirs)
    summary["same_result"] = len({(r["loss"], r["accuracy"]) for r in mine + theirs}) == 1
    emit(summary, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs bench train``."""
    p = sub.add_parser("train", help="an obs train run's seconds, side by side with a git "
                                     "revision")
    p.add_argument("--config", default=None,
                   help=f"the TOML config both trees train (default: {DEFAULT_CONFIG})")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of each run")
    add_side_by_side_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
