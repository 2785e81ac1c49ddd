"""Item 6 of issue #15: a 60-second S3 outage during training is waited out, exactly.

``obs train`` reads its shards from S3 and writes its checkpoints there, both
through :class:`support.tcp_proxy.TcpProxy` in front of moto. Once the first
checkpoint is written the proxy is stopped for ``OUTAGE_S`` seconds (refused
connections, broken sockets) at the next shard request, then restarted. The
loader worker reads ahead (``data.prefetch``), so the trainer goes on to a
checkpoint save that meets the outage too. The run must wait (the shard reads
with ``data.patience_s``, the saves with ``checkpoint.patience_s``), skip
nothing, and end with a final checkpoint bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.s3_server import FaultyProxy, MotoServer, needs_moto
from support.tcp_proxy import TcpProxy
from support.tiny_run import TINY_AV
from support.tree_compare import assert_identical

from obs_dist.checkpoint.codec import decode_from_objects
from obs_dist.checkpoint.format import list_steps, load_state, read_manifest, read_rank
from obs_dist.model.state import BigState, StateConfig
from obs_dist.storage import ObjectStore, StoreUnavailable, open_store
from pipelines.loader import DataConfig, StreamLoader
from pipelines.synthetic import SyntheticConfig, write_synthetic

# What the issue asks for; OBS_TEST_OUTAGE_S shortens it when debugging.
OUTAGE_S = float(os.environ.get("OBS_TEST_OUTAGE_S", "60"))
STEPS = 12
ROOT = Path(__file__).resolve().parents[1]


def _start(tmp: Path, name: str, shards: str, ckpt: str, endpoint: str) -> subprocess.Popen[bytes]:
    sets = [*TINY_AV, f"out_dir={tmp / name}", f"data.source={shards}",
            f"data.endpoint_url={endpoint}", "data.eval_source=", "make_synthetic=false",
            "train.eval_every=0", f"train.steps={STEPS}", "checkpoint.every=2",
            f"checkpoint.url={ckpt}", f"checkpoint.endpoint_url={endpoint}",
            # Longer than the outage: both wait it out instead of failing.
            f"data.patience_s={3 * OUTAGE_S}", f"checkpoint.patience_s={3 * OUTAGE_S}"]
    args = [sys.executable, "-m", "launch.cli", "train", "--config", "configs/demo.toml",
            "--resume", "never"]
    for item in sets:
        args += ["--set", item]
    log = (tmp / f"{name}.log").open("wb")
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen[bytes], tmp: Path, name: str) -> dict[str, Any]:
    try:
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, (tmp / f"{name}.log").read_text()[-4000:]
    metrics: dict[str, Any] = json.loads((tmp / name / "metrics.json").read_text())
    return metrics


def _final(store: ObjectStore) -> dict[str, Any]:
    """The newest checkpoint as one tree (wall-clock scheduler fields dropped)."""
    manifest = read_manifest(store, list_steps(store)[-1])
    state = BigState(StateConfig(nodes=256, partitions=2), init=False)
    load_state(store, manifest, state)
    tree = decode_from_objects(*read_rank(store, manifest, 0), store.root)
    scheduler = tree["trainer"].get("scheduler") or {}
    scheduler.pop("seconds_ema", None)
    (scheduler.get("pending") or {}).pop("seconds", None)
    return {"step": manifest.step, "state": state.matrix(),
            "rank": {k: tree[k] for k in ("model", "slow", "trainer", "extra")}}


@needs_moto
@pytest.mark.slow
def test_sixty_second_s3_outage_during_training_is_waited_out_bit_identical(
        tmp_path: Path, moto_server: MotoServer, s3_bucket: str) -> None:
    shards = f"s3://{s3_bucket}/shards"
    # About one clip per shard: every few clips the loader opens another shard
    # (a new GET), so the outage hits shard reads, not only checkpoint writes.
    write_synthetic(shards, SyntheticConfig(streams=2, clips_per_stream=8, frames=2,
                                            image_size=16, classes=4, seed=5),
                    target_bytes=4_096, endpoint_url=moto_server.url, progress=False)
    direct = moto_server.url
    reference = _start(tmp_path, "reference", shards, f"s3://{s3_bucket}/ref", direct)
    _finish(reference, tmp_path, "reference")

    ckpt = f"s3://{s3_bucket}/outage"
    watch = open_store(ckpt, endpoint_url=direct)  # past the proxy: sees moto itself
    with TcpProxy(moto_server.port) as proxy:
        run = _start(tmp_path, "outage", shards, ckpt, proxy.url)
        deadline = time.monotonic() + 300
        while not list_steps(watch):
            assert run.poll() is None, (tmp_path / "outage.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.05)
        # The outage starts at a shard read (the key's path in a GET), so that the
        # loader meets it for sure, not only the checkpoint writes.
        proxy.stop_on(f"/{s3_bucket}/shards/".encode())
        assert proxy.stopped.wait(timeout=300), "no shard was read after the first checkpoint"
        before = list_steps(watch)[-1]
        stopped = time.monotonic()
        while time.monotonic() - stopped < OUTAGE_S:
            assert run.poll() is None, "the run ended during the outage: " + (
                tmp_path / "outage.log").read_text()[-4000:]
            time.sleep(0.5)
        during = list_steps(watch)[-1]
        proxy.start()
        metrics = _finish(run, tmp_path, "outage")
    assert before < STEPS and during == before, "training did not wait for the store"
    assert metrics["data_store_retries_total"] > 0, "the shard reads never met the outage"
    log = (tmp_path / "outage.log").read_text()
    assert re.search(r"WARNING \S+ outage/\S+ on bucket .* transient", log), \
        "no checkpoint operation met the outage"
    assert not any(k.startswith("data_errors_total") and v for k, v in metrics.items()), \
        metrics  # nothing skipped
    assert metrics.get("ckpt_failures_total", 0) == 0
    final = _final(watch)
    assert final["step"] == STEPS
    assert_identical(final, _final(open_store(f"s3://{s3_bucket}/ref", endpoint_url=direct)))


@needs_moto
def test_shard_outage_beyond_data_patience_stops_the_run_instead_of_skipping(
        faulty_proxy: FaultyProxy, moto_server: MotoServer, s3_bucket: str) -> None:
    shards = f"s3://{s3_bucket}/shards"
    write_synthetic(shards, SyntheticConfig(streams=2, clips_per_stream=4, frames=2,
                                            image_size=16, classes=4, seed=5),
                    target_bytes=4_096, endpoint_url=moto_server.url, progress=False)
    loader = StreamLoader(DataConfig(source=shards, endpoint_url=faulty_proxy.url, workers=0,
                                     streams=2, window=2, frames=2, image_size=16, n_mels=16,
                                     audio_seconds=0.5, retries=1, patience_s=0.5))
    faulty_proxy.fail_next(10_000, "503", method="GET")  # every shard read, for good
    with pytest.raises(StoreUnavailable, match=r"get shards/.* at endpoint http://127\.0\.0\.1:"
                       r"\d+ still failing after \d+ attempts over \d+\.\d s"):
        next(iter(loader))
    assert "shard_read" not in loader.errors  # stopped, not skipped
