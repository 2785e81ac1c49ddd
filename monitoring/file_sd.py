"""File-based service discovery: how a SLURM job tells Prometheus where its ranks are.

Prometheus' ``file_sd_configs`` (see ``monitoring/prometheus/prometheus.yml``)
watches a directory of JSON files, each a list of ``{"targets": [...],
"labels": {...}}`` groups. A SLURM job writes one file per node listing that
node's rank ports, and removes it when it ends, so Prometheus scrapes exactly
the ranks that exist without anyone editing its configuration.

Files are written atomically (temporary file + rename in the same directory)
because Prometheus re-reads a file as soon as it changes and would otherwise
see it half-written.

From a batch script (one task per node, after the ranks started)::

    python -m monitoring.file_sd write /shared/prometheus/obs-targets \\
        --base-port 9400 --local-ranks "$SLURM_NTASKS_PER_NODE"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_MAX_PORT = 65535

HostPort = tuple[str, int] | str


def _target(entry: HostPort) -> str:
    """Validate one ``(host, port)`` pair or ``"host:port"`` string into ``host:port``."""
    if isinstance(entry, str):
        host, sep, port_text = entry.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"target {entry!r} must look like host:port")
        port = int(port_text)
    else:
        if len(entry) != 2:
            raise ValueError(f"target {entry!r} must be a (host, port) pair")
        host, port = entry
        if isinstance(port, bool) or not isinstance(port, int):
            raise ValueError(f"target {entry!r}: port must be an integer, got {port!r}")
    if not isinstance(host, str) or not host or any(ch.isspace() for ch in host):
        raise ValueError(f"target {entry!r}: host must be a non-empty name without spaces")
    if not 1 <= port <= _MAX_PORT:
        raise ValueError(f"target {entry!r}: port must be in 1..{_MAX_PORT}, got {port}")
    return f"{host}:{port}"


def _labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (labels or {}).items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(
                f"label name {name!r} is invalid: use [a-zA-Z_][a-zA-Z0-9_]* without a "
                "leading '__' (reserved by Prometheus)"
            )
        if not isinstance(value, str):
            raise ValueError(f"label {name!r} must have a string value, got {value!r}")
        out[name] = value
    return out


def write_file_sd_targets(
    path: str | Path,
    hosts_ports: Iterable[HostPort],
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Write (or replace) a Prometheus file_sd target file, atomically.

    Args:
        path: the JSON file to write; its directory must be one Prometheus'
            ``file_sd_configs`` watches (created if missing).
        hosts_ports: the scrape targets, as ``(host, port)`` pairs or
            ``"host:port"`` strings; at least one.
        labels: extra target labels (e.g. ``{"slurm_job_id": "1234"}``). They
            are added to every series unless the exporter already sets a label
            of the same name (the scrape config honours exporter labels).

    Returns:
        The path written.

    Raises:
        ValueError: on an empty target list, a malformed target or label.
    """
    targets = [_target(entry) for entry in hosts_ports]
    if not targets:
        raise ValueError("write_file_sd_targets needs at least one host:port target")
    if len(set(targets)) != len(targets):
        raise ValueError(f"duplicate targets in {targets}")
    document = [{"targets": targets, "labels": _labels(labels)}]
    out = Path(path)
    if out.suffix not in (".json", ".yml", ".yaml"):
        raise ValueError(f"file_sd file {out} must end in .json, .yml or .yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp_name, 0o644)  # Prometheus usually runs as another user
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


def remove_file_sd_targets(path: str | Path) -> bool:
    """Remove a target file so Prometheus stops scraping those ranks.

    Returns:
        True if a file was removed, False if there was none.
    """
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    return True


def slurm_node_targets(
    base_port: int, local_ranks: int, env: Mapping[str, str] | None = None
) -> tuple[list[tuple[str, int]], dict[str, str], str]:
    """Targets, labels and a file name for this node's ranks inside a SLURM job.

    Args:
        base_port: the exporter's ``metrics.base_port``.
        local_ranks: how many ranks run on this node.
        env: environment to read (``os.environ`` by default).

    Returns:
        ``(targets, labels, file_name)``: one ``(node, base_port + r)`` per local
        rank, labels ``slurm_job_id``, and ``<job id>-<node>.json``.

    Raises:
        ValueError: outside a SLURM job or for a bad port/rank count.
    """
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID")
    node = env.get("SLURMD_NODENAME")
    if not job_id or not node:
        raise ValueError("SLURM_JOB_ID and SLURMD_NODENAME must be set (run inside a SLURM job)")
    if local_ranks < 1:
        raise ValueError(f"local_ranks must be >= 1, got {local_ranks}")
    if not 1 <= base_port <= _MAX_PORT - local_ranks + 1:
        raise ValueError(f"base_port {base_port} leaves no room for {local_ranks} ranks")
    targets = [(node, base_port + r) for r in range(local_ranks)]
    return targets, {"slurm_job_id": job_id}, f"{job_id}-{node}.json"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monitoring.file_sd write|remove DIR``: register this node's ranks."""
    parser = argparse.ArgumentParser(prog="python -m monitoring.file_sd", description=__doc__)
    parser.add_argument("action", choices=("write", "remove"))
    parser.add_argument("directory", type=Path, help="directory Prometheus' file_sd watches")
    parser.add_argument("--base-port", type=int, default=9400)
    parser.add_argument("--local-ranks", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        targets, labels, name = slurm_node_targets(args.base_port, args.local_ranks)
        path = args.directory / name
        if args.action == "write":
            write_file_sd_targets(path, targets, labels)
            print(f"wrote {len(targets)} target(s) to {path}")
        else:
            removed = remove_file_sd_targets(path)
            print(f"{'removed' if removed else 'no file at'} {path}")
    except ValueError as exc:
        print(f"file_sd: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
