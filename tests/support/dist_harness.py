"""Multi-process scenarios for the distributed engine, run as real ranks.

Run under any launcher that sets the torch.distributed environment::

    python tests/support/dist_harness.py OUT_DIR                       # inside a world
    torchrun --nproc_per_node 2 tests/support/dist_harness.py OUT_DIR --device cuda --backend nccl

or from Python with :func:`run_world` (local ranks on loopback). Every rank
writes ``OUT_DIR/rank<r>.json`` with what it saw; the tests in
``tests/test_dist_*.py`` compare the ranks' files (and replay recorded sync
inputs in a single process). The same file is the NCCL check on a GPU machine:
with ``--device cuda --backend nccl`` it runs every scenario on CUDA tensors.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import torch

from launch.jobs.spawn import spawn_local
from launch.run_config import RunConfig
from obs_dist.config import from_dict
from obs_dist.engine.collectives import make_block_exchange
from obs_dist.engine.dist import barrier, destroy, get_rank, get_world_size
from obs_dist.engine.replica import ReplicaChecker, ReplicaDivergenceError, slow_weights_checksum
from obs_dist.engine.scheduler import PhaseScheduler, SchedulerConfig, WindowSignals
from obs_dist.engine.slow_weights import AllReduceSlowWeights, DistConfig, init_distributed
from obs_dist.engine.sync import DeltaSync, SyncConfig, coalesced_f32
from obs_dist.model.delta import SparseDelta
from obs_dist.model.model import OBSModel
from obs_dist.model.state import BigState
from obs_dist.model.window import WindowMemory
from obs_dist.tasks import task_batches
from obs_dist.trainer import Trainer

STEPS = 200
PARALLEL_EVERY = 4
CHECK_EVERY = 50
# Low enough that busy partitions take the dense path and quiet ones the sparse path.
DENSE_ABOVE = 0.01


def small_config(batch: int = 2, rule: str = "hebbian", device: str = "cpu") -> RunConfig:
    """A tiny committing task (association with one fixed world): fast on 2 cores."""
    return from_dict(RunConfig, {
        "state": {"nodes": 256, "partitions": 4, "init_std": 0.02, "seed": 5},
        "model": {"d_model": 16, "writer": {"k_min": 2, "k_max": 4, "active": 8, "key_dim": 16,
                                            "rule": rule}},
        "task": {"name": "association", "vocab": 32, "pairs": 1, "gap": 0, "delay": 0,
                 "batch": batch, "fixed_mapping": True},
        "train": {"steps": STEPS, "lr": 3e-3, "progress": False, "log_every": 50,
                  "moments_every": 10_000, "device": device},
    })


class RecordingSync(DeltaSync):
    """A DeltaSync that keeps every input delta (for the single-process replay)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inputs: list[SparseDelta] = []

    def __call__(self, delta: SparseDelta) -> SparseDelta:
        self.inputs.append(delta.coalesce().to("cpu", torch.float32))
        return super().__call__(delta)


class FrozenSlowWeights:
    """Slow weights that never change (equivalence runs compare the fast state only)."""

    def backward(self, loss: torch.Tensor) -> None:
        """Nothing to accumulate."""

    def step(self) -> float:
        """No update."""
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to load."""


def _model(cfg: RunConfig, device: torch.device) -> tuple[OBSModel, BigState]:
    torch.manual_seed(cfg.train.seed)
    return OBSModel(cfg.model, cfg.state.nodes).to(device), BigState(cfg.state, device=device)


def _trainer(cfg: RunConfig, model: OBSModel, state: BigState, sync: Any, phase: str,
             slow: Any, every: int = PARALLEL_EVERY) -> Trainer:
    world = get_world_size()
    scheduler = PhaseScheduler(SchedulerConfig(policy=f"always-{phase}"), state.device)
    return Trainer(cfg.train, model, state, commit=True, slow=slow, sync=sync,
                   scheduler=scheduler,
                   exchange=make_block_exchange() if world > 1 and sync is not None else None,
                   parallel_every=every)


# ------------------------------------------------------------------ scenarios
def replicas(phase: str, out: Path, device: torch.device) -> dict[str, Any]:
    """200 training steps in one phase: checksums at the end, sync inputs saved."""
    cfg = small_config(device=device.type)
    model, state = _model(cfg, device)
    sync = RecordingSync(state.bounds, state.num_nodes, SyncConfig(dense_above=DENSE_ABOVE))
    trainer = _trainer(cfg, model, state, sync, phase, AllReduceSlowWeights(model, cfg.train))
    checker = ReplicaChecker(state, CHECK_EVERY, model, before_check=trainer.flush)
    trainer.hooks.add("replica_check", checker, stage="state")
    start = time.perf_counter()
    metrics = trainer.fit(task_batches(cfg.task, seed_offset=get_rank()))
    deltas = {f"{i}.{k}": getattr(d, k) for i, d in enumerate(sync.inputs)
              for k in ("rows", "cols", "values")}
    from safetensors.torch import save_file

    save_file(deltas, str(out / f"rank{get_rank()}_{phase}_inputs.safetensors"))
    return {"checksums": state.checksums(), "slow": slow_weights_checksum(model),
            "syncs": len(sync.inputs), "checks": checker.checks,
            "partitions": len(state.parts),
            "mismatches": checker.mismatches, "steps": metrics["step"],
            "dense_partitions": sync.counters["sync_dense_partitions_total"],
            "sync_bytes": sync.counters["sync_bytes_total"],
            "seconds": time.perf_counter() - start}


def equivalence(phase: str, device: torch.device, windows: int = 3) -> dict[str, Any]:
    """Frozen weights, K = 1: W ranks on slices of a global batch vs one process on all of it.

    The ranks' deltas are summed (``combine = "sum"``): that sum is what must equal
    one process's sum over its streams. (The delta rule's default averages each
    entry over the ranks that wrote it, decisions §28.)
    """
    world, rank = get_world_size(), get_rank()
    cfg = small_config(batch=3 * world, rule="delta", device=device.type)
    cfg.train.steps = windows
    batches = list(itertools.islice(task_batches(cfg.task, seed_offset=77), windows))
    mine = [{k: v[rank * 3:(rank + 1) * 3] for k, v in b.items()} for b in batches]
    model, state = _model(cfg, device)
    before = state.matrix().clone()
    sync = DeltaSync(state.bounds, state.num_nodes, SyncConfig(combine="sum"), "delta")
    trainer = _trainer(cfg, model, state, sync, phase, FrozenSlowWeights(), every=1)
    trainer.fit(iter(mine))
    result: dict[str, Any] = {"checksums": state.checksums()}
    if rank == 0:
        ref_model, ref_state = _model(cfg, device)
        ref = _trainer(cfg, ref_model, ref_state, None, phase, FrozenSlowWeights(), every=1)
        ref.fit(iter(batches))
        result["max_abs_diff"] = float((state.matrix() - ref_state.matrix()).abs().max())
        result["max_change"] = float((ref_state.matrix() - before).abs().max())
    return result


def visibility(device: torch.device) -> dict[str, Any]:
    """Rank 0's stream 0 writes at step 0; every other rank reads the row at steps 0 and 1."""
    rank = get_rank()
    n, bsz = 64, 2
    base = torch.zeros(n, n, device=device)
    memory = WindowMemory(base, bsz, shared=True, exchange=make_block_exchange())
    rows = torch.tensor([[5, 6], [7, 8]], device=device)
    cols = torch.tensor([[9], [10]], device=device)
    a = torch.tensor([[1.0, 2.0], [0.0, 0.0]], device=device) * (1.0 if rank == 0 else 0.0)
    b = torch.ones(bsz, 1, device=device) * 3.0
    memory.write("link", rows + 10 * rank, a, cols, b)
    probe_rows = torch.tensor([[5], [5]], device=device)
    weights = torch.ones(bsz, 1, device=device)
    before = memory.read(probe_rows, weights)[:, 9].tolist()  # same step: own writes only
    memory.next_step()
    memory.write("link", rows, torch.zeros_like(a), cols, b)
    after = memory.read(probe_rows, weights)[:, 9].tolist()  # next step: everyone's
    memory.next_step()
    return {"before": before, "after": after}


def _random_deltas(rank: int, device: torch.device) -> tuple[SparseDelta, SparseDelta]:
    """Rank ``rank``'s two test deltas: four partitions of mixed density, and an uneven one."""
    n = 512
    bounds = [0, 128, 256, 384, 512]
    gen = torch.Generator().manual_seed(100 + rank)
    pieces = []
    for p, density in enumerate([0.002, 0.3, 0.02, 0.6]):
        count = int(density * 128 * n)
        rows = torch.randint(bounds[p], bounds[p + 1], (count,), generator=gen)
        cols = torch.randint(0, n, (count,), generator=gen)
        pieces.append((rows, cols, torch.randn(count, generator=gen)))
    delta = SparseDelta.from_indices(torch.cat([x[0] for x in pieces]),
                                     torch.cat([x[1] for x in pieces]),
                                     torch.cat([x[2] for x in pieces]), n).to(device)
    uneven = SparseDelta.from_indices(torch.randint(0, n, (40 if rank else 4000,), generator=gen),
                                      torch.randint(0, n, (40 if rank else 4000,), generator=gen),
                                      torch.randn(40 if rank else 4000, generator=gen),
                                      n).to(device)
    return delta, uneven


def _crc(d: SparseDelta) -> int:
    raw = torch.cat([d.rows.cpu().view(torch.uint8), d.cols.cpu().view(torch.uint8),
                     d.values.cpu().view(torch.uint8)])
    return zlib.crc32(raw.numpy().tobytes())


def dense_vs_sparse(device: torch.device) -> dict[str, Any]:
    """The same random deltas summed (and averaged) by the sparse, dense and auto paths.

    ``<name>.<combine>.reference`` is the crc of every rank's delta, rebuilt here
    from its seed and coalesced in rank order with ``reduce=combine``.
    """
    world, rank = get_world_size(), get_rank()
    n, parts = 512, 4
    bounds = [0, 128, 256, 384, 512]
    mine = _random_deltas(rank, device)
    everyone = [_random_deltas(r, device) for r in range(world)]
    out: dict[str, Any] = {"world": world}
    for i, name in enumerate(("mixed", "uneven")):
        for combine in ("sum", "mean"):
            ref = SparseDelta.cat([coalesced_f32(e[i], n) for e in everyone]).coalesce(combine)
            out[f"{name}.{combine}.reference"] = {"crc": _crc(ref), "nnz": ref.nnz}
            for mode in ("sparse", "dense", "auto"):
                sync = DeltaSync(bounds, n, SyncConfig(mode=mode, dense_above=0.1,
                                                       combine=combine))
                got = sync(mine[i])
                # "mixed.sparse" and the like: the sums (their names before "mean" came).
                key = f"{name}.{mode}" if combine == "sum" else f"{name}.mean.{mode}"
                out[key] = {"crc": _crc(got), "nnz": got.nnz,
                            "dense_partitions": sync.last.dense_partitions,
                            "bytes": sync.last.bytes_sent, "kinds": dict(sync.meter.per_kind)}
    out["partitions"] = parts
    return out


def scheduler_agreement(device: torch.device, windows: int = 40) -> dict[str, Any]:
    """Ranks see different signals; the adaptive policy must still decide the same everywhere."""
    rank = get_rank()
    sched = PhaseScheduler(SchedulerConfig(), device)
    gen = torch.Generator().manual_seed(rank)
    phases = []
    for w in range(windows):
        u = torch.rand(4, generator=gen).tolist()
        writes = 100 + int(900 * u[0])
        sched.observe_window(WindowSignals(writes, int(writes * (0.5 + 0.5 * u[1])),
                                           loss_sum=50 * u[2], scored=20, seconds=0.01 + u[3]))
        kind = 1.0 if (w // 10) % 2 and rank == 0 else (0.0 if rank else -1.0)
        phases.append(sched.decide(kind))
    return {"phases": phases, "metrics": sched.metrics()}


def corruption(device: torch.device) -> dict[str, Any]:
    """The last rank corrupts partition 1 at step 7; the check at step 10 must stop the run."""
    world = get_world_size()
    cfg = small_config(device=device.type)
    cfg.train.steps = 30
    cfg.train.log_every = 1
    model, state = _model(cfg, device)
    sync = DeltaSync(state.bounds, state.num_nodes, SyncConfig())
    seen: list[dict[str, float]] = []
    trainer = _trainer(cfg, model, state, sync, "parallel", AllReduceSlowWeights(model, cfg.train))
    trainer.sink = lambda m, s: seen.append(dict(m))

    def corrupt(tr: Trainer, metrics: dict[str, float]) -> None:
        if tr.step == 7 and get_rank() == world - 1:
            state.parts[1][3, 4] += 1.0

    trainer.hooks.add("corrupt", corrupt, stage="state")  # registered first: runs first
    trainer.hooks.add("replica_check", ReplicaChecker(state, 5, model,
                                                      before_check=trainer.flush), stage="state")
    try:
        trainer.fit(task_batches(cfg.task, seed_offset=get_rank()))
    except ReplicaDivergenceError as exc:
        return {"error": str(exc), "step": trainer.step,
                "exported": seen[-1].get("checksum_mismatches_total") if seen else None}
    return {"error": None, "step": trainer.step}


def main(argv: list[str] | None = None) -> int:
    """Run every scenario on this rank and write ``OUT/rank<r>.json``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    parser.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU a rank
    init_distributed(DistConfig(engine="torch", backend=args.backend, timeout_s=120), device)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    scenarios = {
        "sequential": lambda: replicas("sequential", args.out, device),
        "parallel": lambda: replicas("parallel", args.out, device),
        "equivalence_parallel": lambda: equivalence("parallel", device),
        "equivalence_sequential": lambda: equivalence("sequential", device),
        "visibility": lambda: visibility(device),
        "dense_vs_sparse": lambda: dense_vs_sparse(device),
        "scheduler_agreement": lambda: scheduler_agreement(device),
        "corruption": lambda: corruption(device),
    }
    results: dict[str, Any] = {"world": get_world_size(), "rank": get_rank(),
                               "device": str(device)}
    for name, fn in scenarios.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        results[name] = fn()
        results[f"{name}.seconds"] = time.perf_counter() - t0
        barrier()
    (args.out / f"rank{get_rank()}.json").write_text(json.dumps(results, indent=1))
    destroy()
    return 0


def run_world(world: int, out: Path, only: list[str] | None = None, timeout_s: float = 600,
              device: str = "cpu", backend: str = "auto") -> list[dict[str, Any]]:
    """Run the harness as ``world`` local ranks (gloo on loopback by default); all results."""
    cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--device", device,
           "--backend", backend]
    if only:
        cmd += ["--only", *only]
    code = spawn_local(cmd, world, extra_env={"OMP_NUM_THREADS": "1"}, timeout_s=timeout_s)
    if code != 0:
        raise RuntimeError(f"dist harness with {world} ranks failed with exit code {code}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


if __name__ == "__main__":
    sys.exit(main())
