"""The ``obs`` command line: a thin entry point that finds its subcommands.

Each subcommand lives in its own module ``launch/cmd_<name>.py`` exposing
``register(subparsers)``; each benchmark lives in ``launch/bench/<name>.py``
exposing ``register(bench_subparsers)``. Both are discovered here, so adding a
command never edits this file. A registered parser sets ``func`` (called with
the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys
from collections.abc import Sequence

import launch
import launch.bench
from monitoring.exporter import obs_version
from obs_dist.guards import RunFailed
from obs_dist.storage import redact


def _modules(path: list[str], prefix: str = "") -> list[str]:
    # A leading underscore marks a helper module of a command, not a command.
    names = [m.name for m in pkgutil.iter_modules(path)
             if m.name.startswith(prefix) and not m.name.startswith("_") and not m.ispkg]
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    """The full ``obs`` parser with every discovered subcommand and benchmark."""
    parser = argparse.ArgumentParser(prog="obs", description="OBS: One Big State training system")
    parser.add_argument("--version", action="version", version=f"obs {obs_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _modules(launch.__path__, "cmd_"):
        importlib.import_module(f"launch.{name}").register(sub)
    bench = sub.add_parser("bench", help="benchmarks (JSON with --json)")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in _modules(launch.bench.__path__):
        importlib.import_module(f"launch.bench.{name}").register(bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand.

    A ``ValueError`` from validation is printed as ``obs: error: …`` with exit
    code 2 instead of a traceback, so bad input reads as a message; a run that
    failed (:class:`obs_dist.guards.RunFailed`: diverged, learned nothing, lost
    its final checkpoint) or met an ``OSError`` (a metrics port in use, an
    unknown metrics.host) likewise, with exit code 1. URL credentials are
    redacted from every message.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is not None and getattr(args, "command_line", "") is None:
        args.command_line = list(argv)  # results record the command that made them
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"obs: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except (RunFailed, OSError) as exc:
        text = re.sub(r"^\[Errno -?\d+\] ", "", str(exc))  # the message says what failed
        print(f"obs: error: {redact(text)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
