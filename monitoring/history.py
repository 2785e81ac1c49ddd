"""A run's history on disk: ``metrics.jsonl``, optional TensorBoard events, the log.

Prometheus keeps a run's curves only as long as its retention, and only if one
was scraping; a user also expects them beside the weights. Every run (rank 0)
gets its own folder ``out_dir/history/<run id>/`` so that a second run into the
same ``out_dir`` (a rerun, a resume) never overwrites the first one's history:

* ``config.toml`` — the resolved config, written before the first step (a run
  that crashes still leaves it; ``obs train --config`` reads it back);
* ``metrics.jsonl`` — one JSON object per log step with every metric;
* ``train.log`` — a copy of the run's log lines;
* ``events.out.tfevents.*`` — TensorBoard scalars when ``history.tensorboard``.

The history is a trainer hook (stage ``report``, :mod:`obs_dist.hooks`), so it
sees every entry the other hooks add, on the steps the trainer logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obs_dist.storage import RedactCredentials

HISTORY_DIR = "history"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
CONFIG_FILE = "config.toml"


@dataclass
class HistoryConfig:
    """What rank 0 writes under ``out_dir/history/<run id>/`` (``[history]``).

    Attributes:
        enabled: write the history at all (config, ``metrics.jsonl``, log copy).
        tensorboard: also write TensorBoard event files (needs the optional
            ``tensorboard`` package: ``pip install 'obs[tensorboard]'``).
        log_copy: copy the run's log lines to ``train.log``.
    """

    enabled: bool = True
    tensorboard: bool = False
    log_copy: bool = True

    def __post_init__(self) -> None:
        for key in ("enabled", "tensorboard", "log_copy"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"history.{key} must be true or false, "
                                 f"got {getattr(self, key)!r}")


def new_run_dir(out_dir: str | Path) -> Path:
    """Create and return a fresh ``out_dir/history/<UTC time>-<pid>[-n]`` folder.

    The folder is created exclusively, so two runs never share one, and the
    names sort in start order.
    """
    base = Path(out_dir) / HISTORY_DIR
    base.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"
    for n in range(1000):
        path = base / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ValueError(f"could not create a new run folder under {base}")


def run_dirs(path: str | Path) -> list[Path]:
    """The run folders of ``path``: itself if it holds a history, else its runs in order.

    Raises:
        ValueError: ``path`` holds no run history.
    """
    p = Path(path)
    if (p / METRICS_FILE).is_file():
        return [p]
    found = sorted(d for d in (p / HISTORY_DIR).glob("*") if (d / METRICS_FILE).is_file())
    if not found:
        raise ValueError(f"no run history at {p} (expected {METRICS_FILE} there or in "
                         f"{HISTORY_DIR}/*/)")
    return found


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of one run's ``metrics.jsonl`` (a torn last line is skipped)."""
    records = []
    for line in (Path(run_dir) / METRICS_FILE).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves at most one torn line
    return records


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: a non-finite value is written as null."""
    return value if math.isfinite(value) else None


class RunHistory:
    """Rank 0's history writer; :meth:`on_step` and :meth:`on_end` are trainer hooks.

    Args:
        run_dir: this run's folder (:func:`new_run_dir`).
        cfg: what to write.
        log_every: the trainer's ``train.log_every`` (the steps recorded).
        steps: the run's last step (always recorded).
    """

    def __init__(self, run_dir: Path, cfg: HistoryConfig, log_every: int, steps: int) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.log_every = log_every
        self.steps = steps
        self.last_step = -1
        self._file = (run_dir / METRICS_FILE).open("a", buffering=1)  # a line per record
        self._tb: Any = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ValueError("history.tensorboard = true needs the tensorboard package "
                                 "(pip install 'obs[tensorboard]')") from exc
            self._tb = SummaryWriter(log_dir=str(run_dir))
        self._handler: logging.Handler | None = None
        if cfg.log_copy:
            handler = logging.FileHandler(run_dir / LOG_FILE)
            handler.setFormatter(logging.Formatter(
                "%(asctime)s %(name)s %(levelname)s %(message)s"))
            handler.addFilter(RedactCredentials())  # no URL credentials in the copy either
            logging.getLogger().addHandler(handler)
            self._handler = handler
        self._t = time.perf_counter()
        self._samples = 0.0
        self._tokens = 0.0

    def attach(self, trainer: Any) -> None:
        """Register hooks ``history`` (``on_step``) and ``history_end`` (``on_end``).

        Both run in stage ``report``, after every other hook added its entries.
        """
        self._t = time.perf_counter()
        self._samples = float(trainer.counters["samples_total"])
        self._tokens = float(trainer.counters["tokens_total"])
        trainer.hooks.add("history", self.on_step, stage="report")
        trainer.hooks.add("history_end", self.on_end, stage="report", event="on_end")

    def write_config(self, toml_text: str) -> Path:
        """Write the resolved config (TOML) into the run folder."""
        path = self.run_dir / CONFIG_FILE
        path.write_text(toml_text)
        return path

    def record(self, metrics: dict[str, float], step: int) -> None:
        """Append one record (every metric) to ``metrics.jsonl`` and TensorBoard."""
        row: dict[str, Any] = {"step": step, "time": time.time()}
        row.update({k: _finite_or_none(float(v)) for k, v in sorted(metrics.items())
                    if k != "step"})
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if key != "step" and math.isfinite(float(value)):
                    self._tb.add_scalar(key.replace(".", "/"), float(value), step)
        self.last_step = step

    def on_step(self, trainer: Any, metrics: dict[str, float]) -> None:
        """Hook ``history`` (``on_step``, stage ``report``): record the log steps.

        The trainer's own throughput is computed after the hooks, so the
        interval's samples/s and tokens/s are measured here over the same span.
        """
        step = int(trainer.step)
        if not (step % self.log_every == 0 or step >= self.steps or trainer.stop_requested):
            return
        counters = trainer.counters
        now = time.perf_counter()
        span = max(now - self._t, 1e-9)
        out = dict(metrics)
        out["samples_per_s"] = (counters["samples_total"] - self._samples) / span
        out["tokens_per_s"] = (counters["tokens_total"] - self._tokens) / span
        self._t = now
        self._samples = float(counters["samples_total"])
        self._tokens = float(counters["tokens_total"])
        self.record(out, step)

    def on_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        """Hook ``history_end`` (``on_end``): the final step if it was not recorded yet."""
        step = int(trainer.step)
        if step != self.last_step and metrics:
            self.record(metrics, step)

    def close(self) -> None:
        """Flush and close every file; detach the log copy."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
