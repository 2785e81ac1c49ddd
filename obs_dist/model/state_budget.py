"""Will the big state fit? A memory estimate made before anything is allocated.

A run whose per-rank state cannot fit its device (GPU memory) or its node's RAM
would fail minutes later, in the middle of the initialisation, or worse, push
the node into swap or the OOM killer. :func:`check_state_fits` refuses such a
config up front with the figure, what is available, and the layout (and world
size) that would fit.

The estimate per rank is the state's own bytes (all of X in the replicated
layout, the widest column slice in the sharded one) plus what scales with N
alongside it: one initialisation draw of ``1024 × N`` fp32 values (``64 × N`` in
the sharded layout), and the node
embeddings with their gradient and two AdamW moments (``4 · N · d · 4``).
Everything else (window blocks, encoders, batches) is small next to it and is
covered by :data:`HEADROOM`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from obs_dist.model.state import StateConfig

GIB = 2**30
# Share of the available memory the estimate may take (the rest: the framework,
# window blocks, batches, allocator slack).
HEADROOM = 0.9
INIT_CHUNK_ROWS = 1024  # BigState draws its initialisation in chunks of these rows
SHARDED_DRAW_ROWS = 64  # ShardedState draws in pieces of these rows


@dataclass(frozen=True)
class Budget:
    """Memory one rank may use, and what it is.

    Attributes:
        bytes_per_rank: what one rank may take.
        what: where the figure comes from, for messages.
        ranks_per_node: ranks sharing one node's RAM (CPU), None for one device each.
    """

    bytes_per_rank: int
    what: str
    ranks_per_node: int | None = None


def rank_bytes(cfg: StateConfig, layout: str, world: int, d_model: int) -> int:
    """Estimated bytes one rank needs for the state and what scales with N beside it."""
    n = cfg.nodes
    width = n if layout == "replicated" else math.ceil(n / max(world, 1))
    elem = torch.finfo(cfg.torch_dtype).bits // 8
    draw = INIT_CHUNK_ROWS if layout == "replicated" else SHARDED_DRAW_ROWS
    return n * width * elem + draw * n * 4 + 4 * n * d_model * 4


def available(device: torch.device, local_world: int) -> Budget:
    """What one rank may use: its GPU's free memory, or its share of the node's free RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return Budget(int(free * HEADROOM), f"{free / GIB:.1f} GiB free on {device}")
    avail = _mem_available()
    share = int(avail * HEADROOM) // max(local_world, 1)
    return Budget(share, f"{avail / GIB:.1f} GiB of available RAM shared by "
                         f"{local_world} local rank(s)", ranks_per_node=max(local_world, 1))


def _mem_available() -> int:
    """MemAvailable of /proc/meminfo in bytes (the physical total elsewhere)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_state_fits(cfg: StateConfig, world: int, d_model: int, budget: Budget) -> int:
    """Refuse a state that would not fit, before anything is allocated.

    Args:
        cfg: the state (N, dtype, layout).
        world: ranks of the job.
        d_model: width of the node embeddings.
        budget: what one rank may use (:func:`available`).

    Returns:
        The estimated bytes per rank (it fits).

    Raises:
        ValueError: naming the estimate, the budget and the layout that would fit.
    """
    need = rank_bytes(cfg, cfg.layout, world, d_model)
    if need <= budget.bytes_per_rank:
        return need
    n = cfg.nodes
    head = (f"state.layout = {cfg.layout!r} needs ~{need / GIB:.1f} GiB per rank (N = {n:,}, "
            f"{cfg.dtype}, {world} rank(s)); each rank has ~{budget.bytes_per_rank / GIB:.1f} "
            f"GiB ({budget.what}, {HEADROOM:.0%} usable)")
    sharded = rank_bytes(cfg, "sharded", world, d_model)
    if cfg.layout == "replicated" and sharded <= budget.bytes_per_rank:
        raise ValueError(f"{head}. state.layout = 'sharded' needs ~{sharded / GIB:.1f} GiB per "
                         f"rank with {world} ranks and fits: set state.layout=sharded")
    # More ranks, each with this rank's budget: one GPU each, or more nodes like this one
    # (ranks on one node share its RAM, so more of them on the same node do not help).
    for more in range(world + 1, 4097):
        if rank_bytes(cfg, "sharded", more, d_model) <= budget.bytes_per_rank:
            each = rank_bytes(cfg, "sharded", more, d_model) / GIB
            where = ("one device each" if budget.ranks_per_node is None else
                     f"{math.ceil(more / budget.ranks_per_node)} nodes like this one with "
                     f"{budget.ranks_per_node} ranks each")
            raise ValueError(f"{head}. state.layout = 'sharded' fits with {more} or more ranks "
                             f"(~{each:.1f} GiB each; {where}), or use a smaller state.nodes "
                             "or dtype")
    raise ValueError(f"{head}. No layout fits; use a smaller state.nodes or dtype")
