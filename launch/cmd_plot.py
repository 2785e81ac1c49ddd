"""``obs plot RUN_DIR``: a run's curves from its ``metrics.jsonl`` as PNG figures.

``RUN_DIR`` is a run folder (``out_dir/history/<run id>/``) or an ``out_dir``:
then every run in it is drawn, one line each, so a resumed run continues the
curve of the run it resumed. Four figures: loss, accuracy, throughput and the
big state's moments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from launch.evals.plots import _save, _subplots
from launch.output import emit
from monitoring.history import read_metrics, run_dirs

# figure name -> the metrics it draws (those a run recorded)
PANELS: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "eval_loss"),
    "accuracy": ("accuracy", "eval_accuracy"),
    "throughput": ("samples_per_s", "tokens_per_s"),
    "state": ("state_mean", "state_std", "state_kurtosis"),
}


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of ``key`` over the records that hold a finite value of it."""
    points = [(float(r["step"]), float(r[key])) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_runs(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draw every panel of :data:`PANELS` that has data; return the PNG paths.

    Args:
        path: a run folder or an ``out_dir`` with ``history/*/metrics.jsonl``.
        out: folder for the PNGs (default ``path/plots``).

    Raises:
        ValueError: no run history at ``path``.
    """
    runs = [(d.name, read_metrics(d)) for d in run_dirs(path)]
    folder = Path(out) if out is not None else Path(path) / "plots"
    written = []
    for name, keys in PANELS.items():
        present = [k for k in keys if any(_series(recs, k)[0] for _, recs in runs)]
        if not present:
            continue
        fig, axes = _subplots(1, len(present), figsize=(4.2 * len(present), 3.2), squeeze=False)
        for ax, key in zip(axes[0], present, strict=True):
            for run, recs in runs:
                steps, values = _series(recs, key)
                if steps:
                    ax.plot(steps, values, marker="." if len(steps) < 30 else None,
                            label=run if len(runs) > 1 else None)
            ax.set_xlabel("step")
            ax.set_title(key)
            if len(runs) > 1:
                ax.legend(fontsize=7)
        written.append(_save(fig, folder / f"{name}.png"))
    return written


def _run(args: argparse.Namespace) -> int:
    paths = plot_runs(args.run_dir, args.out)
    emit({"results": [{"figure": str(p)} for p in paths]}, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs plot``."""
    p = sub.add_parser("plot", help="draw a run's metrics.jsonl (loss, accuracy, throughput, "
                                    "state moments) to PNG")
    p.add_argument("run_dir", help="a run folder (out_dir/history/<run id>) or an out_dir")
    p.add_argument("--out", help="folder for the PNGs (default RUN_DIR/plots)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_run)
