"""``obs bench step``: seconds per token and peak memory of a training step vs N.

Each size runs in a fresh process so that its peak RSS is its own. A step is a
full window: forward over T steps, backward, optimizer step and the commit of
the window's deltas into the state (the continual setting, the most work).

Each child sets its own intra-op thread count (``--threads``, default 1) before
any work, as ``obs train`` gives each rank its share: torch's default of every
core per process made steps up to 10x slower on a loaded machine. The count is
recorded in the JSON, with torch's version and, on CUDA, the peak GPU memory.

Beside each N the bench prints the step's memory floor (issue #17): the state
bytes a token must touch, ``2 · 4 · k_max · N`` (the k selected rows read in
the forward pass and again in the backward pass), over the bandwidth of a row
gather measured in the same child (``F.embedding_bag`` over random rows of the
same state, the access the step makes), and the ratio measured / floor.

``--profile`` adds each size's top operators by self CPU time
(:mod:`launch.bench._step_profile`), for the reference too.

``--reference REV`` measures a git revision's step in the same run, each size
alternating between this tree and the revision (checked out with ``git
archive`` into a temporary folder, run with the same interpreter), so speed-ups
are ratios taken side by side under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from launch.output import emit


def measure(nodes: int, k_max: int, active: int, d_model: int, batch: int, window: int,
            windows: int, device: str, threads: int = 1) -> dict[str, float | int | str | None]:
    """Time ``windows`` training windows at N = ``nodes`` in this process."""
    import torch

    from launch.bench._step_profile import build

    trainer, state, batches = build(nodes, k_max, active, d_model, batch, window, windows,
                                    device, threads)
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
    gather = gather_bandwidth(state.matrix(), k_max, batch) if not cuda else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    row: dict[str, float | int | str | None] = {
        "nodes": nodes,
        "sec_per_window": median,
        "sec_per_token": median / (batch * window),
        "peak_rss_bytes": peak,
        "state_bytes": state.nbytes,
        "delta_nnz": trainer.last_delta_nnz,
        "gather_bytes_per_sec": gather,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name() if cuda else None,
    }
    if cuda:  # timed windows only: the peak is reset after the warm-up
        row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return row


def gather_bandwidth(matrix: object, rows: int, streams: int, seconds: float = 0.5) -> float:
    """Bytes per second of ``F.embedding_bag`` over ``rows`` random rows per stream of ``matrix``.

    The same access the step makes when it reads the selected rows of the
    state, on the same tensor, so caches and page placement are those of the run.
    """
    import torch
    import torch.nn.functional as F

    assert isinstance(matrix, torch.Tensor)
    n = matrix.shape[0]
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, n, (streams, rows), generator=gen) for _ in range(16)]
    weights = torch.ones(streams, rows, dtype=matrix.dtype)
    F.embedding_bag(ids[0], matrix, per_sample_weights=weights, mode="sum")  # warm-up
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        F.embedding_bag(ids[done % 16], matrix, per_sample_weights=weights, mode="sum")
        done += 1
    elapsed = time.perf_counter() - t0
    return done * streams * rows * n * matrix.element_size() / elapsed


def floor_columns(row: dict[str, Any], k_max: int) -> None:
    """Add the memory floor of a token beside the measured time (CPU rows only).

    ``bytes_per_token = 2 · bytes(element) · k_max · N``: the selected rows read
    forward and backward; ``floor_sec_per_token`` at the measured gather
    bandwidth; ``over_floor`` = measured / floor.
    """
    bandwidth = row.get("gather_bytes_per_sec")
    nodes = int(row["nodes"])
    element = int(row["state_bytes"]) // (nodes * nodes)
    row["bytes_per_token"] = 2 * element * k_max * nodes
    if isinstance(bandwidth, float) and bandwidth > 0:
        floor = row["bytes_per_token"] / bandwidth
        row["floor_sec_per_token"] = floor
        row["over_floor"] = row["sec_per_token"] / floor


def reference_tree(rev: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder holding revision ``rev`` of this repository (``git archive``)."""
    root = Path(__file__).resolve().parents[2]
    tmp = tempfile.TemporaryDirectory(prefix="obs-ref-")
    archive = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", rev],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        tmp.cleanup()
        raise ValueError(f"--reference {rev!r} is not a revision of {root}: "
                         f"{archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", tmp.name], input=archive.stdout, check=True)
    return tmp


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


def _measure_in_child(params: dict[str, Any], threads: int, tree: str | None,
                      profile: bool = False) -> Any:
    """One size in a fresh process, of this tree or (``tree``) a reference checkout.

    With ``profile`` the child runs this tree's ``_step_profile.py`` by path
    (over the reference's code when ``tree`` is given) and returns its rows.
    """
    env = thread_env(threads)
    if tree is not None:
        env["PYTHONPATH"] = tree
    script = ([str(Path(__file__).with_name("_step_profile.py"))] if profile else
              ["-c", "from launch.bench.step import _child; _child()"])
    proc = subprocess.run([sys.executable, *script, json.dumps(params)], capture_output=True,
                          text=True, check=False, env=env, cwd=tree)
    if proc.returncode != 0:
        which = "the reference" if tree is not None else "this tree"
        raise RuntimeError(f"bench step at N={params['nodes']} ({which}) failed:\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
    """Measure every size in a child process and report the flatness ratio.

    With ``--reference`` each size is measured in this tree and in the
    reference revision, alternating which goes first, ``--rounds`` times; the
    medians over rounds are reported side by side with their ratio.
    """
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    ref = reference_tree(args.reference) if args.reference else None
    results = []
    versions: dict[str, Any] = {}
    try:
        for i, n in enumerate(tqdm(args.nodes, desc="bench step", unit="size",
                                   file=sys.stderr)):
            params = {"nodes": n, "k_max": args.k_max, "active": args.active,
                      "d_model": args.d_model, "batch": args.batch, "window": args.window,
                      "windows": args.windows, "device": args.device, "threads": args.threads}
            rows: list[dict[str, Any]] = []
            ref_times: list[float] = []
            for r in range(args.rounds):
                trees = [None] if ref is None else [None, ref.name]
                for tree in trees if (i + r) % 2 == 0 else trees[::-1]:
                    got = _measure_in_child(params, args.threads, tree)
                    if tree is None:
                        rows.append(got)
                    else:
                        ref_times.append(got["sec_per_window"])
            rows.sort(key=lambda x: x["sec_per_window"])
            row = rows[len(rows) // 2]
            # The state lives where the step runs: host memory on the CPU, GPU memory on CUDA.
            on_host = 0 if "peak_cuda_bytes" in row else row["state_bytes"]
            row["rss_over_state_bytes"] = row["peak_rss_bytes"] - on_host
            if "peak_cuda_bytes" in row:
                row["cuda_over_state_bytes"] = row["peak_cuda_bytes"] - row["state_bytes"]
            versions = {k: row.pop(k) for k in ("torch", "cuda", "gpu")}
            floor_columns(row, args.k_max)
            if ref_times:
                ref_times.sort()
                ref_window = ref_times[len(ref_times) // 2]
                row["reference_sec_per_token"] = ref_window / (args.batch * args.window)
                row["speedup_over_reference"] = ref_window / row["sec_per_window"]
            if args.profile:
                row["profile"] = _measure_in_child(params, args.threads, None, profile=True)
                if ref is not None:
                    row["reference_profile"] = _measure_in_child(params, args.threads, ref.name,
                                                                 profile=True)
            results.append(row)
    finally:
        if ref is not None:
            ref.cleanup()
    first, last = results[0], results[-1]
    summary: dict[str, Any] = {
        "results": results,
        "k_max": args.k_max, "active": args.active, "d_model": args.d_model,
        "batch": args.batch, "window": args.window, "device": args.device,
        "threads": args.threads, "rounds": args.rounds, "reference": args.reference,
        **versions,
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
    p.add_argument("--reference", default=None, metavar="REV",
                   help="also measure this git revision's step, side by side (e.g. a commit "
                        "before a speed-up)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternating measurements per size (the median is reported)")
    p.add_argument("--profile", action="store_true",
                   help="add torch.profiler's top operators per window (and the reference's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
