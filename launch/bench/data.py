"""``obs bench data``: clips/s and MB/s of decode + collate, from local disk and from S3.

The benchmark writes a synthetic shard set (or uses ``--source``), copies it to
a moto S3 server it starts on 127.0.0.1 in a separate process (so the server
does not share the loader's interpreter), and times the loader reading each
source with 1 and 2 worker processes. A warm-up batch (worker start-up, first
S3 connections) is not timed. MB/s counts the compressed bytes of the clips
delivered.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from launch.jobs.spawn import free_port
from launch.output import emit


class _MotoProcess:
    """moto's S3 server in a child process on loopback."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _MotoProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("moto server did not start (is moto[server] installed?)")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _upload(local: Path, url: str, endpoint: str) -> None:
    import boto3

    from obs_dist.storage import open_store

    bucket = url[len("s3://"):].split("/", 1)[0]
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    store = open_store(url, endpoint_url=endpoint)
    for path in sorted(local.iterdir()):
        if path.is_file():
            store.put_file(path.name, path)


def measure(source: str, workers: int, streams: int, window: int, batches: int,
            endpoint_url: str | None) -> dict[str, Any]:
    """Time ``batches`` batches of the loader on ``source`` after one warm-up batch."""
    from pipelines.loader import DataConfig, build_loader

    cfg = DataConfig(source=source, streams=streams, window=window, workers=workers,
                     mode="ordered", loop=True, endpoint_url=endpoint_url)
    loader = build_loader(cfg)
    cpu0 = _cpu_seconds()
    it = iter(loader)
    next(it)
    clips0, bytes0 = loader.clips_seen, loader.bytes_seen
    start = time.perf_counter()
    for _ in tqdm(range(batches), desc=f"{source[:24]} w={workers}", leave=False):
        next(it)
    seconds = time.perf_counter() - start
    it.close()  # type: ignore[attr-defined]  # joins the workers: their CPU time is counted
    cpu = _cpu_seconds() - cpu0
    clips, nbytes = loader.clips_seen - clips0, loader.bytes_seen - bytes0
    return {"clips_per_s": round(clips / seconds, 1), "mb_per_s": round(nbytes / seconds / 1e6, 2),
            "clips": clips, "seconds": round(seconds, 2),
            # Loader CPU (main + workers, warm-up and prefetch included) per clip: a
            # figure that does not depend on what else the machine is running.
            "cpu_ms_per_clip": round(1000 * cpu / loader.clips_seen, 2),
            "errors": sum(loader.errors.values())}


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print a table or one JSON object."""
    from pipelines.synthetic import SyntheticConfig, write_synthetic

    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="obs-bench-data-") as tmp:
        local = Path(args.source) if args.source else Path(tmp) / "shards"
        if not args.source:
            write_synthetic(str(local), SyntheticConfig(streams=args.data_streams,
                                                        clips_per_stream=args.clips_per_stream,
                                                        seed=0), progress=not args.json)
        rows = []
        for w in workers:
            rows.append({"source": "local", "workers": w,
                         **measure(str(local), w, args.streams, args.window, args.batches, None)})
        if not args.no_s3:
            for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                               "AWS_DEFAULT_REGION": "us-east-1"}.items():
                os.environ.setdefault(key, value)
            with _MotoProcess() as moto:
                url = "s3://obs-bench/shards"
                _upload(local, url, moto.url)
                for w in workers:
                    rows.append({"source": "s3", "workers": w,
                                 **measure(url, w, args.streams, args.window, args.batches,
                                           moto.url)})
    result: dict[str, Any] = {"results": rows, "streams": args.streams, "window": args.window,
                              "batches": args.batches, "cpus": os.cpu_count()}
    by = {(r["source"], r["workers"]): r["clips_per_s"] for r in rows}
    top = max(workers)
    if ("s3", top) in by and by[("local", top)]:
        result[f"s3_over_local_{top}_workers"] = round(by[("s3", top)] / by[("local", top)], 3)
    emit(result, args.json)
    if not args.json and f"s3_over_local_{top}_workers" in result:
        print(f"s3/local with {top} workers: {result[f's3_over_local_{top}_workers']}")
    return 0


def register(bench_subparsers: Any) -> None:
    """Add ``obs bench data``."""
    p = bench_subparsers.add_parser("data", help="loader throughput, local disk vs S3 (moto)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--source", default=None, help="existing local shards (default: synthetic)")
    p.add_argument("--data-streams", type=int, default=24, help="synthetic streams to write")
    p.add_argument("--clips-per-stream", type=int, default=16)
    p.add_argument("--streams", type=int, default=8, help="B, rows per batch")
    p.add_argument("--window", type=int, default=8, help="T, clips per row")
    p.add_argument("--batches", type=int, default=25, help="timed batches per setting")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--no-s3", action="store_true", help="local disk only")
    p.set_defaults(func=run)
