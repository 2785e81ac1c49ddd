"""Printing results for people (a table) or programs (one JSON object)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6) and math.isfinite(value):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dictionaries as an aligned text table (columns from all rows, in order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def emit(result: Mapping[str, Any] | Sequence[Mapping[str, Any]], as_json: bool) -> None:
    """Print ``result`` as one JSON object (``--json``) or as a table."""
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    if isinstance(result, Mapping):
        rows = result.get("results") if isinstance(result.get("results"), list) else None
        if rows:
            print(format_table(rows))
            extra = {k: v for k, v in result.items() if k != "results"}
            if extra:
                print(format_table([extra]))
        else:
            print(format_table([{"key": k, "value": v} for k, v in result.items()]))
    else:
        print(format_table(result))
