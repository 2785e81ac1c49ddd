"""Rank/world helpers with single-process defaults (composer-style).

Everything here works without ``torch.distributed`` being initialised: then the
world is one process of rank 0. Code that must behave differently on rank 0
(writing shared files, logging) asks :func:`is_rank_zero`; every rank may export
metrics.
"""

from __future__ import annotations

import importlib
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as torch_dist


def is_initialized() -> bool:
    """True when a process group is up."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def get_rank() -> int:
    """Global rank; 0 outside a process group (falls back to ``RANK``)."""
    if is_initialized():
        return torch_dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    """World size; 1 outside a process group (falls back to ``WORLD_SIZE``)."""
    if is_initialized():
        return torch_dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def get_local_rank() -> int:
    """Rank on this node (``LOCAL_RANK``), 0 by default."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_rank_zero() -> bool:
    """Whether this process writes shared files and logs."""
    return get_rank() == 0


def default_backend(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device, timeout_s: float = 300.0,
                  backend: str | None = None) -> bool:
    """Join the process group described by the torch.distributed environment.

    Reads ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE`` (set by
    torchrun, the DeepSpeed launcher, ``obs train --nproc`` or ``obs submit``).
    Does nothing for a world of one.

    Args:
        device: this rank's device (a CUDA device becomes the current one).
        timeout_s: collective timeout.
        backend: ``gloo`` or ``nccl``; None: NCCL on CUDA, gloo on CPU.

    Returns:
        True when a process group is (now) initialised.
    """
    if is_initialized():
        return True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        if var not in os.environ:
            raise ValueError(f"WORLD_SIZE={world} but {var} is not set in the environment")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Imported after the group exists, torch.distributed.fsdp keeps the group (and
    # its gloo threads) alive past destroy_process_group (torch 2.13); the first
    # optimizer imports it lazily through torch._dynamo. Those threads then race
    # interpreter shutdown, and a finished task can die with SIGABRT ("terminate
    # called without an active exception"), which SLURM reports as a FAILED job.
    importlib.import_module("torch.distributed.fsdp")
    torch_dist.init_process_group(
        backend=backend or default_backend(device),
        timeout=timedelta(seconds=timeout_s),
    )
    return True


def barrier() -> None:
    """Synchronise all ranks (no-op for one process)."""
    if is_initialized():
        torch_dist.barrier()


def destroy() -> None:
    """Tear the process groups down, if there are any, so their threads end now.

    A gloo group's threads stop only when the last reference to the group goes;
    one that survives to interpreter shutdown can race it and abort a rank that
    had finished (SIGABRT, "terminate called without an active exception"). So
    nothing may keep a group: see :func:`init_from_env` and
    ``DeepSpeedSlowWeights.close``.
    """
    if not is_initialized():
        return
    ds_comm = sys.modules.get("deepspeed.comm")
    if ds_comm is not None and ds_comm.is_initialized():
        # Also drops DeepSpeed's own references to its groups (world clone, data
        # parallel), which would otherwise keep their threads alive until exit.
        ds_comm.destroy_process_group()
    else:
        torch_dist.destroy_process_group()
