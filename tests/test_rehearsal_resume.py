"""Exact resume with rehearsal (issue #14): the reservoir, its draws and the cycle are checkpointed.

``task.name = "av-stream"`` trains one chronological pass with ``rehearsal.ratio``
past batches after each new one (``pipelines/rehearsal.py``). Its reservoir
batches are write-once checkpoint objects (``objects/rehearsal/rank-R/SEQ``),
its draws and cycle position are in the rank state, so a run SIGKILLed mid-run
and resumed with ``--resume auto`` ends with the checkpoint an uninterrupted run
ends with, bit for bit: one process on a local store, and ``--nproc 2``
(DeepSpeed) with shards and checkpoints on S3 (moto).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from support.s3_server import MotoServer, needs_moto
from support.tree_compare import assert_identical

from obs_dist.checkpoint.codec import decode_from_objects
from obs_dist.checkpoint.format import (
    OBJECTS_PREFIX,
    list_steps,
    load_state,
    manifest_key,
    read_manifest,
    read_rank,
)
from obs_dist.checkpoint.side_objects import decode_object, encode_object
from obs_dist.model.state import BigState, StateConfig
from obs_dist.storage import ObjectStore, open_store
from pipelines.rehearsal import Rehearsal, RehearsalConfig

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600
SECONDS = 40  # per recording: 40 clips, windows of 4 → 10 new batches per row
RATIO = 2
STEPS = (SECONDS // 4) * (1 + RATIO)  # the pass ends the run: 30 steps
NODES = 256
# A tiny av-stream run; every checkpoint a base and only the newest kept, so
# retention drops reservoir batches that left the reservoir (capacity 2).
TINY = ["data.window=4", f"state.nodes={NODES}", "state.partitions=2", "model.d_model=16",
        "model.n_mels=32", "data.image_size=32", "model.image_size=32",  # as recorded
        "model.writer.k_max=4", "model.writer.active=8",
        f"rehearsal.ratio={RATIO}", "rehearsal.capacity=2", "train.progress=false",
        "train.warmup=2", "scheduler.weight_cost=0.0", "checkpoint.every=4",
        "checkpoint.keep_bases=1", "checkpoint.base_every_fraction=1e-9",
        # The word–referent suite's recipe: its random views, running statistics
        # and carry must resume exactly too.
        "model.stream.video_ssl=1.0", "model.stream.video_ssl_pictures=4",
        "model.stream.audio_ssl=1.0", "model.stream.audio_ssl_clips=4",
        "model.stream.address_centring=true", 'model.stream.carry="addressed"',
        "model.stream.audio_context=1", "model.stream.audio_floor=true",
        "model.stream.recall_norm=true", "model.stream.augment=true",
        # configs/av_stream.toml keeps negatives 24 clips apart in its 64-clip
        # windows; in these 4-clip windows that would leave no negative at all.
        "model.stream.negative_gap=2"]


# ------------------------------------------------------------- the stage alone
def _stream(n: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(3)
    return [{"audio": torch.randn(2, 3, 4, 5, generator=g),
             "video": torch.randint(0, 255, (2, 3, 1, 3, 4, 4), generator=g, dtype=torch.uint8),
             "audio_mask": torch.rand(2, 3, generator=g) > 0.3,
             "targets": torch.full((2, 3), -100), "reset": torch.tensor([i == 0, False]),
             "keys": [[f"rec_a/{i:06d}", "", "x"], [f"rec_b/{i:06d}", "y", ""]],
             "words": [["ball", "", ""], ["", "", "cup"]]} for i in range(n)]


def _checkpointed(stage: Rehearsal) -> tuple[dict[str, Any], dict[int, Any]]:
    """The stage's state and its objects as a checkpoint stores them (bytes and back)."""
    objects = {oid: decode_object(encode_object(stage.object_tree(oid)), f"object {oid}")
               for oid in stage.object_ids()}
    return stage.state_dict(), objects


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 11, 13, 20])
def test_a_restored_stage_yields_what_the_uninterrupted_one_does(cut: int) -> None:
    stream = _stream(8)
    cfg = RehearsalConfig(ratio=RATIO, capacity=3, seed=4)
    whole = list(Rehearsal(iter(stream), cfg))
    first = Rehearsal(iter(stream), cfg)
    head = [next(first) for _ in range(cut)]
    state, objects = _checkpointed(first)
    # The stream's own position is its owner's (the loader's cursor): here, the rest.
    again = Rehearsal(iter(stream[first.seen:]), cfg)
    again.load_state_dict(state)
    again.load_objects(objects)
    assert_identical(head + list(again), whole)
    assert again.rehearsed == RATIO * len(stream) and again.ended


def test_a_restored_stage_refuses_another_setup_or_missing_batches() -> None:
    stage = Rehearsal(iter(_stream(4)), RehearsalConfig(ratio=1, capacity=2, seed=0))
    for _ in range(4):
        next(stage)
    state, objects = _checkpointed(stage)
    with pytest.raises(ValueError, match="capacity=2 but this run has capacity=3"):
        Rehearsal(iter([]), RehearsalConfig(ratio=1, capacity=3)).load_state_dict(state)
    other = Rehearsal(iter([]), RehearsalConfig(ratio=1, capacity=2))
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="rehearsal batches .* missing"):
        other.load_objects({})
    with pytest.raises(ValueError, match="version"):
        other.load_state_dict({"seen": 1})


# ------------------------------------------------------------ `obs train` runs
def _obs(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=ROOT, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated recordings (mp4 with audio) packed as two shard chains."""
    tmp = tmp_path_factory.mktemp("recordings")
    _obs("make-recordings", "--out", str(tmp / "rec"), "--recordings", "2", "--seconds",
         str(SECONDS), "--size", "32")
    _obs("make-shards", "--from", str(tmp / "rec"), "--out", str(tmp / "shards"))
    return tmp / "shards"


def _train(tmp: Path, name: str, sets: list[str], resume: str, nproc: int
           ) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "launch.cli", "train", "--config", "configs/av_stream.toml",
            "--resume", resume, "--nproc", str(nproc)]
    for item in [*TINY, *sets, f"out_dir={tmp / name}"]:
        args += ["--set", item]
    log = (tmp / f"{name}.log").open("ab")
    # A session of its own, so that kill -9 reaches every rank of the run at once.
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _final(store: ObjectStore, world: int) -> dict[str, Any]:
    """The newest checkpoint: state, each rank's tree and its reservoir objects."""
    if world > 1:  # the DeepSpeed optimizer state holds its LossScaler objects
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed  # noqa: F401

        from obs_dist.checkpoint.manager import register_engine_classes

        register_engine_classes()
    manifest = read_manifest(store, list_steps(store)[-1])
    state = BigState(StateConfig(nodes=NODES, partitions=2), init=False)
    load_state(store, manifest, state)
    ranks = []
    for rank in range(world):
        tree = decode_from_objects(*read_rank(store, manifest, rank), store.root)
        scheduler = tree["trainer"].get("scheduler") or {}
        scheduler.pop("seconds_ema", None)  # wall-clock measurements differ between any runs
        (scheduler.get("pending") or {}).pop("seconds", None)
        objects = {key: decode_object(store.get_bytes(key), key)
                   for key in tree["objects"].get("rehearsal", [])}
        ranks.append({**{k: tree[k] for k in ("model", "slow", "trainer", "extra", "objects")},
                      "reservoir": objects})
    return {"step": manifest.step, "state": state.matrix(), "ranks": ranks}


def _retention_kept_only_listed_objects(store: ObjectStore, world: int) -> None:
    """Every reservoir object in the store is listed by a manifest; dropped ones are gone."""
    listed = {key for step in list_steps(store)
              for key in read_manifest(store, step).objects if key.startswith(OBJECTS_PREFIX)}
    stored = set(store.list(OBJECTS_PREFIX))
    assert stored == listed and len(stored) <= 2 * world  # capacity 2 per rank, one manifest
    newest = {int(k.rsplit("/", 1)[-1][:10]) for k in stored}
    assert max(newest) >= 5, "the reservoir should hold late batches by the end"


def _kill_resume_compare(tmp: Path, sets: list[str], store: ObjectStore, reference_sets: list[str],
                         reference_store: ObjectStore, nproc: int) -> None:
    reference = _train(tmp, "reference", reference_sets, "never", nproc)
    killed = _train(tmp, "killed", sets, "auto", nproc)
    deadline = time.monotonic() + TIMEOUT
    while not store.exists(manifest_key(8)):  # step 8: mid-cycle (one rehearsal due)
        assert killed.poll() is None, (tmp / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    assert killed.poll() is None, "the run must still be going when it is killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert list_steps(store)[-1] < STEPS, "the killed run got to the end"
    resumed = _train(tmp, "resumed", sets, "auto", nproc)
    for proc, name in ((resumed, "resumed"), (reference, "reference")):
        assert proc.wait(timeout=TIMEOUT) == 0, (tmp / f"{name}.log").read_text()[-3000:]
    assert "resumed from" in (tmp / "resumed.log").read_text()
    final = _final(store, nproc)
    assert final["step"] == STEPS
    assert_identical(final, _final(reference_store, nproc))
    for r in range(nproc):
        assert final["ranks"][r]["trainer"]["counters"]["replay_steps_total"] == \
            STEPS * RATIO // (1 + RATIO)
    _retention_kept_only_listed_objects(store, nproc)
    _retention_kept_only_listed_objects(reference_store, nproc)


@pytest.mark.slow
def test_obs_train_sigkill_mid_cycle_and_resume_auto_is_bit_identical(
        tmp_path: Path, shards: Path) -> None:
    data = [f"data.source={shards}", "data.streams=2", "task.batch=2"]
    store, ref = tmp_path / "store", tmp_path / "ref-store"
    _kill_resume_compare(tmp_path, [*data, f"checkpoint.url={store}"], open_store(str(store)),
                         [*data, f"checkpoint.url={ref}"], open_store(str(ref)), 1)


@needs_moto
@pytest.mark.slow
def test_nproc2_deepspeed_s3_sigkill_and_resume_auto_is_bit_identical(
        tmp_path: Path, shards: Path, moto_server: MotoServer, s3_bucket: str) -> None:
    endpoint = moto_server.url
    client = moto_server.client()
    for path in sorted(shards.iterdir()):
        client.upload_file(str(path), s3_bucket, f"shards/{path.name}")
    base = f"s3://{s3_bucket}"
    # One recording per rank; the slow weights step through DeepSpeed (ZeRO-1, gloo).
    data = [f"data.source={base}/shards", f"data.endpoint_url={endpoint}", "data.streams=1",
            "task.batch=1", "dist.engine=deepspeed", f"checkpoint.endpoint_url={endpoint}"]
    _kill_resume_compare(
        tmp_path, [*data, f"checkpoint.url={base}/run"],
        open_store(f"{base}/run", endpoint_url=endpoint),
        [*data, f"checkpoint.url={base}/ref"], open_store(f"{base}/ref", endpoint_url=endpoint),
        2)
    assert "slow-weight engine deepspeed" in (tmp_path / "resumed.log").read_text()
