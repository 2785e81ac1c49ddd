"""Checkpoints of the sharded layout: each owner writes its own slice (decisions §5b).

In ``state.layout = "sharded"`` no rank holds all of X, so every rank writes the
base and the delta logs of *its* column slice, next to its per-rank state::

    state/base-NNNNNNNNNN/slice-RRRRR.safetensors   rank R's slice X[:, lo:hi] (base)
    state/log-NNNNNNNNNN/slice-RRRRR.safetensors    entries of rank R's slice changed
                                                    since the previous checkpoint

A rank lists its slice objects in its rank index, so rank 0's manifest, written
last as always, lists (and verifies, and retains) every slice: ``base`` holds
the W base keys in rank order, ``logs`` the W log keys of every checkpoint since
the base, and ``state`` describes every slice (rank, first and last column).
Whether a checkpoint writes bases or logs is decided once for all ranks (rank 0,
from the summed size of every slice's log), so a chain is always W slices wide.

Resume loads the slice of this rank's number: a checkpoint written by another
world size is refused (its slices have other columns); resharding on resume is
not implemented.
"""

from __future__ import annotations

from typing import Any

import torch

from obs_dist.checkpoint.codec import bytes_to_tensors, tensors_to_bytes
from obs_dist.checkpoint.delta_log import entry_bytes
from obs_dist.checkpoint.format import (
    CheckpointCorrupt,
    Manifest,
    get_verified,
    load_state,
    put_object,
)
from obs_dist.engine.collectives import broadcast_int
from obs_dist.engine.dist import get_rank
from obs_dist.engine.shard_sync import all_sum
from obs_dist.model.delta import INDEX_DTYPE
from obs_dist.model.sharded_state import ShardedState
from obs_dist.model.state import BigState, StateConfig
from obs_dist.storage import ObjectStore

# Upper bound of a log's safetensors header (as the manager's LOG_HEADER_BYTES).
LOG_HEADER_BYTES = 512


def slice_base_key(step: int, rank: int) -> str:
    """Key of rank ``rank``'s slice in the base taken at ``step``."""
    return f"state/base-{step:010d}/slice-{rank:05d}.safetensors"


def slice_log_key(step: int, rank: int) -> str:
    """Key of rank ``rank``'s log of entries changed up to ``step``."""
    return f"state/log-{step:010d}/slice-{rank:05d}.safetensors"


def slice_shape(state: ShardedState) -> dict[str, Any]:
    """What a sharded checkpoint must match, and every slice it lists."""
    bounds = state.col_bounds
    return {"nodes": state.num_nodes, "partitions": len(state.parts),
            "dtype": str(state.dtype).removeprefix("torch."), "layout": "sharded",
            "bounds": [0, state.num_nodes],
            "slices": [{"rank": r, "col_start": bounds[r], "col_end": bounds[r + 1]}
                       for r in range(state.world)],
            "nbytes": state.num_nodes * state.num_nodes * state.local.element_size()}


def write_slice_base(store: ObjectStore, state: ShardedState, step: int
                     ) -> dict[str, dict[str, Any]]:
    """Write this rank's slice as its part of the base of ``step``."""
    key = slice_base_key(step, state.rank)
    data = tensors_to_bytes({"slice": state.local.detach().cpu()},
                            metadata={"rank": str(state.rank), "world": str(state.world),
                                      "col_start": str(state.lo), "col_end": str(state.hi)})
    return {key: put_object(store, key, data)}


def write_slice_log(store: ObjectStore, state: ShardedState, step: int, keys: torch.Tensor
                    ) -> dict[str, dict[str, Any]]:
    """Write the current values of this slice's touched entries (global ``row·N+col`` keys)."""
    n = state.num_nodes
    keys = keys.to(state.device)
    rows, cols = keys // n, keys % n
    values = state.local_entries(rows, cols)
    data = tensors_to_bytes({"rows": rows.to(INDEX_DTYPE).cpu(), "cols": cols.to(INDEX_DTYPE).cpu(),
                             "values": values.cpu()},
                            metadata={"num_nodes": str(n), "dtype": str(state.dtype),
                                      "rank": str(state.rank)})
    key = slice_log_key(step, state.rank)
    return {key: put_object(store, key, data)}


def load_slice(store: ObjectStore, manifest: Manifest, state: ShardedState) -> int:
    """Load this rank's base slice, then replay its logs in order; every object verified.

    Returns:
        The number of log entries replayed.

    Raises:
        CheckpointCorrupt: an object is missing, altered, or not this slice's.
    """
    if len(manifest.base) != state.world:
        raise CheckpointCorrupt(f"manifest of step {manifest.step} lists {len(manifest.base)} "
                                f"base slices for {state.world} ranks")
    key = manifest.base[state.rank]
    tensors = bytes_to_tensors(get_verified(store, manifest, key), store.url_for(key))
    if "slice" not in tensors:
        raise CheckpointCorrupt(f"{store.url_for(key)} holds no 'slice' tensor")
    try:
        state.load_partition(0, tensors["slice"])
    except ValueError as exc:
        raise CheckpointCorrupt(f"{store.url_for(key)}: {exc}") from None
    mine = f"/slice-{state.rank:05d}.safetensors"
    replayed = 0
    for log_key in [k for k in manifest.logs if k.endswith(mine)]:
        what = store.url_for(log_key)
        logged = bytes_to_tensors(get_verified(store, manifest, log_key), what)
        if {"rows", "cols", "values"} - set(logged):
            raise CheckpointCorrupt(f"{what} is not a slice log")
        rows, cols, values = logged["rows"].long(), logged["cols"].long(), logged["values"]
        if values.dtype != state.dtype or not rows.shape == cols.shape == values.shape:
            raise CheckpointCorrupt(f"{what}: malformed log for this slice")
        if rows.numel():
            if int(cols.min()) < state.lo or int(cols.max()) >= state.hi:
                raise CheckpointCorrupt(f"{what}: columns outside this rank's slice "
                                        f"[{state.lo}, {state.hi})")
            state.local[rows.to(state.device), cols.to(state.device) - state.lo] = \
                values.to(state.device)
        replayed += int(rows.numel())
    return replayed


def sharded_kind(state: ShardedState, touched: int, last: Manifest | None, fraction: float,
                 force_base: bool) -> bool:
    """Whether this checkpoint writes base slices (True) or slice logs: one answer everywhere.

    A collective. Rank 0 decides from every slice's log estimate (summed over
    ranks) and its chain's log bytes, as the replicated layout decides for one
    state (``checkpoint.base_every_fraction`` of the whole state's bytes).

    Args:
        state: this rank's slice.
        touched: entries of this slice changed since the last checkpoint.
        last: rank 0's newest manifest (None elsewhere, or before the first).
        fraction: ``checkpoint.base_every_fraction``.
        force_base: write a base whatever the logs.
    """
    mine = touched * entry_bytes(state.dtype) + LOG_HEADER_BYTES
    total = int(all_sum(torch.tensor([mine], dtype=torch.int64, device=state.device))[0])
    full = state.num_nodes * state.num_nodes * state.local.element_size()
    base = force_base or last is None or last.log_bytes + total > fraction * full
    return broadcast_int(int(base) if get_rank() == 0 else 0) == 1


def sharded_chain(step: int, world: int, base: bool, last: Manifest | None) -> dict[str, Any]:
    """Rank 0: the manifest's state fields (the new slices' records come with the rank indices).

    ``new_logs`` names this checkpoint's slice logs, whose sizes the manager
    adds to ``log_bytes`` once it has read every rank's index.
    """
    if base or last is None:
        return {"base_step": step, "base": [slice_base_key(step, r) for r in range(world)],
                "logs": [], "log_bytes": 0, "touched": 0, "objects": {}, "new_logs": []}
    new = [slice_log_key(step, r) for r in range(world)]
    return {"base_step": last.base_step, "base": list(last.base),
            "logs": [*last.logs, *new], "log_bytes": last.log_bytes, "touched": 0,
            "objects": {k: last.objects[k] for k in [*last.base, *last.logs]},
            "new_logs": new}


def read_sharded_matrix(store: ObjectStore, manifest: Manifest, config: StateConfig
                        ) -> torch.Tensor:
    """All of X assembled from every slice of a sharded checkpoint (tools, tests; small N).

    Args:
        store: where the checkpoint lives.
        manifest: a sharded checkpoint's manifest.
        config: the state's config (N, partitions, dtype) as the run had it.
    """
    pieces = []
    for rank in range(manifest.world_size):
        piece = ShardedState(config, rank, manifest.world_size, init=False)
        load_slice(store, manifest, piece)
        pieces.append(piece.matrix())
    return torch.cat(pieces, 1)


def load_layout(store: ObjectStore, manifest: Manifest, state: BigState | ShardedState) -> int:
    """Load the checkpoint's big state into ``state``: this rank's slice, or the whole ``X``.

    Returns:
        What the loader returns (entries read).
    """
    if isinstance(state, ShardedState):
        return load_slice(store, manifest, state)
    return load_state(store, manifest, state)


def check_layout(manifest: Manifest, state: BigState | ShardedState) -> None:
    """Refuse a checkpoint of another layout (or, sharded, another world size) for ``state``.

    Raises:
        ValueError: naming the layouts or the world sizes.
    """
    layout = manifest.state.get("layout", "replicated")
    if not isinstance(state, ShardedState):
        if layout != "replicated":
            raise ValueError(f"checkpoint at step {manifest.step} holds a {layout} state; this "
                             "run has state.layout = 'replicated'")
        return
    if layout != "sharded":
        raise ValueError(f"checkpoint at step {manifest.step} holds a {layout} state; this run "
                         "has state.layout = 'sharded'")
    if manifest.world_size != state.world:
        raise ValueError(f"checkpoint at step {manifest.step} holds a sharded state in "
                         f"{manifest.world_size} column slices (one per rank), this run has "
                         f"{state.world} rank(s): resume with {manifest.world_size} ranks "
                         "(resharding on resume is not supported)")
