"""``obs train``: train on the configured task (one process, or ``--nproc N`` local ranks)."""

from __future__ import annotations

import argparse

from launch.output import emit

RESULT_KEYS = ("step", "loss", "accuracy", "eval_loss", "eval_accuracy", "samples_per_s",
               "tokens_per_s", "wall_seconds", "nonfinite_commits_total",
               "committed_entries_total", "replay_steps_total", "scored_total", "world_size",
               "sync_bytes_total",
               "sync_seconds_total",
               "checksum_mismatches_total", "scheduler_decisions_total.sequential",
               "scheduler_decisions_total.parallel")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and repeated ``--set a.b=value`` (CLI > file > defaults)."""
    parser.add_argument("--config", help="TOML config file (defaults if omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one config key (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _spawn(args: argparse.Namespace) -> int:
    """Start ``--nproc`` local ranks running this same command without ``--nproc``."""
    from launch.jobs.spawn import obs_command, spawn_local

    argv = ["train", "--resume", args.resume]
    if args.config:
        argv += ["--config", args.config]
    for item in args.overrides:
        argv += ["--set", item]
    if args.json:
        argv.append("--json")
    return spawn_local(obs_command(argv), args.nproc)


def _run(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1:
        # A bad key is refused once, here, not by every rank after it started.
        from launch.runner import resolve_config

        resolve_config(args.config, args.overrides)
        return _spawn(args)
    from launch.runner import run_training
    from obs_dist.engine.dist import is_rank_zero

    metrics = run_training(args.config, args.overrides, resume=args.resume)
    if is_rank_zero():
        emit({k: metrics[k] for k in RESULT_KEYS if k in metrics}, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs train``."""
    p = sub.add_parser("train", help="train a model")
    add_config_args(p)
    p.add_argument("--resume", default="auto",
                   help="auto (newest complete checkpoint), never, or a checkpoint path")
    p.add_argument("--nproc", type=int, default=1,
                   help="local processes (ranks) on this machine; gloo on CPU, NCCL on GPU")
    p.set_defaults(func=_run)
