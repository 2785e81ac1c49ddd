"""``obs eval``: evaluate a trained run, or run an evaluation suite.

* ``obs eval --config C [--set k=v] --batches N``: score the weights a training
  run saved in its ``out_dir`` on fresh task batches (unchanged behaviour).
* ``obs eval --task SUITE`` (a name of :data:`launch.evals.SUITES`)
  ``[--config configs/eval_<task>.toml] [--set k=v] [--quick] [--json] [--out F]``:
  train OBS and the baselines at the same parameter budget and wall time on the
  suite's task and score them; the result (rows, curves, config, command) is
  written as JSON to ``--out`` (default ``runs/eval/<task>[-quick].json``) for
  ``obs report``, and printed as a table (or one JSON object with ``--json``).
* ``obs eval --merge PART.json [PART.json …] --out F``: join the results of an
  MQAR sweep run in parts (by model, point, rate or width: one command per
  part, e.g. on several machines) into one result, best rate recomputed
  (:func:`launch.evals.mqar_sweep.merge_parts`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from launch.cmd_train import add_config_args
from launch.evals import SUITES, run_suite, write_result
from launch.output import emit


def _summary(result: dict) -> dict:
    """The rows for the terminal: scalar columns only."""
    rows = [{k: v for k, v in row.items() if not isinstance(v, (list, dict))}
            for row in result.get("results", [])]
    return {"results": rows, "suite": result["suite"], "out": result.get("out", "")}


def _command_words(args: argparse.Namespace) -> list[str]:
    """The words after ``obs`` of the command that is running (recorded in results)."""
    return sys.argv[1:] if args.command_line is None else list(args.command_line)


def _merge(args: argparse.Namespace) -> int:
    from launch.evals.mqar_sweep import merge_parts

    if args.out is None:
        raise ValueError("--merge needs --out (the merged result's path)")
    if args.task not in (None, "mqar-sweep"):
        raise ValueError(f"--merge joins mqar-sweep parts, not --task {args.task}")
    parts = []
    for name in args.merge:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"--merge part {name} does not exist")
        try:
            parts.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"--merge part {name} is not JSON: {exc}") from exc
    result = merge_parts(parts)
    result["command"] = shlex.join(["obs", *_command_words(args)])
    result["out"] = str(write_result(result, args.out))
    emit(_summary(result), args.json)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.merge:
        return _merge(args)
    if args.task is None:
        from launch.runner import run_eval

        emit(run_eval(args.config, args.overrides, args.batches), args.json)
        return 0
    from launch.runner import setup_logging

    setup_logging()
    result = run_suite(args.task, args.config, args.overrides, quick=args.quick,
                       command=_command_words(args))
    out = args.out or f"runs/eval/{args.task}{'-quick' if args.quick else ''}.json"
    result["out"] = str(write_result(result, out))
    emit(_summary(result), args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs eval``."""
    p = sub.add_parser("eval", help="evaluate a trained model, or run an evaluation suite")
    add_config_args(p)
    p.add_argument("--batches", type=int, default=8, help="evaluation batches (trained run)")
    p.add_argument("--task", choices=list(SUITES), default=None,
                   help="run an evaluation suite instead of scoring a trained run")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (seconds): checks the suite end to end, not a figure")
    p.add_argument("--out", default=None, help="result JSON (default runs/eval/<task>.json)")
    p.add_argument("--merge", nargs="+", default=None, metavar="PART",
                   help="join mqar-sweep results run in parts into --out (no training)")
    p.set_defaults(func=_run, command_line=None)
