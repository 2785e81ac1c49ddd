"""Checkpoints in real stores, in process: chains of logs, damage, retention, S3 faults, CLI."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from support.ckpt_driver import run_config
from support.s3_server import FaultyProxy, needs_moto

from launch.cli import main
from launch.runner import build_model
from obs_dist.checkpoint.format import (
    CheckpointCorrupt,
    list_steps,
    log_key,
    manifest_key,
    rank_keys,
    read_manifest,
    verify,
)
from obs_dist.checkpoint.manager import CheckpointConfig, Checkpointer, attach_checkpointing
from obs_dist.config import to_dict
from obs_dist.storage import ObjectStore, open_store
from obs_dist.tasks import ResumableTaskStream
from obs_dist.trainer import Trainer

Snapshot = tuple[list[int], dict[str, torch.Tensor]]


def _trainer(steps: int, nodes: int = 96) -> tuple[Trainer, ResumableTaskStream]:
    cfg = run_config(steps, nodes)
    model, state = build_model(cfg, torch.device("cpu"))
    return Trainer(cfg.train, model, state, commit=True), ResumableTaskStream(cfg.task)


def _snapshot(trainer: Trainer) -> Snapshot:
    return trainer.state.checksums(), {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _train(store: ObjectStore, steps: int = 8, every: int = 2, fraction: float = 0.5,
           keep: int = 2, before_save: Any = None
           ) -> tuple[Trainer, Checkpointer, dict[int, Snapshot]]:
    """Train with checkpoints; snapshots of the state and weights after every checkpoint."""
    trainer, stream = _trainer(steps)
    if before_save is not None:
        trainer.hooks.add("before_save", before_save, stage="state")
    ckpt = attach_checkpointing(
        trainer, CheckpointConfig(every=every, base_every_fraction=fraction, keep_bases=keep),
        extra_state={"data": stream}, rank=0, world=1, store=store,
        config=to_dict(run_config(steps, 96)))
    snaps: dict[int, Snapshot] = {}

    def record(tr: Trainer, metrics: dict[str, float]) -> None:
        if tr.step % every == 0:
            snaps[tr.step] = _snapshot(tr)
            assert (metrics["ckpt_age_s"] < 60 and metrics["ckpt_seconds"] > 0
                    and metrics["ckpt_bytes"] > 0) or ckpt.failures

    trainer.hooks.add("record", record, stage="report")
    trainer.fit(stream)
    return trainer, ckpt, snaps


def _resume(store: ObjectStore, spec: str = "auto", steps: int = 8, nodes: int = 96,
            world: int = 1) -> tuple[Trainer, int | None, ResumableTaskStream]:
    trainer, stream = _trainer(steps, nodes)
    ckpt = attach_checkpointing(trainer, CheckpointConfig(every=2), rank=0, world=world,
                                extra_state={"data": stream}, store=store)
    return trainer, ckpt.resume(spec), stream


def _same(trainer: Trainer, snap: Snapshot) -> bool:
    checks, weights = snap
    return trainer.state.checksums() == checks and all(
        torch.equal(v, weights[k]) for k, v in trainer.model.state_dict().items())


def test_chain_of_bases_and_logs_resumes_and_continues_exactly(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "ckpt"))
    trainer, _, snaps = _train(store, steps=8, every=2, fraction=0.5, keep=10)
    kinds = [read_manifest(store, s).kind for s in list_steps(store)]
    assert list_steps(store) == [2, 4, 6, 8]
    assert "base" in kinds and "incremental" in kinds, kinds
    resumed, step, _ = _resume(store)
    assert step == 8 and resumed.step == 8 and _same(resumed, snaps[8])
    # From an older checkpoint, training on reproduces the original run bit for bit.
    middle, step, stream = _resume(store, spec="4")
    assert step == 4 and _same(middle, snaps[4])
    middle.fit(stream)
    assert _same(middle, _snapshot(trainer))
    assert middle.counters == trainer.counters


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Snapshot]]:
    """A store with checkpoints at steps 2, 4, 6, 8 (one base, then logs) and snapshots."""
    root = tmp_path_factory.mktemp("pristine")
    _, _, snaps = _train(open_store(str(root)), steps=8, every=2, fraction=100.0)
    return root, snaps


@pytest.mark.parametrize("damage", ["log", "rank", "manifest", "missing"])
def test_damaged_newest_checkpoint_is_named_and_the_previous_one_used(
        tmp_path: Path, pristine: tuple[Path, dict[int, Snapshot]], damage: str,
        caplog: pytest.LogCaptureFixture) -> None:
    shutil.copytree(pristine[0], tmp_path / "ckpt")
    store, snaps = open_store(str(tmp_path / "ckpt")), pristine[1]
    key = {"log": log_key(8), "rank": rank_keys(8, 0)[1], "manifest": manifest_key(8),
           "missing": log_key(8)}[damage]
    path = Path(store.url_for(key))
    if damage == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01  # one flipped bit
        path.write_bytes(bytes(data))
    if damage != "manifest":
        problems = verify(store, read_manifest(store, 8))
        assert len(problems) == 1 and key in problems[0], problems
    with caplog.at_level(logging.WARNING, logger="obs.checkpointing"):
        resumed, step, _ = _resume(store)
    assert step == 6 and _same(resumed, snaps[6])
    assert any(key in r.getMessage() and "step 8" in r.getMessage() for r in caplog.records)
    with pytest.raises(CheckpointCorrupt, match=key.split("/")[-1]):
        _resume(store, spec="8")


def test_resume_from_a_named_checkpoint_of_another_store(
        tmp_path: Path, pristine: tuple[Path, dict[int, Snapshot]]) -> None:
    own = open_store(str(tmp_path / "own"))
    trainer, stream = _trainer(8)
    ckpt = attach_checkpointing(trainer, CheckpointConfig(every=2), rank=0, world=1,
                                extra_state={"data": stream}, store=own)
    assert ckpt.resume(str(pristine[0] / manifest_key(6))) == 6
    assert _same(trainer, pristine[1][6])
    manifest = ckpt.save(force_base=False)  # step 6 again, but in our own store: a base
    assert manifest is not None and manifest.kind == "base" and list_steps(own) == [6]
    with pytest.raises(ValueError, match="no checkpoint in"):
        ckpt.resume(str(tmp_path / "elsewhere"))


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(
        tmp_path: Path, pristine: tuple[Path, dict[int, Snapshot]]) -> None:
    shutil.copytree(pristine[0], tmp_path / "ckpt")
    store = open_store(str(tmp_path / "ckpt"))
    base = read_manifest(store, 2).base[0]
    Path(store.url_for(base)).write_bytes(b"not a tensor")  # every checkpoint needs it
    with pytest.raises(ValueError, match=r"no usable checkpoint.*step 8.*part-0000.*step 2"):
        _resume(store)
    empty = open_store(str(tmp_path / "empty"))
    assert _resume(empty)[1] is None


def test_checkpoint_of_another_shape_is_refused_by_name(
        pristine: tuple[Path, dict[int, Snapshot]]) -> None:
    store = open_store(str(pristine[0]))
    with pytest.raises(ValueError, match=r"state.nodes = 96, this run has 128"):
        _resume(store, nodes=128)
    with pytest.raises(ValueError, match="written by 1 rank"):
        _resume(store, world=2)


def test_retention_keeps_the_last_bases_and_sweeps_orphans(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "ckpt"))
    store.put_bytes("step-0000000001/rank-00000.json", b"{}")  # a dead upload, old
    store.put_bytes("step-0000000099/rank-00000.json", b"{}")  # newer than us: kept
    store.put_bytes("notes.txt", b"not ours")
    _, _, snaps = _train(store, steps=8, every=2, fraction=1e-6, keep=2)
    assert list_steps(store) == [6, 8]  # every checkpoint is a base; two kept
    keys = store.list()
    assert not any(k.startswith(("state/base-0000000002", "state/base-0000000004",
                                 "step-0000000002", "step-0000000004", "step-0000000001"))
                   for k in keys), keys
    assert "step-0000000099/rank-00000.json" in keys and "notes.txt" in keys
    assert all(not verify(store, read_manifest(store, s)) for s in (6, 8))
    resumed, step, _ = _resume(store)
    assert step == 8 and _same(resumed, snaps[8])


def test_logs_grow_until_the_fraction_then_a_new_base(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "ckpt"))
    _, ckpt, _ = _train(store, steps=8, every=1, fraction=0.25, keep=5)
    manifests = [read_manifest(store, s) for s in list_steps(store)]
    state_bytes = manifests[0].state["nbytes"]
    assert sum(m.kind == "base" for m in manifests) >= 2
    for m in manifests:
        assert m.log_bytes <= 0.25 * state_bytes
        if m.kind == "incremental":  # a log costs what changed: 12 B per touched entry
            assert 0 < m.touched * 12 <= m.objects[log_key(m.step)]["size"] <= m.touched * 12 + 512
    assert ckpt.failures == 0


@needs_moto
def test_s3_throttling_resets_and_truncation_are_retried(
        moto_server: Any, s3_bucket: str, faulty_proxy: FaultyProxy) -> None:
    store = open_store(f"s3://{s3_bucket}/run", endpoint_url=faulty_proxy.url, backoff_s=0.01)

    def inject(tr: Trainer, metrics: dict[str, float]) -> None:
        if tr.step == 4:  # during the second checkpoint's upload
            faulty_proxy.fail_next(2, "503", "PUT")
            faulty_proxy.fail_next(1, "reset", "PUT")

    _, ckpt, snaps = _train(store, steps=4, every=2, before_save=inject)
    assert ckpt.failures == 0 and list_steps(store) == [2, 4]
    faulty_proxy.fail_next(2, "503", "GET")
    faulty_proxy.fail_next(1, "truncate", "GET")
    resumed, step, _ = _resume(store)
    assert step == 4 and _same(resumed, snaps[4])
    assert faulty_proxy.injected == {"503": 4, "reset": 1, "truncate": 1}


@needs_moto
def test_s3_failure_past_retries_skips_one_checkpoint_and_the_next_covers_it(
        moto_server: Any, s3_bucket: str, faulty_proxy: FaultyProxy) -> None:
    store = open_store(f"s3://{s3_bucket}/run", endpoint_url=faulty_proxy.url, retries=0)

    def inject(tr: Trainer, metrics: dict[str, float]) -> None:
        if tr.step == 4:
            faulty_proxy.fail_next(1, "503", "PUT")

    _, ckpt, snaps = _train(store, steps=6, every=2, fraction=100.0, before_save=inject)
    assert ckpt.failures == 1 and list_steps(store) == [2, 6]
    assert read_manifest(store, 6).logs == [log_key(6)]  # entries of steps 3..6 in one log
    resumed, step, _ = _resume(store, steps=6)
    assert step == 6 and _same(resumed, snaps[6])


# ---------------------------------------------------------------- obs ckpt / obs bench
def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    rc = main(argv)
    return rc, json.loads(capsys.readouterr().out)


def test_ckpt_list_and_inspect(pristine: tuple[Path, dict[int, Snapshot]],
                               capsys: pytest.CaptureFixture[str]) -> None:
    root = str(pristine[0])
    rc, out = _json(capsys, ["ckpt", "list", root, "--json"])
    assert rc == 0
    assert [(r["step"], r["kind"], r["logs"]) for r in out["results"]] == [
        (2, "base", 0), (4, "incremental", 1), (6, "incremental", 2), (8, "incremental", 3)]
    assert all(r["bytes"] <= r["total_bytes"] for r in out["results"])
    rc, one = _json(capsys, ["ckpt", "inspect", root, "--step", "4", "--json"])
    assert rc == 0 and one["logs"] == [log_key(4)] and one["config"]["state"]["nodes"] == 96
    assert main(["ckpt", "inspect", root]) == 0
    text = capsys.readouterr().out
    assert "incremental" in text and log_key(8) in text
    assert main(["ckpt", "inspect", root, "--step", "5"]) == 2
    assert "no checkpoint at step 5" in capsys.readouterr().err


def test_ckpt_verify_names_the_damaged_object(pristine: tuple[Path, dict[int, Snapshot]],
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _json(capsys, ["ckpt", "verify", str(pristine[0]), "--json"])
    assert rc == 0 and out["ok"] and len(out["results"]) == 4
    copy = tmp_path / "copy"
    shutil.copytree(pristine[0], copy)
    damaged = copy / log_key(4)
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert main(["ckpt", "verify", str(copy)]) == 1
    text = capsys.readouterr().out
    assert f"step 4: {damaged}: SHA-256 mismatch" in text
    assert f"step 8: {damaged}" in text  # step 8 replays the same log
    assert "newest verified checkpoint: 2" in text
    assert main(["ckpt", "list", str(tmp_path / "nothing")]) == 0
    assert "no checkpoints" in capsys.readouterr().out


@pytest.mark.parametrize("mode,steps", [("synthetic", 5), ("train", 2)])
def test_bench_checkpoint_reports_bytes_times_and_exact_resume(
        capsys: pytest.CaptureFixture[str], mode: str, steps: int) -> None:
    rc, out = _json(capsys, ["bench", "checkpoint", "--nodes", "256", "--steps", str(steps),
                             "--mode", mode, "--json"])
    assert rc == 0
    assert out["steps"] == steps and out["resume_exact"] is True
    assert out["full_bytes"] > out["state_bytes"] > out["incremental_state_bytes"] > 0
    assert out["incremental_state_bytes"] >= out["touched_entries"] * out["bytes_per_entry"]
    assert out["incremental_within_limit"] is True
    assert out["incremental_state_bytes"] <= 1.2 * out["touched_entries"] * 12 + 2**20
    for key in ("full_seconds", "incremental_seconds", "resume_seconds"):
        assert out[key] > 0
