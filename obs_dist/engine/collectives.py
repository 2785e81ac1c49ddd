"""Collectives whose results are bit-identical on every rank, with byte accounting.

Everything here runs on gloo (CPU) and NCCL (CUDA) alike: only ``all_gather``
of equal-sized tensors and ``all_to_all_single`` are used, never gloo-only sparse
APIs. Results that involve floating-point sums are computed *once per element*
in rank order and then copied to every rank, so the same bits reach every
replica whatever ring or tree the backend picks.

Byte counts are what one rank puts on the wire under the bandwidth-optimal
algorithm of each collective (ring ``all_gather``: ``(W−1)·S``; ``all_to_all``:
``(W−1)/W`` of the input). They are what the benchmarks report and what
``sync_bytes_total`` exports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as torch_dist

from obs_dist.engine.dist import get_rank, get_world_size, is_initialized

# Pad an uneven all_gather to the largest rank while that costs at most this factor
# over the exact volume; beyond it, an all_to_all with exact splits sends no padding.
PAD_SLACK = 1.25


@dataclass
class ByteMeter:
    """Bytes this rank sent and the collectives it took part in."""

    bytes_sent: int = 0
    calls: int = 0
    per_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, nbytes: int) -> None:
        """Account ``nbytes`` sent by this rank in one collective of ``kind``."""
        self.bytes_sent += int(nbytes)
        self.calls += 1
        self.per_kind[kind] = self.per_kind.get(kind, 0) + int(nbytes)


def _flag_device() -> torch.device:
    """Where small control tensors live: this rank's GPU under NCCL, else the CPU."""
    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank (identity outside a process group)."""
    if not is_initialized() or get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_flag_device())
    torch_dist.broadcast(t, src=0)
    return int(t.item())


def _reduce_flag(flag: bool, op: torch_dist.ReduceOp.RedOpType) -> bool:
    if not is_initialized() or get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_flag_device())
    torch_dist.all_reduce(t, op=op)
    return bool(t.item())


def all_ranks_agree(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank (a collective in a process group)."""
    return _reduce_flag(flag, torch_dist.ReduceOp.MIN)


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on some rank (a collective in a process group)."""
    return _reduce_flag(flag, torch_dist.ReduceOp.MAX)


def _gather_into(out: torch.Tensor, inp: torch.Tensor) -> None:
    # torch >= 2.10 renamed all_gather_into_tensor (now a deprecated alias).
    fn = getattr(torch_dist, "all_gather_single", None) or torch_dist.all_gather_into_tensor
    fn(out, inp)


def gather_equal(t: torch.Tensor, meter: ByteMeter | None = None) -> torch.Tensor:
    """All ranks' ``t`` (same shape everywhere) stacked in rank order: ``[W, *t.shape]``."""
    world = get_world_size()
    if world == 1 or not is_initialized():
        return t[None].clone()
    flat = t.contiguous().reshape(-1)  # gloo wants the output as a concatenation
    out = torch.empty(world * flat.numel(), dtype=t.dtype, device=t.device)
    _gather_into(out, flat)
    out = out.view(world, *t.shape)
    if meter is not None:
        meter.add("all_gather", (world - 1) * t.numel() * t.element_size())
    return out


def gather_uneven(t: torch.Tensor, counts: list[int],
                  meter: ByteMeter | None = None) -> list[torch.Tensor]:
    """Every rank's ``t`` (``counts[r]`` rows each, same trailing shape), in rank order.

    Near-balanced counts go through one padded ``all_gather`` (ring, bandwidth
    optimal); strongly unbalanced ones through ``all_to_all_single`` with exact
    splits, so no rank pays for another's padding.

    Args:
        t: this rank's rows, ``[counts[rank], ...]``.
        counts: rows held by each rank (known to all, e.g. from :func:`gather_equal`).
        meter: accounts the bytes this rank sends.
    """
    world = get_world_size()
    rank = get_rank()
    if t.shape[0] != counts[rank]:
        raise ValueError(f"gather_uneven: rank {rank} holds {t.shape[0]} rows, counts say "
                         f"{counts[rank]}")
    if world == 1 or not is_initialized():
        return [t]
    row_bytes = math.prod(t.shape[1:]) * t.element_size()
    total, top = sum(counts), max(counts)
    if top == 0:
        return [t[:0].clone() for _ in range(world)]
    if top * world <= PAD_SLACK * total:
        padded = t.new_zeros((top, *t.shape[1:]))
        padded[:t.shape[0]] = t
        out = gather_equal(padded, None)
        if meter is not None:
            meter.add("all_gather", (world - 1) * top * row_bytes)
        return [out[r, :counts[r]] for r in range(world)]
    # Exact splits: send our rows to every rank, receive everyone's.
    send = t.repeat((world,) + (1,) * (t.dim() - 1))
    recv = t.new_empty((total, *t.shape[1:]))
    torch_dist.all_to_all_single(recv, send, output_split_sizes=list(counts),
                                 input_split_sizes=[t.shape[0]] * world)
    if meter is not None:
        meter.add("all_to_all", (world - 1) * t.shape[0] * row_bytes)
    return list(recv.split(list(counts)))


def sum_in_rank_order(flat: torch.Tensor, meter: ByteMeter | None = None) -> torch.Tensor:
    """Element-wise sum of a 1-D tensor over ranks, bit-identical on every rank.

    A reduce-scatter done by hand (``all_to_all``: rank ``j`` receives slice ``j``
    of every rank and adds them as ``((0 + x_0) + x_1) + …`` in rank order),
    then an ``all_gather`` of the summed slices. It moves the same bytes as a
    ring all-reduce, ``2·(W−1)/W`` of the tensor per rank, and its sums are the
    ones the sparse path's rank-ordered coalesce computes, so dense and sparse
    summation agree to the bit.
    """
    world = get_world_size()
    if world == 1 or not is_initialized():
        return flat.clone()
    if flat.dim() != 1:
        raise ValueError(f"sum_in_rank_order takes a 1-D tensor, got shape {tuple(flat.shape)}")
    n = flat.numel()
    chunk = -(-n // world)
    padded = flat.new_zeros(chunk * world)
    padded[:n] = flat
    recv = torch.empty_like(padded)
    torch_dist.all_to_all_single(recv, padded)
    parts = recv.view(world, chunk)
    acc = torch.zeros(chunk, dtype=flat.dtype, device=flat.device)
    for r in range(world):
        acc += parts[r]
    out = gather_equal(acc, None).reshape(-1)[:n]
    if meter is not None:
        nbytes = chunk * flat.element_size()
        meter.add("all_to_all", (world - 1) * nbytes)
        meter.add("all_gather", (world - 1) * nbytes)
    return out


def mean_in_rank_order(flat: torch.Tensor, meter: ByteMeter | None = None) -> torch.Tensor:
    """:func:`sum_in_rank_order` divided by the world size (gradient averaging)."""
    return sum_in_rank_order(flat, meter) / get_world_size()


BlockExchange = Callable[[dict[str, tuple[torch.Tensor, ...]]],
                         dict[str, tuple[torch.Tensor, ...]]]


def make_block_exchange(meter: ByteMeter | None = None) -> BlockExchange:
    """The sequential phase's per-step exchange of window blocks across ranks.

    The returned function takes, per block kind, this rank's blocks of the step
    as ``(rows [B, r], a [B, r], cols [B, c], b [B, c])`` and returns the other
    ranks' blocks of the same kind stacked as ``[(W−1)·B, ·]`` (rank order, own
    rank left out). Everything is sent in one ``all_gather`` of a float64 buffer:
    indices below 2**53 and fp32/fp64 coefficients travel exactly.
    """

    def exchange(blocks: dict[str, tuple[torch.Tensor, ...]]
                 ) -> dict[str, tuple[torch.Tensor, ...]]:
        world, rank = get_world_size(), get_rank()
        kinds = sorted(blocks)
        pieces = [t.detach().to(torch.float64).reshape(-1)
                  for k in kinds for t in blocks[k]]
        if not pieces:
            return {}
        buf = torch.cat(pieces)
        everyone = gather_equal(buf, meter)  # [W, len]
        others = torch.cat([everyone[:rank], everyone[rank + 1:]])  # [W-1, len]
        out: dict[str, tuple[torch.Tensor, ...]] = {}
        offset = 0
        for k in kinds:
            got = []
            for t in blocks[k]:
                size = t.numel()
                part = others[:, offset:offset + size].reshape((world - 1) * t.shape[0],
                                                               *t.shape[1:])
                dtype = t.dtype
                got.append(part.to(dtype) if dtype.is_floating_point else part.long())
                offset += size
            out[k] = tuple(got)
        return out

    return exchange
