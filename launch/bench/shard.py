"""``obs bench shard``: the sharded layout next to the replicated one (issue 16).

For each world size W the benchmark starts W local ranks (gloo on loopback by
default; ``--device cuda --backend nccl`` with one GPU per rank). Each rank
sets its own intra-op thread count (``--threads``, default 1) before any work.
In each layout and phase, every rank trains the same committing MQAR model
(seeded) for ``--windows`` timed windows after one warm-up, and reports:

* ``state_bytes_per_rank`` — what the rank's state holds (N² or N·N/W values);
* ``sec_per_window`` — median over the timed windows of the slowest rank;
* ``bytes_per_step`` — bytes one rank sent per time step (max over ranks), with
  the split between reads (``read_bytes_per_step``) and everything else
  (commits, the sequential phase's block exchange, slow-weight checks excluded:
  slow-weight gradients go through the all-reduce engine and are not counted);
* for the sharded layout, ``read_bound_per_step`` — the analytic bound of the
  read protocol (decisions §5b) for the entries the rank really sent::

      (W−1)·[8·B·k + 4·W + 4·B·m'·(2+k)] + 12·L

  with ``m' = min(m, N/W)`` and ``L`` the local-part entries sent to other
  owners — and ``read_over_bound`` (target ≤ 1.25);
* ``write_bytes_per_step`` and, sharded, ``write_bound_per_step`` =
  ``12·E + 8·(W−1) + 16·(W−1)`` with ``E`` the committed entries sent to other owners.

``--profile`` runs rank 0 under cProfile and adds ``collective_wait_s_per_window``
and its top functions to each row.

The summary gives, per W and phase, ``sharded_over_replicated`` seconds per window,
and per W ``gather_latency``: milliseconds a small ``all_gather`` costs back to
back and with compute between the calls (the sharded reads meet once per step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from launch.output import emit

PHASES = ["sequential", "parallel"]


def _config(params: dict[str, Any], layout: str) -> Any:
    from launch.run_config import RunConfig
    from obs_dist.config import from_dict

    k_max, window = params["k_max"], params["window"]
    return from_dict(RunConfig, {
        "state": {"nodes": params["nodes"], "partitions": 4, "layout": layout},
        "model": {"d_model": params["d_model"], "writer": {
            "k_min": k_max // 2, "k_max": k_max, "active": params["active"]}},
        "task": {"name": "mqar", "vocab": 256, "seq_len": window, "pairs": window // 4,
                 "batch": params["batch"], "commit": True},
        "train": {"steps": params["windows"] + 1, "progress": False,
                  "device": params["device"], "moments_every": 10_000},
        "sync": {"parallel_every": 4, "check_every": 0},
    })


def _measure(params: dict[str, Any], layout: str, phase: str, device: Any) -> dict[str, Any]:
    """One layout and phase on this rank: seconds, state bytes and bytes sent."""
    import torch

    from obs_dist.engine.collectives import ByteMeter, gather_equal, make_block_exchange
    from obs_dist.engine.dist import barrier, get_world_size
    from obs_dist.engine.scheduler import PhaseScheduler, SchedulerConfig
    from obs_dist.engine.sharding import build_sharded
    from obs_dist.engine.slow_weights import AllReduceSlowWeights
    from obs_dist.engine.sync import DeltaSync
    from obs_dist.model.model import OBSModel
    from obs_dist.model.state import BigState
    from obs_dist.tasks import task_batches
    from obs_dist.trainer import Trainer

    cfg = _config(params, layout)
    world = get_world_size()
    torch.manual_seed(0)
    model = OBSModel(cfg.model, cfg.state.nodes).to(device)
    read_meter = ByteMeter()
    extra: dict[str, Any] = {}
    state: Any
    reader = None
    if layout == "sharded":
        engine = build_sharded(cfg.state, cfg.sync, cfg.model.writer.active, device, read_meter,
                               rule=cfg.model.writer.rule)
        state, sync, reader = engine.state, engine.sync, engine.reader
        extra = {"deferred": engine.deferred, "make_memory": engine.make_memory}
    else:
        state = BigState(cfg.state, device=device)
        sync = DeltaSync(state.bounds, state.num_nodes, cfg.sync, cfg.model.writer.rule)
    exchange_meter = ByteMeter()
    trainer = Trainer(cfg.train, model, state, commit=True,
                      slow=AllReduceSlowWeights(model, cfg.train), sync=sync,
                      scheduler=PhaseScheduler(SchedulerConfig(policy=f"always-{phase}"),
                                               device),
                      exchange=make_block_exchange(exchange_meter) if world > 1 else None,
                      parallel_every=cfg.sync.parallel_every, **extra)
    batches = task_batches(cfg.task, seed_offset=1 + int(os.environ.get("RANK", "0")))
    trainer.train_step(next(batches))  # warm-up
    trainer.flush()
    sent0 = (read_meter.bytes_sent, sync.meter.bytes_sent, exchange_meter.bytes_sent)
    local0 = reader.local_sent if reader else 0
    routed0 = sync.routed_sent if layout == "sharded" else 0
    times = []
    for _ in range(params["windows"]):
        b = next(batches)
        barrier()
        t0 = time.perf_counter()
        trainer.train_step(b)
        elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        times.append(float(gather_equal(elapsed).max()))
    trainer.flush()
    steps = params["windows"] * params["window"]
    reads = read_meter.bytes_sent - sent0[0]
    writes = sync.meter.bytes_sent - sent0[1]
    exchange = exchange_meter.bytes_sent - sent0[2]
    mine = torch.tensor([reads, writes, exchange], dtype=torch.float64, device=device)
    top = gather_equal(mine).max(0).values.cpu().tolist()
    times.sort()
    row: dict[str, Any] = {
        "layout": layout, "phase": phase, "world": world, "nodes": params["nodes"],
        "state_bytes_per_rank": state.nbytes, "sec_per_window": times[len(times) // 2],
        "bytes_per_step": sum(top) / steps, "read_bytes_per_step": top[0] / steps,
        "write_bytes_per_step": top[1] / steps, "exchange_bytes_per_step": top[2] / steps}
    if layout == "sharded" and reader is not None:
        b, k, m = params["batch"], params["k_max"], params["active"]
        width = min(m, -(-params["nodes"] // world))
        per_read = (world - 1) * (8 * b * k + 4 * world + 4 * b * width * (2 + k))
        bounds = torch.tensor([per_read * steps + 12 * (reader.local_sent - local0),
                               12 * (sync.routed_sent - routed0)
                               + 24 * (world - 1) * sync.counters["sync_calls_total"]],
                              dtype=torch.float64, device=device)
        bound = gather_equal(bounds).max(0).values.cpu().tolist()
        row["read_bound_per_step"] = bound[0] / steps
        row["read_over_bound"] = top[0] / max(bound[0], 1.0)
        row["write_bound_per_step"] = bound[1] / steps
    barrier()
    return row


def _gather_latency(device: Any, calls: int = 200) -> dict[str, float]:
    """Milliseconds per small ``all_gather``: back to back, and with compute between calls.

    The sharded reads meet the other ranks at every time step; what one such
    meeting costs on this machine (a blocked process must wake up) bounds how
    close the parallel phase can come to the replicated one, which does not meet.
    """
    import torch

    from obs_dist.engine.collectives import gather_equal
    from obs_dist.engine.dist import barrier

    x = torch.zeros(256, dtype=torch.int32, device=device)
    a = torch.randn(160, 160, device=device)
    out: dict[str, float] = {}
    for name, work in (("back_to_back", 0), ("between_compute", 3)):
        for _ in range(20):
            gather_equal(x)
        barrier()
        t0 = time.perf_counter()
        for _ in range(calls):
            for _ in range(work):
                a = torch.tanh(a @ a)
            gather_equal(x)
        total = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(calls):
            for _ in range(work):
                a = torch.tanh(a @ a)
        out[f"{name}_ms"] = 1e3 * (total - (time.perf_counter() - t1)) / calls
    return out


def _profiled(params: dict[str, Any], layout: str, phase: str, device: Any) -> dict[str, Any]:
    """:func:`_measure`, under cProfile on rank 0 with ``--profile``.

    Adds ``collective_wait_s_per_window`` (rank 0's seconds in the process group's
    ``wait``, warm-up window included, over the timed windows: where a layout's
    window goes when the ranks meet) and ``profile``, the top functions by own
    time. Rank 0's seconds are then the profiled ones; compare them only with
    each other.
    """
    from obs_dist.engine.dist import get_rank

    if not params.get("profile") or get_rank() != 0:
        return _measure(params, layout, phase, device)
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    row: dict[str, Any] = prof.runcall(_measure, params, layout, phase, device)
    stats = pstats.Stats(prof)
    wait = sum(entry[2] for func, entry in stats.stats.items()  # type: ignore[attr-defined]
               if "_distributed_c10d.wait" in func[2])
    row["collective_wait_s_per_window"] = wait / params["windows"]
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
    row["profile"] = text.getvalue()
    return row


def _child() -> None:
    """One rank: both layouts and phases; rank 0 writes the rows."""
    params = json.loads(sys.argv[1])
    import torch

    torch.set_num_threads(params["threads"])
    from obs_dist.engine.dist import destroy, get_rank, get_world_size
    from obs_dist.engine.slow_weights import DistConfig, init_distributed

    device = torch.device(params["device"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    init_distributed(DistConfig(engine="torch", backend=params["backend"], timeout_s=1800),
                     device)
    rows = [_profiled(params, layout, phase, device)
            for phase in params["phases"] for layout in ("replicated", "sharded")]
    latency = _gather_latency(device) if get_world_size() > 1 else None
    if get_rank() == 0:
        Path(params["out"]).write_text(json.dumps({"rows": rows, "latency": latency}))
    destroy()


def run(args: argparse.Namespace) -> int:
    """Measure every world size in its own set of local ranks."""
    from launch.jobs.spawn import spawn_local

    results: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for world in tqdm(args.worlds, desc="bench shard", unit="world", file=sys.stderr):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            params = {"nodes": args.nodes, "batch": args.batch, "window": args.window,
                      "windows": args.windows, "k_max": args.k_max, "active": args.active,
                      "d_model": args.d_model, "phases": args.phases, "device": args.device,
                      "backend": args.backend, "threads": args.threads, "out": str(out),
                      "profile": args.profile}
            code = spawn_local([sys.executable, "-c",
                                "from launch.bench.shard import _child; _child()",
                                json.dumps(params)], world, timeout_s=args.timeout,
                               extra_env={"OMP_NUM_THREADS": str(args.threads)})
            if code != 0 or not out.is_file():
                raise RuntimeError(f"bench shard with {world} ranks failed (exit code {code})")
            written = json.loads(out.read_text())
        rows = written["rows"]
        results.extend(rows)
        if written["latency"] is not None:
            summary[f"world{world}.gather_latency"] = written["latency"]
        for phase in args.phases:
            rep = next(r for r in rows if r["layout"] == "replicated" and r["phase"] == phase)
            sh = next(r for r in rows if r["layout"] == "sharded" and r["phase"] == phase)
            summary[f"world{world}.{phase}"] = {
                "sharded_over_replicated_seconds": sh["sec_per_window"] / rep["sec_per_window"],
                "state_bytes_ratio": sh["state_bytes_per_rank"] / rep["state_bytes_per_rank"],
                "read_over_bound": sh.get("read_over_bound")}
    emit({"results": results, "summary": summary, "device": args.device,
          "backend": args.backend, "threads_per_rank": args.threads}, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs bench shard``."""
    p = sub.add_parser("shard", help="sharded vs replicated state: bytes per rank, bytes "
                                     "sent per step vs the analytic bound, seconds per window")
    p.add_argument("--nodes", type=int, default=4096)
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch", type=int, default=4, help="streams per rank")
    p.add_argument("--window", type=int, default=16, help="time steps per window")
    p.add_argument("--windows", type=int, default=5, help="timed windows (after a warm-up)")
    p.add_argument("--k-max", dest="k_max", type=int, default=16)
    p.add_argument("--active", type=int, default=16)
    p.add_argument("--d-model", dest="d_model", type=int, default=64)
    p.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank)")
    p.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    p.add_argument("--timeout", type=float, default=3600, help="seconds per world size")
    p.add_argument("--profile", action="store_true",
                   help="cProfile rank 0: seconds waiting on collectives per window and the "
                   "top functions (its timings are then the profiled ones)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
