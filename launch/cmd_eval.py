"""``obs eval``: evaluate the weights a training run saved in its ``out_dir``."""

from __future__ import annotations

import argparse

from launch.cmd_train import add_config_args
from launch.output import emit


def _run(args: argparse.Namespace) -> int:
    from launch.runner import run_eval

    emit(run_eval(args.config, args.overrides, args.batches), args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs eval``."""
    p = sub.add_parser("eval", help="evaluate a trained model")
    add_config_args(p)
    p.add_argument("--batches", type=int, default=8, help="evaluation batches")
    p.set_defaults(func=_run)
