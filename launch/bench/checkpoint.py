"""``obs bench checkpoint``: bytes and seconds of a full and an incremental checkpoint, and resume.

At N nodes: write a base at step 0, run ``--steps`` steps of commits, then time

* an **incremental** checkpoint (the log of entries touched since step 0, plus
  the per-rank slow weights / optimizer / RNG / data position),
* a **full** checkpoint of the same moment (a fresh base) into a second store,
* **resume** of each into a fresh trainer (base + log replay, every object
  hash-verified), checking the resumed state and slow weights are bit-identical.

The commits come from real training steps (``--mode train``) or, much faster at
large N on a CPU, from synthetic deltas with the model's write pattern
(``--mode synthetic``: per step, ``batch × seq_len`` rank-1 blocks of ``k_max``
rows × ``k_max + active`` columns, applied through the same commit path).

The acceptance check: incremental state bytes ≤ 1.2 × (entries touched × bytes
per entry) + 1 MiB (``incremental_within_limit``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from typing import Any

import torch
from tqdm import tqdm

from launch.output import emit

MIB = 1 << 20


def _synthetic_steps(trainer: Any, steps: int, blocks: int, rows: int, cols: int,
                     seed: int) -> None:
    """Commit ``steps`` deltas shaped like the model's writes, advancing the step."""
    from obs_dist.model.delta import SparseDelta

    n = trainer.state.num_nodes
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="commits", unit="step", file=sys.stderr):
        r = torch.randint(0, n, (blocks, rows, 1), generator=gen).expand(blocks, rows, cols)
        c = torch.randint(0, n, (blocks, 1, cols), generator=gen).expand(blocks, rows, cols)
        v = torch.randn(blocks, rows, cols, generator=gen) * 1e-3
        trainer.commit(SparseDelta.from_indices(r, c, v, n))
        trainer.step += 1


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark in this process; returns the result row."""
    from launch.run_config import RunConfig
    from launch.runner import build_model
    from obs_dist.checkpoint.delta_log import entry_bytes
    from obs_dist.checkpoint.format import log_key
    from obs_dist.checkpoint.manager import CheckpointConfig, attach_checkpointing
    from obs_dist.config import from_dict
    from obs_dist.storage import open_store
    from obs_dist.tasks import ResumableTaskStream
    from obs_dist.trainer import Trainer

    cfg = from_dict(RunConfig, {
        "state": {"nodes": args.nodes, "partitions": args.partitions},
        "model": {"d_model": 16, "writer": {"k_max": args.k_max, "active": args.active,
                                            "key_dim": 16}},
        "task": {"name": "mqar", "vocab": 32, "seq_len": args.seq_len, "pairs": 3,
                 "batch": args.batch, "commit": True},
        "train": {"steps": args.steps, "progress": True, "device": args.device,
                  "moments_every": max(args.steps, 1)},
    })
    device = torch.device(args.device)
    scratch = None
    root = args.url
    if root is None:
        scratch = tempfile.mkdtemp(prefix="obs-bench-ckpt-")
        root = scratch
    ck_cfg = CheckpointConfig(every=0, keep_bases=1, base_every_fraction=100.0)
    try:
        inc_store = open_store(root.rstrip("/") + "/incremental", endpoint_url=args.endpoint_url)
        full_store = open_store(root.rstrip("/") + "/full", endpoint_url=args.endpoint_url)
        model, state = build_model(cfg, device)
        trainer = Trainer(cfg.train, model, state, commit=True)
        stream = ResumableTaskStream(cfg.task)
        ckpt = attach_checkpointing(trainer, ck_cfg, extra_state={"data": stream}, rank=0,
                                    world=1, store=inc_store)
        first = ckpt.save()
        assert first is not None and first.kind == "base"
        if args.mode == "train":
            trainer.fit(stream)
        else:
            _synthetic_steps(trainer, args.steps, args.batch * args.seq_len, args.k_max,
                             args.k_max + args.active, seed=1)
        inc = ckpt.save()
        assert inc is not None and inc.kind == "incremental", "expected an incremental log"
        inc_seconds, inc_bytes = ckpt.last_seconds, ckpt.last_bytes
        state_log_bytes = int(inc.objects[log_key(inc.step)]["size"])
        ckpt.close()
        full_ckpt = attach_checkpointing(trainer, ck_cfg, extra_state={"data": stream}, rank=0,
                                         world=1, store=full_store)
        full = full_ckpt.save(force_base=True)
        assert full is not None
        full_seconds, full_bytes = full_ckpt.last_seconds, full_ckpt.last_bytes
        full_ckpt.close()
        want = state.checksums()
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        del state, trainer, model
        result: dict[str, Any] = {}
        for name, store in (("incremental", inc_store), ("full", full_store)):
            model2, state2 = build_model(cfg, device)
            trainer2 = Trainer(cfg.train, model2, state2, commit=True)
            resumer = attach_checkpointing(trainer2, ck_cfg, rank=0, world=1, store=store,
                                           extra_state={"data": ResumableTaskStream(cfg.task)})
            t0 = time.perf_counter()
            step = resumer.resume("auto")
            result[f"resume_{name}_seconds"] = time.perf_counter() - t0
            result[f"resume_{name}_exact"] = bool(
                step == inc.step and state2.checksums() == want
                and all(torch.equal(v, weights[k]) for k, v in model2.state_dict().items()))
            resumer.close()
            del model2, state2, trainer2
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    per_entry = entry_bytes(cfg.state.torch_dtype)
    limit = 1.2 * inc.touched * per_entry + MIB
    return {
        "mode": args.mode, "nodes": args.nodes, "partitions": args.partitions,
        "steps": inc.step, "state_bytes": cfg.state.bytes, "store": root if scratch is None
        else "local temporary directory",
        "full_bytes": full_bytes, "full_seconds": full_seconds,
        "incremental_bytes": inc_bytes, "incremental_state_bytes": state_log_bytes,
        "incremental_other_bytes": inc_bytes - state_log_bytes,
        "incremental_seconds": inc_seconds, "touched_entries": inc.touched,
        "bytes_per_entry": per_entry, "incremental_limit_bytes": limit,
        "incremental_within_limit": state_log_bytes <= limit,
        "resume_seconds": result["resume_incremental_seconds"],
        "resume_exact": result["resume_incremental_exact"] and result["resume_full_exact"],
        **result,
    }


def run(args: argparse.Namespace) -> int:
    """Measure and print one row (a table, or JSON with ``--json``)."""
    if args.nodes < 16 or args.steps < 1:
        raise ValueError("--nodes must be >= 16 and --steps >= 1")
    emit(measure(args), args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs bench checkpoint``."""
    p = sub.add_parser("checkpoint", help="bytes/seconds of full vs incremental checkpoints, "
                                          "and resume time")
    p.add_argument("--nodes", type=int, default=16384)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000, help="steps between base and increment")
    p.add_argument("--mode", choices=("synthetic", "train"), default="synthetic",
                   help="commits from real training steps or model-shaped synthetic deltas")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=12)
    p.add_argument("--k-max", type=int, default=4)
    p.add_argument("--active", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--url", help="store root (default: a temporary local directory)")
    p.add_argument("--endpoint-url", help="S3 endpoint for an s3:// --url")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
