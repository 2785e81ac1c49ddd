"""Sharded checkpoints: SIGKILL mid-run and resume is bit-identical; another world is refused.

Two ranks over gloo run ``tests/support/ckpt_driver.py --layout sharded`` (the
runner's model, trainer and slow-weight engine, checkpoints every 3 steps, bases
and slice logs): once uninterrupted, once killed with SIGKILL after step 6's
checkpoint and resumed. Every rank's final slice, slow weights, optimizer state
and loop counters must equal the uninterrupted run's bit for bit. The manifest
must list every rank's slice, and a resume with another number of ranks must be
refused with a message that says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.tree_compare import assert_identical

from launch.jobs.spawn import free_port
from obs_dist.checkpoint.codec import decode_from_objects
from obs_dist.checkpoint.format import list_steps, read_manifest, verify
from obs_dist.storage import open_store

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).parent / "support" / "ckpt_driver.py"
pytestmark = pytest.mark.slow  # several multi-process training runs

STEPS, HALF, EVERY = 12, 6, 3
TIMEOUT = 180.0


def _launch(out: Path, args: list[str], world: int) -> list[subprocess.Popen[bytes]]:
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        log = (out / f"log-rank{rank}.txt").open("ab")
        procs.append(subprocess.Popen(
            [sys.executable, str(DRIVER), "--out", str(out), "--steps", str(STEPS), "--every",
             str(EVERY), "--layout", "sharded", *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs: list[subprocess.Popen[bytes]], out: Path) -> list[int]:
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=TIMEOUT))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(-1)
    return codes


def _logs(out: Path, world: int) -> str:
    return "\n".join((out / f"log-rank{r}.txt").read_text()[-3000:] for r in range(world))


def _final(out: Path, rank: int) -> Any:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # noqa: F401  (its optimizer state holds LossScaler objects)

    from obs_dist.checkpoint.manager import register_engine_classes

    register_engine_classes()
    return decode_from_objects((out / f"final-rank{rank}.json").read_bytes(),
                               (out / f"final-rank{rank}.safetensors").read_bytes(), str(out))


def test_sharded_sigkill_and_resume_is_bit_identical(tmp_path: Path) -> None:
    world = 2
    ref_out = tmp_path / "reference"
    reference = _launch(ref_out, ["--url", str(tmp_path / "ref-store"), "--resume", "never"],
                        world)
    store_dir = tmp_path / "store"
    killed = tmp_path / "killed"
    procs = _launch(killed, ["--url", str(store_dir), "--pause-after", str(HALF)], world)
    deadline = time.monotonic() + TIMEOUT
    while not all((killed / f"paused-rank{r}").exists() for r in range(world)):
        assert all(p.poll() is None for p in procs), _logs(killed, world)
        assert time.monotonic() < deadline, "the run never paused"
        time.sleep(0.05)
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
    assert [p.wait(timeout=30) for p in procs] == [-signal.SIGKILL] * world
    resumed = tmp_path / "resumed"
    assert _wait(_launch(resumed, ["--url", str(store_dir)], world), resumed) == [0] * world, \
        _logs(resumed, world)
    assert _wait(reference, ref_out) == [0] * world, _logs(ref_out, world)
    for rank in range(world):
        assert_identical(_final(resumed, rank), _final(ref_out, rank), f"rank{rank}")
    results = [json.loads((resumed / f"result-rank{r}.json").read_text()) for r in range(world)]
    assert [r["resumed_from"] for r in results] == [HALF] * world
    # The manifest lists every rank's slice; bases and slice logs both occurred.
    store = open_store(str(store_dir))
    steps = list_steps(store)
    assert steps[-1] == STEPS
    manifests = [read_manifest(store, s) for s in steps]
    last = manifests[-1]
    assert last.state["layout"] == "sharded"
    assert [s["rank"] for s in last.state["slices"]] == list(range(world))
    assert [s["col_end"] - s["col_start"] for s in last.state["slices"]] == [96, 96]
    assert len(last.base) == world and all(f"slice-{r:05d}" in last.base[r]
                                           for r in range(world))
    assert any(m.kind == "incremental" and len(m.logs) % world == 0 and m.logs
               for m in manifests)
    assert not verify(store, last)
    # Another world size is refused, with a message that says why.
    other = tmp_path / "other-world"
    codes = _wait(_launch(other, ["--url", str(store_dir), "--resume", str(STEPS)], 1), other)
    assert codes == [1] or codes[0] != 0
    assert "2 column slices (one per rank), this run has 1 rank(s)" in _logs(other, 1)
