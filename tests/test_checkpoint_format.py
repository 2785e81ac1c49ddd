"""Checkpoint contents without a store: the pickle-free codec, delta logs, manifests, streams."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from obs_dist.checkpoint.codec import (
    decode_from_objects,
    decode_tree,
    encode_to_objects,
    encode_tree,
    register_plain_class,
)
from obs_dist.checkpoint.delta_log import TouchedEntries, apply_log, encode_log, entry_bytes
from obs_dist.checkpoint.format import CheckpointCorrupt, Manifest, step_of_key
from obs_dist.checkpoint.manager import CheckpointConfig
from obs_dist.checkpoint.rank_state import capture_rng, restore_rng
from obs_dist.model.delta import SparseDelta
from obs_dist.model.state import BigState, StateConfig
from obs_dist.tasks import ResumableTaskStream, TaskConfig, task_batches


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return (isinstance(b, dict) and set(a) == set(b)
                and all(_equal(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(_equal(x, y) for x, y in zip(a, b)))
    return type(a) is type(b) and a == b


def test_optimizer_and_schedule_state_roundtrip_exactly_without_pickle() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    for _ in range(3):
        model(torch.randn(5, 3)).square().sum().backward()
        opt.step()
        sched.step()
    tree = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "model": model.state_dict(), "odd": {"__tensor__": 1, 7: (1.5, None, "x")},
            "np": np.arange(5, dtype=np.uint32), "bf16": torch.ones(3, dtype=torch.bfloat16),
            "scalar": torch.tensor(2.5), "float": 0.1 + 0.2}
    document, tensors = encode_to_objects(tree)
    assert b"__tensor__" in document  # tensors are references in the JSON half
    back = decode_from_objects(document, tensors, "test")
    assert _equal(back, {**tree, "model": dict(tree["model"])})
    # int keys (optimizer "state") and tuples (betas) come back as they were
    assert set(back["optimizer"]["state"]) == {0, 1, 2, 3}
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1.0)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.state_dict()["param_groups"][0]["lr"] == opt.state_dict()["param_groups"][0]["lr"]


def test_codec_refuses_objects_and_names_their_path() -> None:
    with pytest.raises(ValueError, match=r"set at slow/extra/2 without pickle"):
        encode_tree({"slow": {"extra": [1, 2, {3}]}})
    with pytest.raises(ValueError, match="missing tensor 'x'"):
        decode_tree({"__tensor__": "x"}, {})
    with pytest.raises(ValueError, match="not a valid safetensors"):
        decode_from_objects(b"{}", b"garbage", "rank 0 state")


class _Scaler:
    def __init__(self, scale: float) -> None:
        self.cur_scale = scale
        self.dynamic = False
        self.dtype = torch.float16


def test_registered_plain_objects_roundtrip_and_unregistered_are_refused() -> None:
    register_plain_class(_Scaler)
    document, tensors = encode_to_objects({"loss_scaler": _Scaler(128.0), "t": torch.ones(2)})
    back = decode_from_objects(document, tensors, "opt")
    assert isinstance(back["loss_scaler"], _Scaler)
    assert vars(back["loss_scaler"]) == {"cur_scale": 128.0, "dynamic": False,
                                         "dtype": torch.float16}
    forged = document.replace(b"test_checkpoint_format._Scaler", b"os._wrap_close")
    with pytest.raises(ValueError, match="os._wrap_close, which is not registered"):
        decode_from_objects(forged, tensors, "opt")


def test_rng_states_are_captured_and_restored() -> None:
    saved = capture_rng()
    document, tensors = encode_to_objects(saved)
    first = (torch.rand(4), random.random(), np.random.rand(3))
    restore_rng(decode_from_objects(document, tensors, "rng"))
    again = (torch.rand(4), random.random(), np.random.rand(3))
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert np.array_equal(first[2], again[2])


def _random_delta(n: int, gen: torch.Generator, nnz: int = 300) -> SparseDelta:
    r = torch.randint(0, n, (nnz,), generator=gen)
    c = torch.randint(0, n, (nnz,), generator=gen)
    return SparseDelta.from_indices(r, c, torch.randn(nnz, generator=gen) * 0.05, n)


@pytest.mark.parametrize("dtype,clip", [("float32", None), ("bfloat16", 2.0)])
def test_log_of_touched_values_replays_bit_identically(dtype: str, clip: float | None) -> None:
    cfg = StateConfig(nodes=96, partitions=3, dtype=dtype, clip_sigma=clip)
    live = BigState(cfg)
    restored = BigState(cfg)  # the "base": same seed, same initial state
    tracker = TouchedEntries(96)
    detach = tracker.attach(live)
    gen = torch.Generator().manual_seed(0)
    deltas = [_random_delta(96, gen) for _ in range(25)]
    for d in deltas:
        live.apply(d)
    bad = SparseDelta.from_indices(torch.tensor([5]), torch.tensor([6]),
                                   torch.tensor([float("nan")]), 96)
    with pytest.raises(ValueError, match="NaN"):
        live.apply(bad)
    assert tracker.commits == 25  # the refused delta was not recorded
    keys = tracker.keys()
    expected = torch.unique(torch.cat([d.flat_keys() for d in deltas]))
    assert torch.equal(keys, expected)
    blob = encode_log(live, keys)
    assert len(blob) <= keys.numel() * entry_bytes(live.dtype) + 512
    assert apply_log(restored, blob, "log") == keys.numel()
    assert restored.checksums() == live.checksums()
    assert torch.equal(restored.matrix(), live.matrix())
    detach()
    live.apply(deltas[0])
    assert tracker.commits == 25  # detached: no longer recorded


def test_re_adding_summed_increments_would_not_be_exact() -> None:
    # Why logs hold values: a coalesced sum of increments replays differently.
    cfg = StateConfig(nodes=32, partitions=1, dtype="float32")
    live, replay = BigState(cfg), BigState(cfg)
    gen = torch.Generator().manual_seed(1)
    deltas = [_random_delta(32, gen, nnz=400) for _ in range(50)]
    for d in deltas:
        live.apply(d)
    replay.apply(SparseDelta.cat(deltas).coalesce())
    assert not torch.equal(live.matrix(), replay.matrix())


def test_tracker_compaction_keeps_the_exact_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import obs_dist.checkpoint.delta_log as delta_log

    monkeypatch.setattr(delta_log, "COMPACT_AT", 50)
    tracker = TouchedEntries(64)
    gen = torch.Generator().manual_seed(2)
    deltas = [_random_delta(64, gen, nnz=40) for _ in range(30)]
    for d in deltas:
        tracker.record(d)
    assert tracker.count() == torch.unique(torch.cat([d.flat_keys() for d in deltas])).numel()
    tracker.clear()
    assert tracker.count() == 0 and tracker.keys().dtype == torch.int64


def test_apply_log_rejects_foreign_logs() -> None:
    small = BigState(StateConfig(nodes=16, partitions=1))
    big = BigState(StateConfig(nodes=64, partitions=1))
    tracker = TouchedEntries(64)
    tracker.record(SparseDelta.from_indices(torch.tensor([63]), torch.tensor([1]),
                                            torch.tensor([1.0]), 64))
    with pytest.raises(ValueError, match="out of range"):
        apply_log(small, encode_log(big, tracker.keys()), "log-x")
    bf = BigState(StateConfig(nodes=64, partitions=1, dtype="bfloat16"))
    with pytest.raises(ValueError, match="values are torch.float32"):
        apply_log(bf, encode_log(big, tracker.keys()), "log-y")


def _manifest() -> Manifest:
    return Manifest(step=20, base_step=10, world_size=1, state={"nodes": 8},
                    base=["state/base-0000000010/part-0000.safetensors"],
                    logs=["state/log-0000000020.safetensors"],
                    objects={"state/log-0000000020.safetensors": {"size": 3, "sha256": "ab"}})


def test_manifest_roundtrip_and_self_check() -> None:
    m = _manifest()
    data = m.to_bytes()
    assert Manifest.from_bytes(data, "m") == m
    assert m.kind == "incremental" and m.own_bytes() == 3
    tampered = data.replace(b'"size":3', b'"size":4')
    with pytest.raises(CheckpointCorrupt, match="fails its own checksum"):
        Manifest.from_bytes(tampered, "manifests/0000000020.json")
    with pytest.raises(CheckpointCorrupt, match="not valid JSON"):
        Manifest.from_bytes(data[:-5], "manifests/0000000020.json")
    assert step_of_key("state/base-0000000010/part-0000.safetensors") == 10
    assert step_of_key("step-0000000020/rank-00001.json") == 20
    assert step_of_key("README") is None


def test_resumable_stream_matches_task_batches_and_resumes() -> None:
    cfg = TaskConfig(name="association", vocab=16, pairs=3, fixed_mapping=True, batch=2)
    plain = task_batches(cfg, seed_offset=1)
    stream = ResumableTaskStream(cfg, seed_offset=1)
    for _ in range(3):
        a, b = next(plain), next(stream)
        assert all(torch.equal(a[k], b[k]) for k in a)
    saved = stream.state_dict()
    ahead = [next(stream) for _ in range(2)]
    again = ResumableTaskStream(cfg, seed_offset=1)
    document, tensors = encode_to_objects(saved)
    again.load_state_dict(decode_from_objects(document, tensors, "stream"))
    assert again.batches == 3
    assert all(torch.equal(x["tokens"], next(again)["tokens"]) for x in ahead)
    with pytest.raises(ValueError, match="seed"):
        ResumableTaskStream(cfg, seed_offset=2).load_state_dict(saved)
    with pytest.raises(ValueError, match="av"):
        ResumableTaskStream(TaskConfig(name="av"))


@pytest.mark.parametrize("kwargs,key", [({"every": -1}, "every"), ({"keep_bases": 0}, "keep_bases"),
                                        ({"base_every_fraction": 0}, "base_every_fraction"),
                                        ({"url": "gs://x"}, "url"), ({"retries": -1}, "retries")])
def test_checkpoint_config_names_the_bad_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        CheckpointConfig(**kwargs)
