"""The sharded layout next to the replicated one, run as real ranks (gloo on loopback).

Every rank runs, per phase, the same training twice from the same seeds: once
with the replicated state (:class:`DeltaSync`) and once with the sharded one
(:func:`obs_dist.engine.sharding.build_sharded`), and writes
``OUT/rank<r>.json`` (losses, checksums, bytes) plus ``OUT/<run>_rank<r>.safetensors``
(its slice, or the whole replicated state on rank 0). ``tests/test_sharded_state.py``
compares them. Usable under torchrun too::

    torchrun --nproc_per_node 2 tests/support/shard_harness.py OUT --device cuda --backend nccl

``state_abs_max`` is the largest |X| at the end (over all slices when sharded);
``--combine sum`` runs the delta rule summed across ranks (decisions §28)::

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 4 tests/support/shard_harness.py OUT --combine sum
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from launch.jobs.spawn import spawn_local
from launch.run_config import RunConfig
from obs_dist.config import from_dict
from obs_dist.engine.collectives import gather_equal, make_block_exchange
from obs_dist.engine.dist import barrier, destroy, get_rank, get_world_size
from obs_dist.engine.replica import ReplicaChecker
from obs_dist.engine.scheduler import PhaseScheduler, SchedulerConfig
from obs_dist.engine.sharding import build_sharded
from obs_dist.engine.slow_weights import AllReduceSlowWeights, DistConfig, init_distributed
from obs_dist.engine.sync import DeltaSync, SyncConfig
from obs_dist.model.model import OBSModel
from obs_dist.model.state import BigState
from obs_dist.tasks import task_batches
from obs_dist.trainer import Trainer

STEPS = 100
PARALLEL_EVERY = 4


class FrozenSlowWeights:
    """Slow weights that never change (the fast state alone is compared)."""

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


def tiny_config(rule: str = "hebbian", device: str = "cpu", nodes: int = 128) -> RunConfig:
    """A tiny committing task: fast on 2 cores, N small enough to compare whole states."""
    return from_dict(RunConfig, {
        "state": {"nodes": nodes, "partitions": 4, "init_std": 0.02, "seed": 5},
        "model": {"d_model": 16, "writer": {"k_min": 2, "k_max": 4, "active": 8, "key_dim": 16,
                                            "rule": rule}},
        "task": {"name": "association", "vocab": 32, "pairs": 1, "gap": 0, "delay": 0,
                 "batch": 2, "fixed_mapping": True},
        "train": {"steps": STEPS, "lr": 3e-3, "progress": False, "log_every": 1,
                  "moments_every": 25, "device": device},
    })


def run(layout: str, phase: str, rule: str, frozen: bool, out: Path, device: torch.device,
        steps: int = STEPS, penalty: float = 0.0, combine: str = "auto", batch: int = 2
        ) -> dict[str, Any]:
    """One training run of ``steps`` steps in one layout and phase; what it saw."""
    cfg = tiny_config(rule, device.type)
    cfg.train.steps = steps
    cfg.task.batch = batch
    world = get_world_size()
    torch.manual_seed(cfg.train.seed)
    model = OBSModel(cfg.model, cfg.state.nodes).to(device)
    slow: Any = FrozenSlowWeights() if frozen else AllReduceSlowWeights(model, cfg.train)
    scheduler = PhaseScheduler(SchedulerConfig(policy=f"always-{phase}"), device)
    sync_cfg = from_dict(SyncConfig, {"parallel_every": PARALLEL_EVERY, "combine": combine})
    extra: dict[str, Any] = {}
    state: Any
    if layout == "sharded":
        engine = build_sharded(cfg.state, sync_cfg, cfg.model.writer.active, device, rule=rule)
        state, sync = engine.state, engine.sync
        extra = {"deferred": engine.deferred, "make_memory": engine.make_memory}
    else:
        state = BigState(cfg.state, device=device)
        sync = DeltaSync(state.bounds, state.num_nodes, sync_cfg, rule)
    trainer = Trainer(cfg.train, model, state, commit=True, penalty=penalty, slow=slow,
                      sync=sync, scheduler=scheduler,
                      exchange=make_block_exchange(sync.meter) if world > 1 else None,
                      parallel_every=PARALLEL_EVERY, **extra)
    checker = ReplicaChecker(state, 25, model, before_check=trainer.flush)
    trainer.hooks.add("replica_check", checker, stage="state")
    losses: list[float] = []
    moments: list[dict[str, float]] = []

    def sink(metrics: dict[str, float], step: int) -> None:
        losses.append(metrics["loss"])
        if "state_std" in metrics:
            moments.append({k: metrics[k] for k in ("state_mean", "state_std",
                                                     "state_kurtosis")})

    trainer.sink = sink
    t0 = time.perf_counter()
    trainer.fit(task_batches(cfg.task, seed_offset=get_rank()))
    seconds = time.perf_counter() - t0
    name = f"{layout}_{phase}_{rule}_{'frozen' if frozen else 'trained'}"
    if layout == "sharded" or get_rank() == 0:
        save_file({"x": state.matrix().detach().cpu().contiguous()},
                  str(out / f"{name}_rank{get_rank()}.safetensors"))
    local_max = state.matrix().detach().abs().max().reshape(1).cpu()
    return {"losses": losses, "moments": moments, "checksums": state.checksums(),
            "state_abs_max": float(local_max if layout == "replicated"
                                   else gather_equal(local_max).max()),
            "mismatches": checker.mismatches, "checks": checker.checks,
            "state_bytes": state.nbytes, "sync_bytes": sync.meter.bytes_sent,
            "seconds": seconds, "name": name}


SCENARIOS = [  # (phase, rule, frozen)
    ("sequential", "hebbian", True), ("parallel", "hebbian", True),
    ("sequential", "hebbian", False), ("parallel", "hebbian", False),
    ("parallel", "delta", False), ("parallel", "delta", True),
]


def main(argv: list[str] | None = None) -> int:
    """Run every scenario in both layouts on this rank and write ``OUT/rank<r>.json``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--combine", default="auto", choices=["auto", "sum", "mean"],
                        help="sync.combine (decisions §28: 'sum' shows the delta rule's "
                             "over-correction at W = 4)")
    parser.add_argument("--batch", type=int, default=2, help="streams per rank")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    init_distributed(DistConfig(engine="torch", backend=args.backend, timeout_s=120), device)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"world": get_world_size(), "rank": get_rank()}
    for phase, rule, frozen in SCENARIOS:
        penalty = 0.1 if rule == "delta" else 0.0
        for layout in ("replicated", "sharded"):
            got = run(layout, phase, rule, frozen, args.out, device, args.steps, penalty,
                      args.combine, args.batch)
            results[got["name"]] = got
            barrier()
    (args.out / f"rank{get_rank()}.json").write_text(json.dumps(results, indent=1))
    destroy()
    return 0


def run_world(world: int, out: Path, timeout_s: float = 900, steps: int = STEPS
              ) -> list[dict[str, Any]]:
    """Run the harness as ``world`` local ranks (gloo on loopback); every rank's results."""
    cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--steps", str(steps)]
    code = spawn_local(cmd, world, extra_env={"OMP_NUM_THREADS": "1"}, timeout_s=timeout_s)
    if code != 0:
        raise RuntimeError(f"shard harness with {world} ranks failed with exit code {code}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


if __name__ == "__main__":
    sys.exit(main())
