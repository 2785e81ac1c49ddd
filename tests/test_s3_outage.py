"""Item 6 of issue #15: a 60-second S3 outage during training is waited out, exactly.

``obs train`` reads its shards from S3 and writes its checkpoints there, both
through :class:`support.tcp_proxy.TcpProxy` in front of moto. Once the first
checkpoint is written the proxy is stopped for ``OUTAGE_S`` seconds (refused
connections, broken sockets) at the next shard request, then restarted. The
loader worker reads ahead (``data.prefetch``), so the trainer goes on to a
checkpoint save that meets the outage too. The run must wait (the shard reads
with ``data.patience_s``, the saves with ``checkpoint.patience_s``), skip
nothing, and end with a final checkpoint bit-identical to an uninterrupted run's.

When the proxy stays down longer than a short ``data.patience_s``, the run
exits with code 2 naming the endpoint, and ``--resume auto`` after the
restart still ends bit-identical to the uninterrupted run (the module's
``reference``, run once).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.s3_server import FaultyProxy, MotoServer, credentials_in_env, needs_moto
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


def _start(tmp: Path, name: str, shards: str, ckpt: str, endpoint: str, *,
           patience_s: float = 3 * OUTAGE_S, resume: str = "never",
           extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """Start ``obs train`` on the shards, checkpointing to ``ckpt``, both via ``endpoint``.

    ``patience_s`` (longer than the outage by default: the run waits it out) is
    both ``data.patience_s`` and ``checkpoint.patience_s``. The output goes to
    ``tmp/NAME.log`` (appended to, so a resumed run keeps the first's lines).
    """
    sets = [*TINY_AV, f"out_dir={tmp / name}", f"data.source={shards}",
            f"data.endpoint_url={endpoint}", "data.eval_source=", "make_synthetic=false",
            "train.eval_every=0", f"train.steps={STEPS}", "checkpoint.every=2",
            f"checkpoint.url={ckpt}", f"checkpoint.endpoint_url={endpoint}",
            f"data.patience_s={patience_s}", f"checkpoint.patience_s={patience_s}", *extra]
    args = [sys.executable, "-m", "launch.cli", "train", "--config", "configs/demo.toml",
            "--resume", resume]
    for item in sets:
        args += ["--set", item]
    log = (tmp / f"{name}.log").open("ab")
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """The exit code of ``proc`` (killed after 600 s)."""
    try:
        return proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(proc: subprocess.Popen[bytes], tmp: Path, name: str) -> dict[str, Any]:
    code = _wait(proc)
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


@dataclass(frozen=True)
class Reference:
    """The module's shards on moto and the checkpoints of an uninterrupted run on them.

    Attributes:
        bucket: the bucket holding the shards and every run's checkpoints.
        shards: the shards' URL.
        final: the uninterrupted run's newest checkpoint (see :func:`_final`).
    """

    bucket: str
    shards: str
    final: dict[str, Any]


@pytest.fixture(scope="module")
def reference(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Reference]:
    """Shards on a new bucket and an uninterrupted run's final checkpoint, once per module."""
    bucket = f"obs-outage-{uuid.uuid4().hex[:12]}"
    with credentials_in_env():
        moto_server.client().create_bucket(Bucket=bucket)
        shards = f"s3://{bucket}/shards"
        # About one clip per shard: every few clips the loader opens another shard
        # (a new GET), so the outage hits shard reads, not only checkpoint writes.
        write_synthetic(shards, SyntheticConfig(streams=2, clips_per_stream=8, frames=2,
                                                image_size=16, classes=4, seed=5),
                        target_bytes=4_096, endpoint_url=moto_server.url, progress=False)
        tmp = tmp_path_factory.mktemp("reference")
        _finish(_start(tmp, "reference", shards, f"s3://{bucket}/ref", moto_server.url),
                tmp, "reference")
        yield Reference(bucket, shards, _final(open_store(f"s3://{bucket}/ref",
                                                          endpoint_url=moto_server.url)))


def _first_checkpoint_then_stop_at_a_shard_read(
        run: subprocess.Popen[bytes], proxy: TcpProxy, watch: ObjectStore, bucket: str,
        log: Path) -> int:
    """Wait for the run's first checkpoint, then stop the proxy at its next shard GET.

    Returns:
        The step of the newest checkpoint when the proxy stopped.
    """
    deadline = time.monotonic() + 300
    while not list_steps(watch):
        assert run.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    # The outage starts at a shard read (the key's path in a GET), so that the
    # loader meets it for sure, not only the checkpoint writes.
    proxy.stop_on(f"/{bucket}/shards/".encode())
    assert proxy.stopped.wait(timeout=300), "no shard was read after the first checkpoint"
    return list_steps(watch)[-1]


@needs_moto
@pytest.mark.slow
def test_sixty_second_s3_outage_during_training_is_waited_out_bit_identical(
        tmp_path: Path, moto_server: MotoServer, reference: Reference,
        s3_env: dict[str, str]) -> None:
    shards, s3_bucket = reference.shards, reference.bucket
    direct = moto_server.url
    ckpt = f"s3://{s3_bucket}/outage"
    watch = open_store(ckpt, endpoint_url=direct)  # past the proxy: sees moto itself
    with TcpProxy(moto_server.port) as proxy:
        run = _start(tmp_path, "outage", shards, ckpt, proxy.url)
        before = _first_checkpoint_then_stop_at_a_shard_read(
            run, proxy, watch, s3_bucket, tmp_path / "outage.log")
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
    assert_identical(final, reference.final)


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


@needs_moto
@pytest.mark.slow
def test_s3_outage_beyond_patience_exits_2_naming_the_endpoint_then_resume_auto_is_exact(
        tmp_path: Path, moto_server: MotoServer, reference: Reference,
        s3_env: dict[str, str]) -> None:
    ckpt = f"s3://{reference.bucket}/beyond-patience"
    watch = open_store(ckpt, endpoint_url=moto_server.url)
    log = tmp_path / "outage.log"
    patience = ("data.retries=1", "checkpoint.retries=1")  # with patience_s=2: a few seconds
    with TcpProxy(moto_server.port) as proxy:
        run = _start(tmp_path, "outage", reference.shards, ckpt, proxy.url, patience_s=2.0,
                     extra=patience)
        before = _first_checkpoint_then_stop_at_a_shard_read(run, proxy, watch,
                                                             reference.bucket, log)
        code = _wait(run)  # the proxy stays down: the patience runs out
        text = log.read_text()
        assert code == 2, text[-4000:]
        error = [line for line in text.splitlines() if line.startswith("obs: error: ")]
        assert len(error) == 1, text[-4000:]
        assert f"at endpoint {proxy.url} still failing after" in error[0], error
        assert re.search(r"still failing after \d+ attempts over \d+\.\d s", error[0]), error
        assert "shard_read" not in text  # stopped, not skipped
        last = list_steps(watch)[-1]
        assert before <= last < STEPS, (before, last)  # no final checkpoint without the store
        proxy.start()
        with log.open("a") as fh:
            fh.write("\n---- resume auto ----\n")
        metrics = _finish(_start(tmp_path, "outage", reference.shards, ckpt, proxy.url,
                                 patience_s=2.0, resume="auto", extra=patience),
                          tmp_path, "outage")
    assert metrics["resumed_from"] == last  # the newest complete checkpoint
    final = _final(watch)
    assert final["step"] == STEPS
    assert_identical(final, reference.final)
