"""``obs train``: train on the configured task (one process by default)."""

from __future__ import annotations

import argparse

from launch.output import emit


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and repeated ``--set a.b=value`` (CLI > file > defaults)."""
    parser.add_argument("--config", help="TOML config file (defaults if omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one config key (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _run(args: argparse.Namespace) -> int:
    from launch.runner import run_training

    metrics = run_training(args.config, args.overrides, resume=args.resume)
    keys = ("step", "loss", "accuracy", "eval_loss", "eval_accuracy", "samples_per_s",
            "tokens_per_s", "wall_seconds", "nonfinite_commits_total", "committed_entries_total")
    emit({k: metrics[k] for k in keys if k in metrics}, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs train``."""
    p = sub.add_parser("train", help="train a model")
    add_config_args(p)
    p.add_argument("--resume", default="auto",
                   help="auto (newest complete checkpoint), never, or a checkpoint path")
    p.set_defaults(func=_run)
