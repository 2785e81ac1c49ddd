"""Audio-visual training data for ``task.name = "av"``: shards → trainer batches.

The trainer consumes dictionaries with ``targets`` ``[B, T]``; the loader of
:mod:`pipelines.loader` yields exactly that (object ids at query clips). This
module adds what a run needs around it: making the embedded synthetic shards
when the configured local source is empty (so ``make demo`` needs no download),
sizing the head from the shards' class list, and an endless batch iterator.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines.loader import DataConfig, StreamLoader, build_loader
from pipelines.synthetic import SyntheticConfig, write_synthetic

log = logging.getLogger("obs.av_data")

SHARD_BYTES = 256 << 10


def ensure_local_shards(cfg: DataConfig, synthetic: SyntheticConfig | None,
                        rank: int = 0) -> None:
    """Generate synthetic shards at a local ``cfg.source`` that holds none yet.

    Also at a local ``cfg.eval_source``: held-out streams from the next seed
    (other scenes, voices and jitter), as many as one batch has rows. Only
    rank 0 writes (other ranks wait at the next collective); remote sources
    are never written here (a missing bucket must fail loudly in the loader).

    Raises:
        ValueError: if a source is empty, local, and no synthetic recipe is given.
    """
    _ensure(cfg.source, synthetic, rank)
    if cfg.eval_source:
        held_out = None if synthetic is None else replace(
            synthetic, seed=synthetic.seed + 1, streams=max(cfg.streams, cfg.workers or 1))
        _ensure(cfg.eval_source, held_out, rank)


def _ensure(src: str, synthetic: SyntheticConfig | None, rank: int) -> None:
    if not src or "://" in src and not src.startswith("file://") or src.startswith("pipe:"):
        return
    path = Path(src.removeprefix("file://"))
    if any(path.glob("*.tar")):
        return
    if synthetic is None:
        raise ValueError(f"data source {src!r} holds no shards; make some with "
                         "`obs make-shards` or set make_synthetic = true")
    if rank == 0:
        log.info("no shards at %s: generating the embedded synthetic set", path)
        # Small shards: every stream its own shard chain, so all rows of a batch fill.
        write_synthetic(str(path), synthetic, target_bytes=SHARD_BYTES)


def num_classes(cfg: DataConfig) -> int:
    """Object classes of a local shard directory (``classes.json``), else of the loader."""
    path = Path(cfg.source.removeprefix("file://")) / "classes.json"
    if path.is_file():
        return len(json.loads(path.read_text())["classes"])
    return int(build_loader(cfg).num_classes)


def av_batches(cfg: DataConfig, rank: int = 0,
               world: int = 1) -> tuple[StreamLoader, Iterator[dict[str, Any]]]:
    """The loader (for its cursor and error counts) and an endless batch iterator.

    When an ordered or shuffled source ends, a new epoch starts: training runs
    for as many steps as configured, whatever the data's length.
    """
    loader = build_loader(cfg, rank=rank, world_size=world)

    def forever() -> Iterator[dict[str, Any]]:
        while True:
            produced = False
            for batch in loader:
                produced = True
                yield batch
            if not produced:
                raise ValueError(f"data.source {cfg.source!r} produced no batch")

    return loader, forever()


def av_eval_batches(cfg: DataConfig) -> Iterator[dict[str, Any]]:
    """Batches of ``cfg.eval_source`` from its start, in order, repeating if short.

    Every rank reads the same held-out streams, so all see the same accuracy.
    """
    if not cfg.eval_source:
        raise ValueError("data.eval_source is empty: no evaluation data")
    held_out = replace(cfg, source=cfg.eval_source, eval_source="", mode="ordered", loop=True)
    return av_batches(held_out)[1]
