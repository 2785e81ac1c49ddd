"""``obs ckpt list|inspect|verify``: look at the checkpoints in a store.

* ``list``: every manifest, newest last — step, kind (base/incremental), its base,
  bytes written for it, bytes it needs in all, when it was written. Damaged
  manifests are listed as such.
* ``inspect``: one checkpoint (the newest by default): its base and logs, objects,
  counters and the run configuration it was written with.
* ``verify``: re-hash every object of every checkpoint (or one) against its
  manifest; the exit code is 1 when anything is missing or damaged, and each
  problem names the object.

All three read only JSON and hashes: nothing from the store is deserialised
beyond that.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

from tqdm import tqdm

from launch.output import emit
from obs_dist.checkpoint.format import (
    CheckpointCorrupt,
    Manifest,
    list_steps,
    read_manifest,
    verify,
)
from obs_dist.storage import ObjectStore, open_store


def _open(args: argparse.Namespace) -> ObjectStore:
    # An inspection command answers at once: one retry for a blip, then the error
    # naming the endpoint (a training run waits out outages; a person should not).
    return open_store(args.url, endpoint_url=args.endpoint_url, retries=1)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _row(m: Manifest) -> dict[str, Any]:
    return {"step": m.step, "kind": m.kind, "base_step": m.base_step, "logs": len(m.logs),
            "ranks": m.world_size, "bytes": m.own_bytes(), "total_bytes": m.total_bytes,
            "touched": m.touched, "created": _when(m.created)}


def _list(args: argparse.Namespace) -> int:
    store = _open(args)
    rows: list[dict[str, Any]] = []
    for step in list_steps(store):
        try:
            rows.append(_row(read_manifest(store, step)))
        except CheckpointCorrupt as exc:
            rows.append({"step": step, "kind": "damaged", "problem": str(exc)})
    if args.json:
        emit({"store": store.root, "results": rows}, True)
    elif not rows:
        print(f"no checkpoints in {store.root}")
    else:
        emit(rows, False)
    return 0


def _pick(store: ObjectStore, step: int | None) -> Manifest:
    steps = list_steps(store)
    if not steps:
        raise ValueError(f"no checkpoints in {store.root}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"no checkpoint at step {step} in {store.root} (steps: "
                         f"{', '.join(map(str, steps))})")
    return read_manifest(store, step)


def _inspect(args: argparse.Namespace) -> int:
    store = _open(args)
    m = _pick(store, args.step)
    if args.json:
        emit({"store": store.root, "kind": m.kind, "total_bytes": m.total_bytes,
              "own_bytes": m.own_bytes(), "step": m.step, "base_step": m.base_step,
              "world_size": m.world_size, "state": m.state, "base": m.base, "logs": m.logs,
              "objects": m.objects, "touched": m.touched, "log_bytes": m.log_bytes,
              "created": m.created, "counters": m.counters, "config": m.config}, True)
        return 0
    emit({**_row(m), "store": store.root, "nodes": m.state.get("nodes"),
          "partitions": m.state.get("partitions"), "dtype": m.state.get("dtype"),
          "log_bytes": m.log_bytes, **{f"counter.{k}": v for k, v in m.counters.items()}},
         False)
    print()
    emit([{"object": k, "size": int(v["size"]), "sha256": str(v["sha256"])[:16]}
          for k, v in sorted(m.objects.items())], False)
    return 0


def _verify(args: argparse.Namespace) -> int:
    store = _open(args)
    steps = [args.step] if args.step is not None else list_steps(store)
    if not steps:
        raise ValueError(f"no checkpoints in {store.root}")
    cache: dict[str, tuple[int, str] | None] = {}
    rows = []
    for step in tqdm(steps, desc="verify", unit="ckpt", file=sys.stderr,
                     disable=len(steps) < 2):
        try:
            problems = verify(store, read_manifest(store, step), cache)
        except CheckpointCorrupt as exc:
            problems = [str(exc)]
        rows.append({"step": step, "ok": not problems, "problems": problems})
    bad = [r for r in rows if not r["ok"]]
    if args.json:
        emit({"store": store.root, "ok": not bad, "results": rows}, True)
    else:
        emit([{"step": r["step"], "status": "ok" if r["ok"] else "DAMAGED",
               "problems": len(r["problems"])} for r in rows], False)
        for r in bad:
            for problem in r["problems"]:
                print(f"step {r['step']}: {problem}")
        complete = [r["step"] for r in rows if r["ok"]]
        print(f"newest verified checkpoint: {complete[-1] if complete else 'none'}")
    return 1 if bad else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs ckpt`` with ``list``, ``inspect`` and ``verify``."""
    p = sub.add_parser("ckpt", help="list, inspect and verify checkpoints in a store")
    ckpt_sub = p.add_subparsers(dest="ckpt_command", required=True, metavar="ACTION")
    for name, func, text in (("list", _list, "list the checkpoints of a store"),
                             ("inspect", _inspect, "show one checkpoint (newest by default)"),
                             ("verify", _verify, "re-hash objects against their manifests")):
        q = ckpt_sub.add_parser(name, help=text)
        q.add_argument("url", help="the store: a path, file://path or s3://bucket/prefix")
        q.add_argument("--endpoint-url", help="S3 endpoint (MinIO, Ceph, moto)")
        q.add_argument("--json", action="store_true", help="print one JSON object")
        if name != "list":
            q.add_argument("--step", type=int, help="only this checkpoint")
        q.set_defaults(func=func)
