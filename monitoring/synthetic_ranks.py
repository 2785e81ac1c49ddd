"""A stand-in training rank that feeds a real metrics sink with plausible values.

Used by the monitoring tests (two of these play a 2-rank job until the real
``obs train --nproc 2`` is wired in) and to try the dashboard and alerts
without training anything::

    RANK=0 LOCAL_RANK=0 python -m monitoring.synthetic_ranks --base-port 9400 &
    RANK=1 LOCAL_RANK=1 python -m monitoring.synthetic_ranks --base-port 9400 &

Every key of the trainer contract is emitted, with values that move: totals
grow, the phase alternates, data errors of several kinds accumulate. Throughput
is ``100 * (rank + 1)`` samples/s plus a small wobble, so a test can tell the
ranks apart by value as well as by label.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from monitoring.exporter import MetricsConfig, start_sink_for_current_process

DATA_ERROR_KINDS = ("corrupt_video", "empty_audio", "bad_json")
TOKENS_PER_SAMPLE = 64


def synthetic_metrics(rank: int, step: int, elapsed_s: float, now: float) -> dict[str, float]:
    """The metrics dict a training rank would report at ``step``.

    Args:
        rank: global rank (sets the throughput level).
        step: the step number (drives totals and the phase).
        elapsed_s: seconds since the start (drives cumulative totals).
        now: current unix time (``last_step_timestamp``).

    Returns:
        A dict with every key of the trainer contract.
    """
    samples_per_s = 100.0 * (rank + 1) + 5.0 * math.sin(step / 3.0)
    samples_total = 100.0 * (rank + 1) * elapsed_s
    metrics: dict[str, float] = {
        "step": float(step),
        "samples_total": samples_total,
        "tokens_total": samples_total * TOKENS_PER_SAMPLE,
        "samples_per_s": samples_per_s,
        "tokens_per_s": samples_per_s * TOKENS_PER_SAMPLE,
        "loss": 2.0 / (1.0 + 0.05 * step) + 0.01 * rank,
        "accuracy": 1.0 - 1.0 / (1.0 + 0.05 * step),
        "eval_loss": 2.2 / (1.0 + 0.04 * step),
        "eval_accuracy": 1.0 - 1.1 / (1.1 + 0.04 * step),
        "phase": float((step // 25) % 2),
        "sync_bytes_total": 4096.0 * step,
        "sync_seconds_total": 0.002 * step,
        "delta_nnz": 512.0 + 8.0 * (step % 7),
        "delta_density": (512.0 + 8.0 * (step % 7)) / 4096.0**2,
        "write_conflict": 0.1 + 0.05 * math.cos(step / 4.0),
        "state_mean": 0.0,
        "state_std": 0.02 + 1e-5 * step,
        "state_kurtosis": 0.1 * math.sin(step / 10.0),
        "checksum_mismatches_total": 0.0,
        "nonfinite_commits_total": 0.0,
        "committed_entries_total": 520.0 * step,
        "data_clips_per_s": samples_per_s * 1.02,
        "ckpt_age_s": float(step % 50) * 0.2,
        "ckpt_seconds": 1.5,
        "ckpt_bytes": 8.0 * 1024**2,
        "ckpt_failures_total": 0.0,
        "ckpt_leftovers_removed_total": 0.0,
        "nonfinite_steps": 0.0,
        "data_unknown_labels_total.object": 0.0,
        "nodes_written": 8.0,
        "scored": 64.0 * 8.0,
        "sync_calls_total": float(step),
        "sync_dense_partitions_total": 0.0,
        "mean_count": 8.0,
        "mean_eta": 0.5 + 0.01 * math.sin(step / 5.0),
        "replay_steps_total": 0.0,
        "scored_total": 64.0 * 8.0 * step,
        "data_store_retries_total": 0.0,
        "step_seconds": 1.0 / samples_per_s * 64.0,
        "last_step_timestamp": now,
    }
    for i, kind in enumerate(DATA_ERROR_KINDS):
        # About 0.2 % bad clips in all: visible on the dashboard, below the alert.
        metrics[f"data_errors_total.{kind}"] = float(step // (50 * (i + 1)))
    metrics["scheduler_decisions_total.parallel"] = float(step - step // 2)
    metrics["scheduler_decisions_total.sequential"] = float(step // 2)
    return metrics


class _Stop(Exception):
    """Raised from the SIGTERM handler so the sink is closed on the way out."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve synthetic metrics for one rank (rank from ``RANK``/``LOCAL_RANK``)."""
    parser = argparse.ArgumentParser(prog="python -m monitoring.synthetic_ranks")
    parser.add_argument("--base-port", type=int, default=9400)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--job", default="obs")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between updates")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds to run")
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.duration <= 0:
        print("synthetic_ranks: error: --interval and --duration must be > 0", file=sys.stderr)
        return 2
    cfg = MetricsConfig(enabled=True, base_port=args.base_port, host=args.host, job=args.job)
    signal.signal(signal.SIGTERM, _on_sigterm)
    sink = start_sink_for_current_process(cfg)
    print(f"rank {sink.rank} serving {sink.url}", flush=True)
    start = time.monotonic()
    step = 0
    try:
        while time.monotonic() - start < args.duration:
            step += 1
            sink(synthetic_metrics(sink.rank, step, time.monotonic() - start, time.time()), step)
            time.sleep(args.interval)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
