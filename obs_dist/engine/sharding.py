"""The sharded layout's engine in one place: slice, sync, reads, held-back commits.

``state.layout = "sharded"`` (decisions §5b) replaces three parts of the
replicated engine; :func:`build_sharded` builds them together so the runner,
the tests and the benchmarks wire them the same way:

* the state: :class:`~obs_dist.model.sharded_state.ShardedState`, this rank's columns;
* the commit: :class:`~obs_dist.engine.shard_sync.ShardedDeltaSync` (triples to owners)
  and :class:`~obs_dist.engine.shard_sync.ShardedDeferredCommits` (parallel phase);
* the window: a factory of :class:`~obs_dist.model.sharded_window.ShardedWindowMemory`
  reading through :class:`~obs_dist.engine.shard_reads.ShardReader`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obs_dist.engine.collectives import ByteMeter
from obs_dist.engine.dist import get_rank, get_world_size, is_initialized
from obs_dist.engine.shard_reads import ShardReader
from obs_dist.engine.shard_sync import ShardedDeferredCommits, ShardedDeltaSync, all_sum
from obs_dist.engine.sync import SyncConfig
from obs_dist.model.sharded_state import ShardedState
from obs_dist.model.sharded_window import ShardedWindowMemory
from obs_dist.model.state import StateConfig
from obs_dist.model.window import Exchange, WindowMemory


@dataclass
class ShardedEngine:
    """What a trainer needs for the sharded layout (see :func:`build_sharded`)."""

    state: ShardedState
    sync: ShardedDeltaSync
    reader: ShardReader
    deferred: ShardedDeferredCommits
    candidates: int

    def make_memory(self, base: torch.Tensor, batch: int, shared: bool,
                    exchange: Exchange | None) -> WindowMemory:
        """A window's memory over this rank's slice (the trainer's ``make_memory``)."""
        return ShardedWindowMemory(base, batch, self.reader, self.candidates, shared=shared,
                                   exchange=exchange, overlay=self.deferred.held)


def build_sharded(config: StateConfig, sync: SyncConfig, candidates: int,
                  device: torch.device | str = "cpu", meter: ByteMeter | None = None,
                  init: bool = True, rule: str = "hebbian") -> ShardedEngine:
    """This rank's slice and the sharded engine around it (inside the joined world).

    Args:
        config: the state (N, dtype, seed).
        sync: sync settings.
        candidates: m, the model's most active nodes per read (``model.writer.active``).
        device: where the slice lives.
        meter: accounts the reads' bytes (default: the sync's meter, so
            ``sync_bytes_total`` counts reads and writes).
        init: fill the slice with the seeded Gaussian.
        rule: the writer rule (``model.writer.rule``; how writes combine).
    """
    world = get_world_size() if is_initialized() else 1
    rank = get_rank() if is_initialized() else 0
    state = ShardedState(config, rank, world, device=device, init=init, all_sum=all_sum)
    return sharded_engine(state, sync, candidates, meter, rule)


def sharded_engine(state: ShardedState, sync: SyncConfig, candidates: int,
                   meter: ByteMeter | None = None, rule: str = "hebbian") -> ShardedEngine:
    """The engine around an existing slice (see :func:`build_sharded`)."""
    delta_sync = ShardedDeltaSync(state, sync, rule)
    reader = ShardReader(state, meter if meter is not None else delta_sync.meter)
    return ShardedEngine(state, delta_sync, reader, ShardedDeferredCommits(state), candidates)
