"""``obs config show``: every key of the resolved config, with its value and its default.

The same resolution as ``obs train`` (defaults < ``--config`` file < ``--set``),
validated the same way, so a bad key is refused here before any job is
queued; ``--toml`` prints the resolved config as a file ``--config`` reads back.
"""

from __future__ import annotations

import argparse

from launch.cmd_train import add_config_args
from launch.output import emit
from launch.run_config import RunConfig
from obs_dist.checkpoint.format import flatten_config
from obs_dist.config import load_config, to_dict, to_toml
from obs_dist.storage import redact_tree


def config_rows(config_path: str | None, overrides: list[str]) -> list[dict[str, object]]:
    """``{key, value, default}`` for every dotted key of the resolved config.

    Raises:
        ValueError: an unknown key or a bad value, naming the key.
    """
    live = flatten_config(redact_tree(to_dict(load_config(RunConfig, config_path, overrides))))
    defaults = flatten_config(to_dict(RunConfig()))
    return [{"key": k, "value": v, "default": defaults.get(k)} for k, v in live.items()]


def _run(args: argparse.Namespace) -> int:
    if args.toml:
        cfg = load_config(RunConfig, args.config, args.overrides)
        print(to_toml(redact_tree(to_dict(cfg))), end="")
        return 0
    rows = config_rows(args.config, args.overrides)
    if args.json:
        emit({"results": rows}, True)
    else:
        emit([{k: repr(v) if k != "key" else v for k, v in row.items()} for row in rows], False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs config show``."""
    p = sub.add_parser("config", help="show the resolved configuration")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="every key with its value and default")
    add_config_args(show)
    show.add_argument("--toml", action="store_true",
                      help="print the resolved config as TOML (readable by --config)")
    show.set_defaults(func=_run)
