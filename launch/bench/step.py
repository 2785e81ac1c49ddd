"""``obs bench step``: seconds per token and peak memory of a training step vs N.

Each size runs in a fresh process so that its peak RSS is its own. A step is a
full window: forward over T steps, backward, optimizer step and the commit of
the window's deltas into the state (the continual setting, the most work).

Each child sets its own intra-op thread count (``--threads``, default 1) before
any work, as ``obs train`` gives each rank its share: torch's default of every
core per process made steps up to 10x slower on a loaded machine. The count is
recorded in the JSON, with torch's version and, on CUDA, the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from tqdm import tqdm

from launch.output import emit


def measure(nodes: int, k_max: int, active: int, d_model: int, batch: int, window: int,
            windows: int, device: str, threads: int = 1) -> dict[str, float | int | str | None]:
    """Time ``windows`` training windows at N = ``nodes`` in this process."""
    import torch

    torch.set_num_threads(threads)
    from launch.run_config import RunConfig
    from launch.runner import build_model
    from obs_dist.config import from_dict
    from obs_dist.tasks import task_batches
    from obs_dist.trainer import Trainer

    cfg = from_dict(RunConfig, {
        "state": {"nodes": nodes, "partitions": 4},
        "model": {"d_model": d_model, "writer": {"k_min": k_max // 2, "k_max": k_max,
                                                 "active": active}},
        "task": {"name": "mqar", "vocab": 256, "seq_len": window, "pairs": window // 4,
                 "batch": batch, "commit": True},
        "train": {"steps": windows + 1, "progress": False, "device": device},
    })
    model, state = build_model(cfg, torch.device(device))
    trainer = Trainer(cfg.train, model, state, commit=True)
    batches = task_batches(cfg.task)
    cuda = device.startswith("cuda")
    trainer.train_step(next(batches))  # warm-up: allocator, first-call overheads
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(windows):
        b = next(batches)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step(b)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    row: dict[str, float | int | str | None] = {
        "nodes": nodes,
        "sec_per_window": median,
        "sec_per_token": median / (batch * window),
        "peak_rss_bytes": peak,
        "state_bytes": state.nbytes,
        "delta_nnz": trainer.last_delta_nnz,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name() if cuda else None,
    }
    if cuda:  # timed windows only: the peak is reset after the warm-up
        row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return row


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with every OpenMP/BLAS pool sized to ``threads``.

    Set before the child starts, so the pools are sized before torch loads
    (``torch.set_num_threads`` in the child then fixes the intra-op count too).
    """
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    return env


def _child() -> None:
    args = json.loads(sys.argv[1])
    print(json.dumps(measure(**args)))


def run(args: argparse.Namespace) -> int:
    """Measure every size in a child process and report the flatness ratio."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    results = []
    versions: dict[str, object] = {}
    for n in tqdm(args.nodes, desc="bench step", unit="size", file=sys.stderr):
        params = {"nodes": n, "k_max": args.k_max, "active": args.active,
                  "d_model": args.d_model, "batch": args.batch, "window": args.window,
                  "windows": args.windows, "device": args.device, "threads": args.threads}
        proc = subprocess.run(
            [sys.executable, "-c", "from launch.bench.step import _child; _child()",
             json.dumps(params)], capture_output=True, text=True, check=False,
            env=thread_env(args.threads))
        if proc.returncode != 0:
            raise RuntimeError(f"bench step at N={n} failed:\n{proc.stderr[-4000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        # The state lives where the step runs: host memory on the CPU, GPU memory on CUDA.
        on_host = 0 if "peak_cuda_bytes" in row else row["state_bytes"]
        row["rss_over_state_bytes"] = row["peak_rss_bytes"] - on_host
        if "peak_cuda_bytes" in row:
            row["cuda_over_state_bytes"] = row["peak_cuda_bytes"] - row["state_bytes"]
        versions = {k: row.pop(k) for k in ("torch", "cuda", "gpu")}
        results.append(row)
    first, last = results[0], results[-1]
    summary = {
        "results": results,
        "k_max": args.k_max, "active": args.active, "d_model": args.d_model,
        "batch": args.batch, "window": args.window, "device": args.device,
        "threads": args.threads, **versions,
        "time_ratio_last_first": last["sec_per_token"] / first["sec_per_token"],
        "max_rss_over_state_gib": max(r["rss_over_state_bytes"] for r in results) / 2**30,
    }
    if all("cuda_over_state_bytes" in r for r in results):
        summary["max_cuda_over_state_gib"] = max(
            r["cuda_over_state_bytes"] for r in results) / 2**30
    emit(summary, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs bench step``."""
    p = sub.add_parser("step", help="seconds per token and peak RSS of a training step vs N")
    p.add_argument("--nodes", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    p.add_argument("--k-max", type=int, default=32)
    p.add_argument("--active", type=int, default=32)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--windows", type=int, default=5, help="timed windows per size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op and OpenMP threads in each child (1 on the shared "
                        "2-core machine)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
