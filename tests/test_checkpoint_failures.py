"""Item 3 of issue #15: checkpoint failures that must change the exit code.

An unwritable store is refused before any training; a run whose final
checkpoint is not written fails (exit 1) with the failure counted, also end to
end when the S3 bucket vanishes under a running ``obs train``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.s3_server import MotoServer, needs_moto
from support.tiny_run import obs, tiny_args

from launch.runner import run_training
from obs_dist.checkpoint.format import list_steps
from obs_dist.checkpoint.manager import CheckpointNotWritten, probe_store
from obs_dist.hooks import NamedHook
from obs_dist.storage import LocalStore, StorageError, open_store


def test_unwritable_local_url_is_refused_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = blocker / "ckpt"
    proc = obs(*tiny_args(tmp_path, 2, f"checkpoint.url={url}"), "--resume", "never")
    assert proc.returncode == 2, proc.stderr
    assert f"obs: error: checkpoint.url {url} cannot be written: " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()  # refused before training


def test_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "ckpt")
    probe_store(store, 0, "x")
    assert store.list() == []


def test_probe_names_the_url_and_the_cause(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(StorageError, match=r"checkpoint.url u cannot be written: .*Error"):
        probe_store(LocalStore(tmp_path / "f" / "c"), 0, "u")


def test_store_failing_at_the_final_save_fails_the_run_and_is_counted(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    steps = 3

    def break_store(trainer: object, metrics: dict[str, float]) -> None:
        if trainer.step == steps:  # after the step's checkpoint stage
            shutil.rmtree(ckpt, ignore_errors=True)
            ckpt.write_text("the store is gone")

    sets = [a for a in tiny_args(tmp_path, steps, f"checkpoint.url={ckpt}",
                                 "checkpoint.every=2")[3:] if a != "--set"]
    with pytest.raises(CheckpointNotWritten, match=r"step 3\) was not written.*"
                                                    r"ckpt_failures_total = 1"):
        run_training("configs/mqar.toml", sets, resume="never",
                     hooks=[NamedHook("break_store", break_store, stage="control")])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["ckpt_failures_total"] == 1.0


def _remove_bucket(moto: MotoServer, bucket: str) -> None:
    """Delete every object of ``bucket`` and the bucket (the run may still be writing)."""
    client = moto.client()
    for _ in range(50):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        try:
            client.delete_bucket(Bucket=bucket)
            return
        except client.exceptions.ClientError as exc:
            if "BucketNotEmpty" not in str(exc):
                raise
    raise AssertionError(f"bucket {bucket} could not be deleted")


@needs_moto
def test_s3_bucket_vanished_mid_run_exits_nonzero_counting_every_failed_save(
        tmp_path: Path, moto_server: MotoServer, s3_bucket: str) -> None:
    steps, every = 40, 10
    url = f"s3://{s3_bucket}/ckpt"
    args = [sys.executable, "-m", "launch.cli",
            *tiny_args(tmp_path, steps, f"checkpoint.url={url}", f"checkpoint.every={every}",
                       f"checkpoint.endpoint_url={moto_server.url}", "checkpoint.retries=1",
                       "checkpoint.patience_s=0"), "--resume", "never"]
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        run = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        watch = open_store(url, endpoint_url=moto_server.url)
        deadline = time.monotonic() + 120
        while not list_steps(watch):
            assert run.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.02)
        _remove_bucket(moto_server, s3_bucket)
        code = run.wait(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = log_path.read_text()
    assert code == 1, text[-3000:]
    assert f"obs: error: the final checkpoint (step {steps}) was not written" in text
    assert "Traceback" not in text
    written = [int(s) for s in re.findall(r"checkpoint s3://\S+ step (\d+) \(", text)]
    assert written and written[-1] < steps, written
    # Every save after the last complete one failed (one error each), and the
    # final save of the last step was tried again at the end and failed too.
    failed = [int(s) for s in re.findall(
        r"ERROR checkpoint at step (\d+): (?!writing retention)", text)]
    assert sorted(set(failed)) == list(range(written[-1] + every, steps + 1, every))
    assert failed.count(steps) == 2, failed
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["ckpt_failures_total"] == len(failed)
