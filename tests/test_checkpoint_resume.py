"""Exact resume after ``kill -9``: 2n steps straight == n steps, SIGKILL, resume, n more.

Each run is a separate process (``ckpt_driver.py``: the runner's model and
batches plus the two checkpointing lines), killed with SIGKILL while it is still
training, then restarted with ``--resume auto``. The final big state, slow
weights, optimizer state and loop counters must equal those of an uninterrupted
run bit for bit — single process and two processes, local disk and S3 (moto) —
and a kill in the middle of a checkpoint's upload must resume from the previous
complete checkpoint.
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
from support.s3_server import needs_moto
from support.tree_compare import assert_identical

from launch.jobs.spawn import free_port
from obs_dist.checkpoint.codec import decode_from_objects
from obs_dist.checkpoint.format import list_steps, manifest_key, read_manifest, verify
from obs_dist.storage import open_store

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).parent / "support" / "ckpt_driver.py"
# Every test kills and resumes real training processes (10-80 s each on 2 cores): slow.
pytestmark = pytest.mark.slow

STEPS, HALF, EVERY = 12, 6, 3
TIMEOUT = 120.0


def _start(out: Path, args: list[str], rank: int = 0, world: int = 1,
           port: int = 0) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if world > 1:
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    out.mkdir(parents=True, exist_ok=True)
    log = (out / f"log-rank{rank}.txt").open("ab")
    return subprocess.Popen([sys.executable, str(DRIVER), "--out", str(out), "--steps",
                             str(STEPS), "--every", str(EVERY), *args],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _launch(out: Path, args: list[str], world: int) -> list[subprocess.Popen[bytes]]:
    port = free_port() if world > 1 else 0
    return [_start(out, args, r, world, port) for r in range(world)]


def _finish(procs: list[subprocess.Popen[bytes]], out: Path) -> None:
    for rank, proc in enumerate(procs):
        try:
            rc = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = -1
        log = (out / f"log-rank{rank}.txt").read_text()[-3000:]
        assert rc == 0, f"rank {rank} exited with {rc}:\n{log}"


def _wait_for(paths: list[Path], procs: list[subprocess.Popen[bytes]], out: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not all(p.exists() for p in paths):
        for rank, proc in enumerate(procs):
            if proc.poll() is not None:
                log = (out / f"log-rank{rank}.txt").read_text()[-3000:]
                pytest.fail(f"rank {rank} ended (rc {proc.returncode}) before {paths}:\n{log}")
        assert time.monotonic() < deadline, f"timed out waiting for {paths}"
        time.sleep(0.05)


def _sigkill(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        assert proc.poll() is None, "the run must still be going when it is killed"
        os.kill(proc.pid, signal.SIGKILL)
    for proc in procs:
        assert proc.wait(timeout=30) == -signal.SIGKILL


def _register_deepspeed() -> None:
    """The DeepSpeed engine's optimizer state holds its LossScaler objects."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # noqa: F401

    from obs_dist.checkpoint.manager import register_engine_classes

    register_engine_classes()


def _final(out: Path, rank: int) -> tuple[Any, dict[str, Any]]:
    import json

    if (out / "final-rank1.json").exists():  # several ranks: the DeepSpeed engine
        _register_deepspeed()

    tree = decode_from_objects((out / f"final-rank{rank}.json").read_bytes(),
                               (out / f"final-rank{rank}.safetensors").read_bytes(), str(out))
    return tree, json.loads((out / f"result-rank{rank}.json").read_text())


def _start_reference(tmp: Path, world: int) -> tuple[Path, list[subprocess.Popen[bytes]]]:
    out = tmp / f"reference-{world}"
    return out, _launch(out, ["--url", str(tmp / f"ref-store-{world}"), "--resume", "never"],
                        world)


def _reference(out: Path, procs: list[subprocess.Popen[bytes]]) -> list[Any]:
    _finish(procs, out)
    return [_final(out, r)[0] for r in range(len(procs))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """The final state of one uninterrupted single-process run of 2n steps."""
    return _reference(*_start_reference(tmp_path_factory.mktemp("ref"), 1))


def _kill_then_resume(tmp_path: Path, url: str, extra: list[str], world: int = 1
                      ) -> list[tuple[Any, dict[str, Any]]]:
    """Run until paused after step n's checkpoint, SIGKILL, resume to 2n; final per rank."""
    killed = tmp_path / "killed"
    procs = _launch(killed, ["--url", url, *extra, "--pause-after", str(HALF)], world)
    _wait_for([killed / f"paused-rank{r}" for r in range(world)], procs, killed)
    _sigkill(procs)
    resumed = tmp_path / "resumed"
    _finish(_launch(resumed, ["--url", url, *extra], world), resumed)
    return [_final(resumed, r) for r in range(world)]


def test_sigkill_and_resume_is_bit_identical_local(tmp_path: Path, reference: list[Any]) -> None:
    (tree, result), = _kill_then_resume(tmp_path, str(tmp_path / "store"), [])
    assert result["resumed_from"] == HALF and result["step"] == STEPS
    assert_identical(tree, reference[0])


@needs_moto
def test_sigkill_and_resume_is_bit_identical_s3(tmp_path: Path, reference: list[Any],
                                                 s3_endpoint: str, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/runs/exact"
    (tree, result), = _kill_then_resume(tmp_path, url, ["--endpoint-url", s3_endpoint])
    assert result["resumed_from"] == HALF
    assert_identical(tree, reference[0])
    store = open_store(url, endpoint_url=s3_endpoint)
    assert list_steps(store)[-1] == STEPS
    assert not verify(store, read_manifest(store, STEPS))


def test_kill_during_upload_resumes_from_the_previous_checkpoint(
        tmp_path: Path, reference: list[Any]) -> None:
    store_dir = tmp_path / "store"
    stall = HALF + EVERY  # the checkpoint after n: its objects are written, its manifest never
    killed = tmp_path / "killed"
    procs = _launch(killed, ["--url", str(store_dir), "--stall-manifest-at", str(stall)], 1)
    _wait_for([killed / "stalled-rank0"], procs, killed)
    store = open_store(str(store_dir))
    assert store.exists(f"step-{stall:010d}/rank-00000.index.json")  # half-written checkpoint
    assert not store.exists(manifest_key(stall)) and list_steps(store)[-1] == HALF
    _sigkill(procs)
    resumed = tmp_path / "resumed"
    _finish(_launch(resumed, ["--url", str(store_dir)], 1), resumed)
    tree, result = _final(resumed, 0)
    assert result["resumed_from"] == HALF
    assert_identical(tree, reference[0])
    assert list_steps(store) == [EVERY, HALF, stall, STEPS]
    assert all(not verify(store, read_manifest(store, s)) for s in list_steps(store))


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=needs_moto)])
def test_two_processes_sigkill_and_resume_is_bit_identical(tmp_path: Path, where: str,
                                                           request: pytest.FixtureRequest
                                                           ) -> None:
    reference = _start_reference(tmp_path, 2)  # runs alongside the killed run
    if where == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        url = f"s3://{request.getfixturevalue('s3_bucket')}/runs/exact2"
        finals = _kill_then_resume(tmp_path, url, ["--endpoint-url", endpoint], world=2)
    else:
        finals = _kill_then_resume(tmp_path, str(tmp_path / "store"), [], world=2)
    expected = _reference(*reference)
    for rank, (tree, result) in enumerate(finals):
        assert result["resumed_from"] == HALF
        assert_identical(tree, expected[rank], f"rank{rank}")
    # The replicas of the big state agree with each other too.
    assert torch.equal(finals[0][0]["state"], finals[1][0]["state"])


def _obs_train_integrated() -> bool:
    from launch.run_config import RunConfig

    return "checkpoint" in RunConfig.__dataclass_fields__


def _have_spawn() -> bool:
    try:
        import launch.jobs.spawn  # noqa: F401
    except ImportError:
        return False
    return True


TINY = ["state.nodes=96", "state.partitions=3", "model.d_model=16", "model.writer.k_max=4",
        "model.writer.active=8", "model.writer.key_dim=16", "task.vocab=16", "task.seq_len=6",
        "task.pairs=2", "task.batch=2", "task.commit=true", "train.progress=false",
        "train.warmup=2", "train.steps=40", "checkpoint.every=4",
        # Phase decisions must not hang on measured wall time, or no two runs agree.
        "scheduler.weight_cost=0.0"]


def _obs_train(tmp: Path, name: str, store: Path, resume: str,
               nproc: int) -> subprocess.Popen[bytes]:
    sets = [*TINY, f"checkpoint.url={store}", f"out_dir={tmp / name}"]
    args = [sys.executable, "-m", "launch.cli", "train", "--resume", resume, "--nproc",
            str(nproc)]
    for item in sets:
        args += ["--set", item]
    log = (tmp / f"{name}.log").open("ab")
    # A session of its own, so that kill -9 reaches every rank of the run at once.
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _final_checkpoint(store_dir: Path, world: int) -> Any:
    from obs_dist.checkpoint.format import load_state, read_rank
    from obs_dist.model.state import BigState, StateConfig

    if world > 1:
        _register_deepspeed()
    store = open_store(str(store_dir))
    manifest = read_manifest(store, list_steps(store)[-1])
    state = BigState(StateConfig(nodes=96, partitions=3), init=False)
    load_state(store, manifest, state)
    ranks = []
    for rank in range(world):
        tree = decode_from_objects(*read_rank(store, manifest, rank), str(store_dir))
        scheduler = tree["trainer"].get("scheduler") or {}
        scheduler.pop("seconds_ema", None)  # wall-clock measurements differ between any runs
        (scheduler.get("pending") or {}).pop("seconds", None)
        ranks.append({k: tree[k] for k in ("model", "slow", "trainer", "extra")})
    return {"step": manifest.step, "state": state.matrix(), "ranks": ranks}


@pytest.mark.skipif(not _obs_train_integrated(),
                    reason="`obs train` has no [checkpoint] section yet (runner lines pending)")
@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.skipif(
    not _have_spawn(), reason="launch.jobs.spawn (multi-process `obs train`) is not importable"))])
def test_obs_train_sigkill_and_resume_auto_is_bit_identical(tmp_path: Path, nproc: int) -> None:
    reference = _obs_train(tmp_path, "reference", tmp_path / "ref-store", "never", nproc)
    store = tmp_path / "store"
    killed = _obs_train(tmp_path, "killed", store, "auto", nproc)
    deadline = time.monotonic() + TIMEOUT
    while not (store / manifest_key(4)).exists():
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    assert killed.poll() is None, "the run must still be going when it is killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert list_steps(open_store(str(store)))[-1] < 40, "the killed run got to the end"
    resumed = _obs_train(tmp_path, "resumed", store, "auto", nproc)
    for proc, name in ((resumed, "resumed"), (reference, "reference")):
        assert proc.wait(timeout=TIMEOUT) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    assert "resumed from" in (tmp_path / "resumed.log").read_text()
    final = _final_checkpoint(store, nproc)
    assert final["step"] == 40
    assert_identical(final, _final_checkpoint(tmp_path / "ref-store", nproc))
