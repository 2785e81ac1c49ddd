"""``obs bench scaling``: samples/s per phase and world size; adaptive vs fixed policies.

The task is one where order matters, and it is of two kinds (declared in the
samples' ``kind``, as shard metadata declares it):

* **continuous** episodes — every stream watches the same world (one mapping
  A → B for the episode). Each stream studies a few pairs, then is asked about
  the pairs its *neighbour* studied (the neighbour of the last stream on a rank
  is the first stream of the next rank). Only the sequential phase, where every
  stream sees every stream's writes from the next step on, can answer.
* **discrete** episodes — every stream has its own mapping and is asked about
  its own pairs. Other streams' writes (same A, other B) only interfere, so the
  parallel phase is both faster and more accurate.

Kinds come in runs (a kind persists with probability ``1 − 1/segment``), the
same on every rank. Each policy trains a fresh model (same seed) for
``--steps`` episodes and is then evaluated on held-out episodes of both kinds
under the same policy. Reported: samples/s (all ranks together; one thread per
rank), accuracy per kind and overall, and the share of sequential windows.
The goal of the adaptive policy: near-parallel speed at near-sequential accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from launch.output import emit

if TYPE_CHECKING:
    from obs_dist.engine.slow_weights import DistConfig

POLICIES = ["always-sequential", "always-parallel", "adaptive"]


def relay_episode(streams: int, pairs: int, vocab: int, continuous: bool,
                  gen: Any) -> dict[str, Any]:
    """One episode for ``streams`` global streams: study ``pairs`` pairs, then query them.

    Returns ``tokens``/``targets`` ``[streams, 3·pairs]`` and ``kind`` (one per stream).
    """
    import torch

    from obs_dist.tasks import IGNORE

    half = vocab // 2
    a = torch.argsort(torch.rand(streams, half - 1, generator=gen), dim=1)[:, :pairs] + 1
    if continuous:
        world = torch.randint(half, vocab, (half,), generator=gen)  # one mapping for all
        b = world[a]
        source = torch.roll(torch.arange(streams), -1)  # ask about the neighbour's pairs
    else:
        b = torch.randint(half, vocab, (streams, pairs), generator=gen)
        source = torch.arange(streams)
    tokens = torch.zeros(streams, 3 * pairs, dtype=torch.long)
    targets = torch.full_like(tokens, IGNORE)
    tokens[:, 0:2 * pairs:2] = a
    tokens[:, 1:2 * pairs:2] = b
    order = torch.argsort(torch.rand(streams, pairs, generator=gen), dim=1)
    tokens[:, 2 * pairs:] = a[source].gather(1, order)
    targets[:, 2 * pairs:] = b[source].gather(1, order)
    kind = ["continuous" if continuous else "discrete"] * streams
    return {"tokens": tokens, "targets": targets, "kind": kind}


def relay_stream(streams: int, pairs: int, vocab: int, segment: int, seed: int,
                 rank: int, per_rank: int) -> Iterator[dict[str, Any]]:
    """This rank's slice of an endless episode stream (identical on every rank)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    continuous = False
    while True:
        if float(torch.rand(1, generator=gen)) < 1.0 / segment:
            continuous = not continuous
        ep = relay_episode(streams, pairs, vocab, continuous, gen)
        lo, hi = rank * per_rank, (rank + 1) * per_rank
        yield {"tokens": ep["tokens"][lo:hi], "targets": ep["targets"][lo:hi],
               "kind": ep["kind"][lo:hi]}


def _child() -> None:
    """One rank: join the world, run :func:`_rank` in it, leave it as ``obs train`` does."""
    p = json.loads(sys.argv[1])
    import torch

    from obs_dist.engine.slow_weights import DistConfig, joined_world

    dist_cfg = DistConfig(engine=p["engine"])
    with joined_world(dist_cfg, torch.device("cpu")):
        _rank(p, dist_cfg)


def _rank(p: dict[str, Any], dist_cfg: DistConfig) -> None:
    """Train with one policy, time it, evaluate it; rank 0 writes the row."""
    import torch

    from launch.run_config import RunConfig
    from obs_dist.config import from_dict
    from obs_dist.engine.collectives import make_block_exchange
    from obs_dist.engine.dist import barrier, get_rank, get_world_size
    from obs_dist.engine.scheduler import PhaseScheduler, SchedulerConfig
    from obs_dist.engine.slow_weights import DeepSpeedConfig, build_slow_weights, release
    from obs_dist.model.model import OBSModel
    from obs_dist.model.state import BigState
    from obs_dist.trainer import Trainer

    torch.set_num_threads(1)
    rank, world = get_rank(), get_world_size()
    cfg = from_dict(RunConfig, {
        "state": {"nodes": p["nodes"], "partitions": 4},
        "model": {"d_model": p["d_model"], "vocab": p["vocab"], "classes": p["vocab"],
                  "writer": {"k_min": 2, "k_max": p["k_max"], "active": 8, "key_dim": 32}},
        "task": {"name": "mqar", "vocab": p["vocab"], "seq_len": 3 * p["pairs"],
                 "pairs": p["pairs"], "batch": p["batch"]},
        "train": {"steps": p["steps"], "lr": p["lr"], "warmup": 10, "progress": False},
    })
    torch.manual_seed(0)
    model = OBSModel(cfg.model, cfg.state.nodes)
    state = BigState(cfg.state)
    slow, engine = build_slow_weights(dist_cfg, DeepSpeedConfig(), model, cfg.train,
                                      p["batch"])
    sched = PhaseScheduler(SchedulerConfig(policy=p["policy"]))
    trainer = Trainer(cfg.train, model, state, commit=False, slow=slow, scheduler=sched,
                      exchange=make_block_exchange() if world > 1 else None)
    streams = world * p["batch"]
    train = relay_stream(streams, p["pairs"], p["vocab"], p["segment"], 1, rank, p["batch"])
    warm = min(5, p["steps"] // 4)
    start = 0.0
    for i in range(p["steps"]):
        if i == warm:
            barrier()
            start = time.perf_counter()
        trainer.train_step(next(train))
    barrier()
    seconds = time.perf_counter() - start
    seq_share = sched.decisions["sequential"] / max(sum(sched.decisions.values()), 1)
    evals = relay_stream(streams, p["pairs"], p["vocab"], p["segment"], 2, rank, p["batch"])
    hits = {"continuous": [0.0, 0.0], "discrete": [0.0, 0.0]}
    model.eval()
    with torch.no_grad():
        for _ in range(p["eval_episodes"]):
            b = next(evals)
            out = trainer.run_batch(b, train=False)
            hits[b["kind"][0]][0] += out["accuracy"] * out["scored"]
            hits[b["kind"][0]][1] += out["scored"]
    total = torch.tensor([v for pair in hits.values() for v in pair], dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(total)  # counts: order does not matter for reporting
    cont = float(total[0] / max(total[1], 1))
    disc = float(total[2] / max(total[3], 1))
    row = {"policy": p["policy"], "world": world, "engine": engine,
           "samples_per_s": (p["steps"] - warm) * streams / seconds,
           "sequential_share": seq_share, "accuracy": float((total[0] + total[2]) /
                                                            max(total[1] + total[3], 1)),
           "accuracy_continuous": cont, "accuracy_discrete": disc}
    if rank == 0:
        Path(p["out"]).write_text(json.dumps(row))
    # DeepSpeed's engine and its hooks hold the process groups in a reference cycle;
    # released here, the cycle is collected when joined_world leaves the world.
    release(slow)


def run(args: argparse.Namespace) -> int:
    """Train and evaluate every (world, policy) pair in its own set of local ranks."""
    from launch.jobs.spawn import spawn_local

    plan = [(w, pol, "torch") for w in args.worlds for pol in args.policies]
    if args.deepspeed:
        plan += [(max(args.worlds), "always-parallel", "deepspeed")]
    rows = []
    for world, policy, engine in tqdm(plan, desc="bench scaling", unit="run", file=sys.stderr):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            params = {"policy": policy, "engine": engine, "out": str(out),
                      "steps": args.steps, "eval_episodes": args.eval_episodes,
                      "batch": args.batch, "pairs": args.pairs, "vocab": args.vocab,
                      "segment": args.segment, "nodes": args.nodes, "d_model": args.d_model,
                      "k_max": args.k_max, "lr": args.lr}
            code = spawn_local([sys.executable, "-c",
                                "from launch.bench.scaling import _child; _child()",
                                json.dumps(params)], world, timeout_s=args.timeout)
            if code != 0 or not out.is_file():
                raise RuntimeError(f"bench scaling {policy} at world {world} failed ({code})")
            rows.append(json.loads(out.read_text()))
    summary: dict[str, Any] = {}
    for world in args.worlds:
        by = {r["policy"]: r for r in rows if r["world"] == world and r["engine"] == "torch"}
        if {"always-sequential", "always-parallel", "adaptive"} <= set(by):
            seq, par, ada = by["always-sequential"], by["always-parallel"], by["adaptive"]
            summary[f"world{world}"] = {
                "adaptive_speed_vs_parallel": ada["samples_per_s"] / par["samples_per_s"],
                "adaptive_speed_vs_sequential": ada["samples_per_s"] / seq["samples_per_s"],
                "adaptive_accuracy_minus_sequential": ada["accuracy"] - seq["accuracy"],
                "adaptive_accuracy_minus_parallel": ada["accuracy"] - par["accuracy"]}
    emit({"results": rows, "summary": summary, "steps": args.steps, "batch_per_rank": args.batch,
          "threads_per_rank": 1}, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs bench scaling``."""
    p = sub.add_parser("scaling", help="samples/s per phase and world size; adaptive vs fixed "
                                       "policies on an order-dependent task")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--policies", nargs="+", default=POLICIES, choices=POLICIES)
    p.add_argument("--steps", type=int, default=300, help="training episodes per run")
    p.add_argument("--eval-episodes", type=int, default=40)
    p.add_argument("--batch", type=int, default=8, help="streams per rank")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--segment", type=int, default=4, help="mean episodes per run of one kind")
    p.add_argument("--nodes", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--k-max", type=int, default=6)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--deepspeed", action="store_true",
                   help="also time always-parallel with the DeepSpeed engine (its overhead)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
