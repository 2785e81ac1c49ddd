"""Item 1 of issue #15: one writer per checkpoint store, and resume only of one's own run.

A run leases its store (``lease.json``); a second writer with another run id
is refused, naming the owner; a lease not renewed for ``lease_s`` is taken
over; manifests record the run id and ``--resume auto`` continues only the
same run. The run holding the lease, the store's single writer, deletes the
``.tmp-*`` leftovers of killed local writes (item 8).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.s3_server import needs_moto
from support.tiny_run import obs, tiny_args

from obs_dist.checkpoint.format import list_steps, read_manifest
from obs_dist.checkpoint.lease import (
    LEASE_KEY,
    StoreInUse,
    acquire,
    collect_leftovers,
    read_lease,
    release,
    renew,
    run_identity,
)
from obs_dist.storage import LocalStore, ObjectStore, open_store


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


def _store(where: str, tmp_path: Path, request: pytest.FixtureRequest
           ) -> tuple[str, list[str], ObjectStore]:
    """(checkpoint.url, extra --set values, the store) of a local or a moto S3 store."""
    if where == "local":
        return str(tmp_path / "ckpt"), [], LocalStore(tmp_path / "ckpt")
    endpoint = request.getfixturevalue("s3_endpoint")
    url = f"s3://{request.getfixturevalue('s3_bucket')}/ckpt"
    return url, [f"checkpoint.endpoint_url={endpoint}"], open_store(url, endpoint_url=endpoint)


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=needs_moto)])
def test_writers_racing_for_an_unleased_store_exactly_one_wins(
        where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _url, _sets, store = _store(where, tmp_path, request)
    won: list[str] = []
    refused: list[str] = []
    gate = threading.Barrier(4)

    def take(run_id: str) -> None:
        gate.wait()
        try:
            acquire(store, run_id, lease_s=60.0)
            won.append(run_id)
        except StoreInUse as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=take, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 3, (won, refused)
    assert all(f"'{won[0]}'" in msg for msg in refused)  # each refusal names the owner
    assert (read_lease(store) or {})["run_id"] == won[0]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=needs_moto)])
def test_two_concurrent_runs_on_one_store_second_refused_first_intact(
        where: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, sets, store = _store(where, tmp_path, request)
    steps = 100
    args = [sys.executable, "-m", "launch.cli",
            *tiny_args(tmp_path / "a", steps, f"checkpoint.url={url}", "checkpoint.every=50",
                       *sets), "--resume", "never"]
    log = (tmp_path / "a.log").open("wb")
    first = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "OBS_RUN_ID": "run-a"})
    try:
        deadline = time.monotonic() + 120
        while read_lease(store) is None:
            assert first.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run took no lease"
            time.sleep(0.1)
        # Paused while the second run tries the store, so the first is surely still a
        # live run then, however fast this machine trains (its lease stays valid for
        # checkpoint.lease_s = 1800 s). Resumed, it must finish untouched.
        first.send_signal(signal.SIGSTOP)
        monkeypatch.setenv("OBS_RUN_ID", "run-b")
        second = obs(*tiny_args(tmp_path / "b", steps, f"checkpoint.url={url}", *sets),
                     "--resume", "never")
        assert first.poll() is None, "the first run ended before the second was refused"
        first.send_signal(signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        assert "is in use by run 'run-a'" in second.stderr and "this run is 'run-b'" in \
            second.stderr
        assert first.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait()
    written = list_steps(store)
    assert written[-1] == steps
    assert {read_manifest(store, s).run_id for s in written} == {"run-a"}
    endpoint = [f"--endpoint-url={sets[0].split('=', 1)[1]}"] if sets else []
    check = obs("ckpt", "verify", url, *endpoint)
    assert check.returncode == 0, check.stdout + check.stderr


def test_leftover_tmp_files_of_killed_writes_are_collected_when_a_run_attaches(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    leftovers = [ckpt / ".tmp-abc123", ckpt / "manifests" / ".tmp-k1ll3d",
                 ckpt / "bases" / "0000000002" / ".tmp-part"]
    kept = [ckpt / "notes.txt", ckpt / "tmp-not-hidden", ckpt / "manifests" / "x.tmp",
            ckpt / ".tmpfoo", ckpt / ".tmp-dir" / "inside"]  # a .tmp-* folder's files stay
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial write")
    proc = obs(*tiny_args(tmp_path, 2, f"checkpoint.url={ckpt}"), "--resume", "never")
    assert proc.returncode == 0, proc.stderr
    assert [p for p in leftovers if p.exists()] == []
    assert all(p.read_bytes() == b"partial write" for p in kept)
    assert f"deleted 3 leftover .tmp-* file(s) of killed writes in {ckpt}" in proc.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["ckpt_leftovers_removed_total"] == 3.0
    assert list(ckpt.rglob(".tmp-*")) == [ckpt / ".tmp-dir"]  # the run's own writes left none
    assert collect_leftovers(LocalStore(tmp_path / "missing")) == 0


@needs_moto
def test_leftover_collection_is_a_no_op_on_s3(s3_endpoint: str, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/ckpt", endpoint_url=s3_endpoint)
    store.put_bytes(".tmp-looks-like-a-leftover", b"an object, not a partial write")
    assert collect_leftovers(store) == 0
    assert store.list() == [".tmp-looks-like-a-leftover"]
