"""Whole runs of this tree and a git revision, alternated: the benches that time a command.

``obs bench mqar`` (time to a target) and ``obs bench train`` (a training run's
seconds) measure a whole command, not a kernel: each run is a fresh process of
one tree, the two trees take turns going first (a machine that warms up or gets
busier favours neither), and the figure is the ratio of the medians.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from tqdm import tqdm

from launch.bench.step import reference_tree

THIS_TREE = str(Path(__file__).resolve().parents[2])

RunOnce = Callable[[str | None], dict[str, Any]]


def alternate(run_once: RunOnce, reference: str | None, rounds: int, desc: str
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``rounds`` runs of this tree and (``reference``) of that revision, alternating.

    Args:
        run_once: runs the command once in the tree at the path it is given
            (None: this tree) and returns that run's figures.
        reference: a git revision, checked out by ``git archive`` for the
            duration (None: this tree alone).
        rounds: runs per tree; odd rounds start with this tree, even ones with
            the reference.
        desc: the progress bar's label.

    Returns:
        ``(this tree's runs, the reference's runs)``.

    Raises:
        ValueError: ``rounds < 1`` or ``reference`` is not a revision.
    """
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    ref = reference_tree(reference) if reference else None
    mine: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    try:
        trees: list[str | None] = [None] if ref is None else [None, ref.name]
        order = [t for r in range(rounds) for t in (trees if r % 2 == 0 else trees[::-1])]
        for tree in tqdm(order, desc=desc, unit="run", file=sys.stderr):
            (mine if tree is None else theirs).append(run_once(tree))
    finally:
        if ref is not None:
            ref.cleanup()
    return mine, theirs


def medians(runs: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    """One tree's runs, the median of ``key`` and the distinct step counts."""
    return {"runs": runs, f"median_{key}": median(r[key] for r in runs),
            "steps": sorted({r["steps"] for r in runs})}


def compare(summary: dict[str, Any], mine: list[dict[str, Any]],
            theirs: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    """``summary`` with both trees' medians, their ratio and whether the steps agree."""
    summary["this_tree"] = medians(mine, key)
    if theirs:
        summary["reference_tree"] = medians(theirs, key)
        summary["speedup_over_reference"] = (summary["reference_tree"][f"median_{key}"]
                                             / summary["this_tree"][f"median_{key}"])
        summary["same_steps"] = (summary["reference_tree"]["steps"]
                                 == summary["this_tree"]["steps"])
    return summary


def add_side_by_side_args(p: argparse.ArgumentParser) -> None:
    """``--reference``, ``--rounds``, ``--threads`` and repeated ``--set`` (into ``overrides``)."""
    p.add_argument("--reference", default=None, metavar="REV",
                   help="also run this git revision (e.g. a commit before a speed-up)")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs per tree, alternating which goes first (medians reported)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op and OpenMP threads of each run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the command (after its own settings; repeatable)")
