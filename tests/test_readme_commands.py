"""The README's ``obs`` lines parse as written, and their configs and overrides resolve.

Running every line at full size is a CI job of its own (S3, SLURM, minutes of
training); this catches what a reader hits first: a flag that does not exist, a
config file that moved, an override naming no key.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from launch.cli import build_parser
from launch.evals import suite_config
from launch.run_config import RunConfig
from obs_dist.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    """Every ``obs …`` command of the README's bash blocks, split into argv (no ``obs``)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    out = []
    for line in "\n".join(blocks).splitlines():
        for part in line.split(";"):
            words = shlex.split(part, comments=True)
            if words[:1] == ["obs"]:
                # "list|inspect|verify": every alternative is a command of its own
                alternatives = [w.split("|") for w in words[1:]]
                for choice in range(max(len(a) for a in alternatives)):
                    out.append([a[min(choice, len(a) - 1)] for a in alternatives])
    return out


COMMANDS = readme_commands()


def test_the_readme_has_obs_commands() -> None:
    assert len(COMMANDS) >= 15 and ["report"] in COMMANDS


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_a_readme_command_parses_and_its_config_resolves(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    config = getattr(args, "config", None)
    overrides = list(getattr(args, "overrides", []))
    if getattr(args, "task", None) is not None:  # an evaluation suite's own config
        suite_config(args.task, config, overrides)
    elif config is not None or overrides:
        load_config(RunConfig, config, overrides)
