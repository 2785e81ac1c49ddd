"""Item 1 of issue #15: one writer per checkpoint store, and resume only of one's own run.

A run leases its store (``lease.json``); a second writer with another run id
is refused, naming the owner; a lease not renewed for ``lease_s`` is taken
over; manifests record the run id and ``--resume auto`` continues only the
same run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.tiny_run import obs, tiny_args

from obs_dist.checkpoint.lease import (
    LEASE_KEY,
    StoreInUse,
    acquire,
    read_lease,
    release,
    renew,
    run_identity,
)
from obs_dist.storage import LocalStore


def test_second_writer_is_refused_naming_the_owner(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "ckpt")
    acquire(store, "run-a", lease_s=60.0)
    with pytest.raises(StoreInUse, match=rf"in use by run 'run-a' \(host .*, pid {os.getpid()}"):
        acquire(store, "run-b", lease_s=60.0)
    acquire(store, "run-a", lease_s=60.0)  # the same run (a restart) takes it back
    assert renew(store, "run-a") is None
    assert "taken by run 'run-a'" in (renew(store, "run-b") or "")
    release(store, "run-a")
    acquire(store, "run-b", lease_s=60.0)  # released: free for the next run
    assert (read_lease(store) or {})["run_id"] == "run-b"


def test_expired_lease_is_taken_over(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "ckpt")
    acquire(store, "run-a", lease_s=60.0)
    doc = json.loads(store.get_bytes(LEASE_KEY))
    doc["renewed"] -= 120.0
    store.put_bytes(LEASE_KEY, json.dumps(doc).encode())
    acquire(store, "run-b", lease_s=60.0)
    assert (read_lease(store) or {})["run_id"] == "run-b"


def test_run_identity_ignores_what_may_change_on_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OBS_RUN_ID", raising=False)
    base = {"out_dir": "a", "train": {"lr": 0.1, "log_every": 10}}
    same = {"out_dir": "b", "train": {"lr": 0.1, "log_every": 1}}
    assert run_identity(base) == run_identity(same)
    assert run_identity(base) != run_identity({**base, "train": {"lr": 0.2, "log_every": 10}})
    monkeypatch.setenv("OBS_RUN_ID", "job-7")
    assert run_identity(base) == "job-7"


def test_obs_train_refuses_a_store_leased_by_another_run(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    acquire(LocalStore(ckpt), "someone-else", lease_s=3600.0)
    proc = obs(*tiny_args(tmp_path, 2, f"checkpoint.url={ckpt}"), "--resume", "never")
    assert proc.returncode == 2, proc.stderr
    assert "obs: error: checkpoint.url" in proc.stderr and "'someone-else'" in proc.stderr
    assert not list(ckpt.glob("manifests/*.json"))


def test_resume_auto_continues_only_the_same_run(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "ckpt"
    args = tiny_args(tmp_path, 2, f"checkpoint.url={ckpt}")
    monkeypatch.setenv("OBS_RUN_ID", "run-a")
    proc = obs(*args, "--resume", "never")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(next(ckpt.glob("manifests/*.json")).read_text())
    assert manifest["run_id"] == "run-a"
    assert (read_lease(LocalStore(ckpt)) or {}).get("released")  # the run ended: released
    monkeypatch.setenv("OBS_RUN_ID", "run-b")
    proc = obs(*args, "--resume", "auto")
    assert proc.returncode == 2, proc.stderr
    assert "written by run 'run-a', this run is 'run-b'" in proc.stderr
    proc = obs(*args, "--resume", "2")  # named explicitly: allowed
    assert proc.returncode == 0, proc.stderr
