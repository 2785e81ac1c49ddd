"""A small training run with checkpoints, driven as a subprocess by the resume tests.

It builds the model and batches with ``launch.runner`` and the checkpoint hook
with ``obs_dist.checkpoint.manager`` (as ``obs train`` does, plus fault injection) —
trains, and writes the final big state, slow weights and optimizer state of
each rank to ``--out`` for a bit-for-bit comparison.

Fault injection for the tests:

* ``--pause-after S``: after step S (and its checkpoint) write a marker file and
  sleep, so the test can ``kill -9`` a run that is still going;
* ``--stall-manifest-at S``: at step S's checkpoint, write every object but, on
  the manifest, write a marker and sleep — a kill then lands mid-checkpoint.

With ``WORLD_SIZE=2`` (and ``MASTER_ADDR``/``MASTER_PORT``/``RANK``) it runs two
ranks over gloo with the real distributed engine of ``obs train``: the slow
weights through ``build_slow_weights`` (DeepSpeed when ``--engine deepspeed``),
committed deltas summed by ``DeltaSync``, the phase scheduler deciding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.distributed as torch_dist

from launch.run_config import RunConfig
from launch.runner import build_model, build_trainer
from obs_dist.checkpoint.codec import encode_to_objects
from obs_dist.checkpoint.format import manifest_key
from obs_dist.checkpoint.manager import CheckpointConfig, attach_checkpointing
from obs_dist.config import from_dict, to_dict
from obs_dist.engine.dist import get_rank, get_world_size
from obs_dist.engine.slow_weights import build_slow_weights, init_distributed
from obs_dist.storage import ObjectStore, open_store
from obs_dist.tasks import ResumableTaskStream
from obs_dist.trainer import Trainer


def run_config(steps: int, nodes: int, engine: str = "auto",
               layout: str = "replicated") -> RunConfig:
    """A tiny committing MQAR run (fast on two cores, still touches many entries)."""
    return from_dict(RunConfig, {
        "state": {"nodes": nodes, "partitions": 3, "layout": layout},
        "model": {"d_model": 16, "writer": {"k_max": 4, "active": 8, "key_dim": 16}},
        "task": {"name": "mqar", "vocab": 16, "seq_len": 6, "pairs": 2, "batch": 2,
                 "commit": True},
        "train": {"steps": steps, "lr": 5e-3, "warmup": 2, "progress": False},
        # Wall-clock cost would make phase decisions differ between runs.
        "scheduler": {"weight_cost": 0.0},
        "dist": {"engine": engine},
    })


class StallingStore(ObjectStore):
    """Delegates to a real store but hangs on the manifest of one step."""

    def __init__(self, inner: ObjectStore, stall_step: int, marker: Path) -> None:
        self.inner, self.root = inner, inner.root
        self.stall_key, self.marker = manifest_key(stall_step), marker

    def put_bytes(self, key: str, data: bytes) -> None:
        if key == self.stall_key:
            self.marker.write_text("stalled")
            while True:
                time.sleep(1)
        self.inner.put_bytes(key, data)

    def put_file(self, key: str, path: str | Path) -> None:
        self.inner.put_file(key, path)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def open_read(self, key: str, start: int = 0) -> BinaryIO:
        return self.inner.open_read(key, start)

    def get_file(self, key: str, path: str | Path) -> None:
        self.inner.get_file(key, path)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def url_for(self, key: str) -> str:
        return self.inner.url_for(key)


def write_final(out: Path, rank: int, trainer: Trainer, result: dict[str, Any]) -> None:
    """Final state, slow weights and optimizer of one rank, for exact comparison."""
    tree = {"state": trainer.state.matrix(), "model": trainer.model.state_dict(),
            "slow": trainer.slow.state_dict(), "trainer": trainer.state_dict()}
    document, tensors = encode_to_objects(tree)
    (out / f"final-rank{rank}.json").write_bytes(document)
    (out / f"final-rank{rank}.safetensors").write_bytes(tensors)
    (out / f"result-rank{rank}.json").write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--endpoint-url")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--every", type=int, default=3)
    p.add_argument("--nodes", type=int, default=192)
    p.add_argument("--base-fraction", type=float, default=0.5)
    p.add_argument("--resume", default="auto")
    p.add_argument("--pause-after", type=int)
    p.add_argument("--stall-manifest-at", type=int)
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "deepspeed"])
    p.add_argument("--layout", default="replicated", choices=["replicated", "sharded"])
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    cfg = run_config(args.steps, args.nodes, args.engine, args.layout)
    distributed = init_distributed(cfg.dist, torch.device("cpu"))
    rank, world = get_rank(), get_world_size()
    model, state = build_model(cfg, torch.device("cpu"))
    slow, _ = build_slow_weights(cfg.dist, cfg.deepspeed, model, cfg.train, cfg.task.batch)
    trainer = build_trainer(cfg, model, state, slow)
    stream = ResumableTaskStream(cfg.task, seed_offset=rank)
    ckpt_cfg = CheckpointConfig(url=args.url, every=args.every, endpoint_url=args.endpoint_url,
                                base_every_fraction=args.base_fraction)
    store = open_store(args.url, endpoint_url=args.endpoint_url)
    if args.stall_manifest_at is not None:
        store = StallingStore(store, args.stall_manifest_at, out / f"stalled-rank{rank}")
    ckpt = attach_checkpointing(trainer, ckpt_cfg, extra_state={"data": stream}, rank=rank,
                                world=world, config=to_dict(cfg), store=store)
    resumed = ckpt.resume(args.resume)

    def pause(tr: Trainer, metrics: dict[str, float]) -> None:
        if args.pause_after is not None and tr.step == args.pause_after:
            (out / f"paused-rank{rank}").write_text(str(tr.step))
            while True:
                time.sleep(1)

    trainer.hooks.add("pause", pause, stage="control")
    trainer.fit(stream)
    write_final(out, rank, trainer, {"resumed_from": resumed, "step": trainer.step,
                                     "checksums": state.checksums(),
                                     "failures": ckpt.failures})
    if distributed:
        torch_dist.barrier()
        torch_dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
