"""``obs bench deltanet``: training-step time of chunked vs recurrent (Gated) DeltaNet.

``--kind longhorn`` times Longhorn's parallel scan (``longhorn_form =
"chunked"``) against its recurrence the same way.

Both forms are built with the same weights and timed on the same batches in
one process, alternating step by step so that load from other jobs falls on
both alike; the figure is the ratio of medians. A step is what training does:
forward of the whole baseline (encoder, blocks, head), cross-entropy, backward
and an AdamW step. The kernel alone (forward + backward of the delta rule) is
timed the same way. Figures: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from launch.output import emit


def _alternate(fns: dict[str, Callable[[], None]], repeats: int, desc: str) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` rounds, one call each per round."""
    for fn in fns.values():  # warm-up: allocator, first-call overheads
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in tqdm(range(repeats), desc=desc, unit="round", file=sys.stderr):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Time training steps and kernels of both forms; return the JSON summary."""
    import torch
    import torch.nn.functional as F

    from obs_dist.baselines import BaselineConfig, build_baseline
    from obs_dist.baselines.delta_rule import delta_rule_chunked, delta_rule_recurrent
    from obs_dist.baselines.longhorn import longhorn_chunked, longhorn_scan

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = BaselineConfig(kind=args.kind, d_model=args.d_model, heads=args.heads,
                         layers=args.layers, chunk_size=args.chunk_size,
                         longhorn_form="chunked")
    models = {"chunked": build_baseline(cfg, args.vocab, args.vocab)}
    recurrent = dataclasses.replace(cfg, delta_form="recurrent", longhorn_form="recurrent")
    models["recurrent"] = build_baseline(recurrent, args.vocab, args.vocab)
    models["recurrent"].load_state_dict(models["chunked"].state_dict())
    optims = {n: torch.optim.AdamW(m.parameters(), lr=1e-3) for n, m in models.items()}
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len))
    targets = tokens.roll(-1, dims=1)

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            logits = models[name]({"tokens": tokens})
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            optims[name].zero_grad(set_to_none=True)
            loss.backward()
            optims[name].step()
        return run

    steps = _alternate({n: step(n) for n in models}, args.repeats, "bench deltanet step")

    kernels: dict[str, Callable[[], torch.Tensor]]
    if args.kind == "longhorn":
        bt, m = (args.batch, args.seq_len), cfg.state_dim
        x = torch.randn(*bt, args.d_model, requires_grad=True)
        keys = (0.3 * torch.randn(*bt, m)).requires_grad_()
        queries = torch.randn(*bt, m, requires_grad=True)
        steps_size = torch.rand(*bt, args.d_model).requires_grad_()
        kernels = {
            "chunked": lambda: longhorn_chunked(x, keys, queries, steps_size, args.chunk_size),
            "recurrent": lambda: longhorn_scan(x, keys, queries, steps_size),
        }
    else:
        dk = args.d_model // args.heads
        shape = (args.batch, args.heads, args.seq_len)
        q = torch.randn(*shape, dk, requires_grad=True)
        k = F.normalize(torch.randn(*shape, dk), dim=-1).requires_grad_()
        v = torch.randn(*shape, dk, requires_grad=True)
        beta = torch.rand(*shape).requires_grad_()
        g = (-torch.rand(*shape)).requires_grad_() if args.kind == "gated_deltanet" else None
        kernels = {
            "chunked": lambda: delta_rule_chunked(q, k, v, beta, g, chunk_size=args.chunk_size),
            "recurrent": lambda: delta_rule_recurrent(q, k, v, beta, g),
        }

    def kernel(name: str) -> Callable[[], None]:
        return lambda: kernels[name]().sum().backward()

    kern = _alternate({n: kernel(n) for n in kernels}, args.repeats, "bench deltanet kernel")
    return {
        "kind": args.kind, "seq_len": args.seq_len, "batch": args.batch,
        "d_model": args.d_model, "heads": args.heads, "layers": args.layers,
        "chunk_size": args.chunk_size, "vocab": args.vocab, "threads": args.threads,
        "repeats": args.repeats,
        "step_seconds": steps, "kernel_seconds": kern,
        "step_speedup": steps["recurrent"] / steps["chunked"],
        "kernel_speedup": kern["recurrent"] / kern["chunked"],
    }


def run(args: argparse.Namespace) -> int:
    """Measure and emit the summary (a table, or JSON with ``--json``)."""
    for name in ("seq_len", "batch", "d_model", "heads", "layers", "chunk_size", "vocab",
                 "threads", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, "
                             f"got {getattr(args, name)}")
    emit(measure(args), args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs bench deltanet``."""
    p = sub.add_parser("deltanet", help="training step of chunked vs recurrent DeltaNet (CPU); "
                       "--kind longhorn: Longhorn's parallel scan vs its recurrence")
    p.add_argument("--kind", choices=["deltanet", "gated_deltanet", "longhorn"],
                   default="deltanet")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1 on the shared 2-core machine)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps of each form")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
