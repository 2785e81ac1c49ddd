"""``obs bench sync``: bytes and seconds of the delta sync, sparse vs dense, vs density.

For each world size W the benchmark starts W local ranks (gloo on loopback by
default; ``--device cuda --backend nccl`` for GPUs, one per rank). Every rank
builds a random coalesced delta of the given density over an N×N state
(different entries on every rank) and times :class:`~obs_dist.engine.sync.DeltaSync`
with every partition forced sparse, then forced dense. Reported per (W, density):

* ``sparse_bytes`` / ``dense_bytes`` — bytes one rank sends (the collectives'
  volume, counted by the sync itself; max over ranks);
* ``allgather_volume`` — ``(W−1)·nnz·(4+4+4)``, the ideal all-gather volume,
  and ``sparse_over_allgather`` = their ratio (target ≤ 1.25);
* ``sparse_seconds`` / ``dense_seconds`` — median over repeats of the slowest rank;
* ``loopback_bytes_per_rank`` — what the loopback interface really carried
  during the sparse and dense calls (``/proc/net/dev``, divided by W; includes
  TCP/IP and gloo framing and any other loopback traffic on the machine).

and per W the crossover density where dense becomes faster (log-interpolated),
as per-rank density and as *gathered* density ``W·density`` (what
``sync.dense_above`` compares against).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from launch.output import emit

DENSITIES = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


def _loopback_tx() -> int:
    """Bytes sent on the loopback interface so far (Linux), or -1."""
    try:
        for line in Path("/proc/net/dev").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[8])
    except OSError:
        pass
    return -1


def _random_delta(n: int, density: float, seed: int, device: Any) -> Any:
    """A coalesced delta with about ``density·N²`` distinct random entries."""
    import torch

    from obs_dist.model.delta import INDEX_DTYPE, SparseDelta

    gen = torch.Generator().manual_seed(seed)
    count = max(1, round(density * n * n))
    keys = torch.unique(torch.randint(0, n * n, (count,), generator=gen))
    values = torch.randn(keys.numel(), generator=gen)
    delta = SparseDelta((keys // n).to(INDEX_DTYPE), (keys % n).to(INDEX_DTYPE), values, n,
                        coalesced=True)
    return delta.to(device)


def _child() -> None:
    """One rank: time both paths at every density; rank 0 writes the rows."""
    params = json.loads(sys.argv[1])
    import torch

    from obs_dist.engine.collectives import gather_equal
    from obs_dist.engine.dist import barrier, destroy, get_rank, get_world_size
    from obs_dist.engine.slow_weights import DistConfig, init_distributed
    from obs_dist.engine.sync import DeltaSync, SyncConfig
    from obs_dist.model.state import partition_bounds

    device = torch.device(params["device"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    init_distributed(DistConfig(engine="torch", backend=params["backend"], timeout_s=1800),
                     device)
    rank, world = get_rank(), get_world_size()
    n = params["nodes"]
    bounds = partition_bounds(n, params["partitions"])
    rows = []
    for density in params["densities"]:
        delta = _random_delta(n, density, 1000 * rank + int(-math.log10(density) * 7), device)
        nnz = torch.tensor([delta.nnz], device=device)
        nnz_all = gather_equal(nnz).cpu().reshape(-1).tolist()
        row: dict[str, Any] = {"world": world, "nodes": n, "density": density,
                               "nnz_per_rank": max(nnz_all),
                               "allgather_volume": (world - 1) * max(nnz_all) * 12}
        repeats = params["repeats"] if density <= 1e-3 else 1
        for mode in ("sparse", "dense"):
            sync = DeltaSync(bounds, n, SyncConfig(mode=mode))
            if density <= 1e-3:
                sync(delta)  # warm-up: first-call allocations
            times, sent, lo = [], 0, 0
            for _ in range(repeats):
                barrier()
                tx0 = _loopback_tx()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                out = sync(delta)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64,
                                       device=device)
                sent = sync.last.bytes_sent
                barrier()
                lo = _loopback_tx() - tx0
                times.append(float(gather_equal(elapsed).max()))
                del out
            bytes_all = gather_equal(torch.tensor([sent], device=device)).cpu().reshape(-1)
            row[f"{mode}_seconds"] = sorted(times)[len(times) // 2]
            row[f"{mode}_bytes"] = int(bytes_all.max())
            row[f"{mode}_loopback_bytes_per_rank"] = lo // world if lo >= 0 else None
        row["sparse_over_allgather"] = row["sparse_bytes"] / max(row["allgather_volume"], 1)
        rows.append(row)
        del delta
    if rank == 0:
        Path(params["out"]).write_text(json.dumps(rows))
    destroy()


def crossover(rows: list[dict[str, Any]]) -> float | None:
    """Per-rank density where dense starts to be faster (log-interpolated), or None."""
    prev = None
    for row in rows:
        gain = math.log(row["sparse_seconds"] / row["dense_seconds"])
        if gain >= 0:
            if prev is None:
                return float(row["density"])
            (d0, g0), d1 = prev, row["density"]
            frac = -g0 / (gain - g0) if gain != g0 else 0.0
            return float(math.exp(math.log(d0) + frac * (math.log(d1) - math.log(d0))))
        prev = (row["density"], gain)
    return None


def run(args: argparse.Namespace) -> int:
    """Measure every world size in its own set of local ranks."""
    from launch.jobs.spawn import spawn_local, threads_per_rank

    results: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for world in tqdm(args.worlds, desc="bench sync", unit="world", file=sys.stderr):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            params = {"nodes": args.nodes, "partitions": args.partitions,
                      "densities": sorted(args.densities), "repeats": args.repeats,
                      "device": args.device, "backend": args.backend, "out": str(out)}
            code = spawn_local([sys.executable, "-c",
                                "from launch.bench.sync import _child; _child()",
                                json.dumps(params)], world, timeout_s=args.timeout)
            if code != 0 or not out.is_file():
                raise RuntimeError(f"bench sync with {world} ranks failed (exit code {code})")
            rows = json.loads(out.read_text())
        results.extend(rows)
        cross = crossover(rows)
        summary[f"world{world}"] = {
            "crossover_density_per_rank": cross,
            "crossover_gathered_density": None if cross is None else cross * world,
            "bytes_crossover_gathered_density": 2 * 4 / 12,
            "max_sparse_over_allgather": max(r["sparse_over_allgather"] for r in rows),
        }
    emit({"results": results, "summary": summary, "device": args.device,
          "backend": args.backend, "partitions": args.partitions,
          "threads_per_rank": threads_per_rank(max(args.worlds))}, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs bench sync``."""
    p = sub.add_parser("sync", help="delta sync across local ranks: bytes and seconds, "
                                    "sparse vs dense, vs density")
    p.add_argument("--nodes", type=int, default=16384)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    p.add_argument("--densities", type=float, nargs="+", default=DENSITIES)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per point (<= 1e-3)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank)")
    p.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    p.add_argument("--timeout", type=float, default=3600, help="seconds per world size")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
