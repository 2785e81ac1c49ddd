"""What an evaluation suite declares, once, in its own module (``SUITE = Suite(...)``).

``obs eval --task`` takes its choices from these declarations, runs the suite's
config and ``run``; ``obs report`` takes the section title, the targets to check,
the figures to draw and any extra parts from the same object, so neither
command knows a suite by name. :func:`markdown_table` and :func:`verdict` are
how those parts are written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Result = dict[str, Any]
# A figure: the file name's suffix (after the result's stem) and the function that draws it
# (``draw(result, path) -> path``, or None when the result has nothing to plot).
Figure = tuple[str, Callable[[Result, Path], Path | None]]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    if value is None:
        return "–"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> str:
    """Scalar columns of ``rows`` as a GitHub markdown table."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k, v in row.items() if k not in columns and k not in skip
                       and not isinstance(v, (list, dict)))
    if not rows or not columns:
        return "_(no rows)_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def verdict(ok: bool) -> str:
    """``**met**`` or ``**missed**``: how a report states a target."""
    return "**met**" if ok else "**missed**"


def _nothing(result: Result) -> list[Any]:
    return []


@dataclass(frozen=True)
class Suite:
    """One evaluation suite.

    Attributes:
        name: the ``obs eval --task`` name and the result's ``suite`` key.
        title: the heading of its section in ``docs/results.md``.
        config: its config dataclass (a :class:`~launch.evals.harness.SuiteConfig`).
        run: ``run(cfg) -> {"results": [rows…], …}``.
        quick: ``--set`` overrides of ``--quick`` (tiny sizes: an end-to-end check).
        targets: the issue's headline targets this result can check, as markdown
            bullets (see :func:`verdict`).
        figures: the plots of a result.
        extras: markdown parts shown after the result's tables (before its plots).
    """

    name: str
    title: str
    config: type
    run: Callable[[Any], Result]
    quick: Sequence[str] = ()
    targets: Callable[[Result], list[str]] = _nothing
    figures: Sequence[Figure] = ()
    extras: Callable[[Result], list[str]] = _nothing

    def draw(self, result: Result, stem: str, folder: Path) -> list[Path]:
        """Draw this result's figures as ``<folder>/<stem>_<suffix>.png``; the files written."""
        made = [draw(result, folder / f"{stem}_{suffix}.png") for suffix, draw in self.figures]
        return [p for p in made if p is not None]
