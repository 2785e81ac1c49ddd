"""The training loop: real learning, commits, refusal of non-finite deltas."""

from __future__ import annotations

import logging

import torch

from launch.run_config import RunConfig
from launch.runner import build_model
from obs_dist.config import from_dict
from obs_dist.model.delta import SparseDelta
from obs_dist.tasks import task_batches
from obs_dist.trainer import Trainer


def _cfg(**sections) -> RunConfig:
    doc = {"state": {"nodes": 1024, "partitions": 2},
           "model": {"d_model": 32, "writer": {"k_max": 8, "active": 16, "key_dim": 32}},
           "task": {"name": "mqar", "vocab": 64, "seq_len": 24, "pairs": 4, "batch": 32},
           "train": {"steps": 80, "lr": 5e-3, "progress": False, "eval_batches": 2}}
    for k, v in sections.items():
        doc[k] = {**doc.get(k, {}), **v}
    return from_dict(RunConfig, doc)


def test_mqar_learns_well_above_chance() -> None:
    cfg = _cfg()
    model, state = build_model(cfg, torch.device("cpu"))
    trainer = Trainer(cfg.train, model, state, commit=False)
    before = state.checksums()
    out = trainer.fit(task_batches(cfg.task), lambda: task_batches(cfg.task, 999))
    # Chance is 1/32 (values are half the vocabulary); the mechanism must work.
    assert out["eval_accuracy"] > 0.6, out
    assert state.checksums() == before  # per-sequence memory never commits


def test_committing_task_changes_state_by_exactly_the_synced_delta() -> None:
    cfg = _cfg(task={"commit": True}, train={"steps": 2})
    model, state = build_model(cfg, torch.device("cpu"))
    seen: list[SparseDelta] = []

    def sync(d: SparseDelta) -> SparseDelta:
        seen.append(d)
        return d

    trainer = Trainer(cfg.train, model, state, commit=True, sync=sync)
    before = state.matrix().clone()
    trainer.fit(task_batches(cfg.task))
    assert len(seen) == 2 and all(d.nnz > 0 for d in seen)
    expected = before.double()
    for d in seen:
        expected.index_put_((d.rows.long(), d.cols.long()), d.values.double(), accumulate=True)
    torch.testing.assert_close(state.matrix().double(), expected, atol=1e-6, rtol=1e-6)
    assert trainer.counters["committed_entries_total"] == sum(d.nnz for d in seen)


def test_nonfinite_commit_is_refused_counted_and_logged(caplog) -> None:
    cfg = _cfg(task={"commit": True}, train={"steps": 1})
    model, state = build_model(cfg, torch.device("cpu"))
    trainer = Trainer(cfg.train, model, state, commit=True)
    sums = state.checksums()
    bad = SparseDelta.from_indices(torch.tensor([1, 2]), torch.tensor([3, 4]),
                                   torch.tensor([0.5, float("inf")]), 1024)
    with caplog.at_level(logging.WARNING, logger="obs.trainer"):
        assert trainer.commit(bad) is False
    assert state.checksums() == sums
    assert trainer.counters["nonfinite_commits_total"] == 1
    assert "NaN/inf" in caplog.text
    good = SparseDelta.from_indices(torch.tensor([1]), torch.tensor([3]), torch.tensor([0.5]),
                                    1024)
    assert trainer.commit(good) is True and state.checksums() != sums


def test_slow_weights_step_is_adamw_with_schedule_and_clip() -> None:
    """The fused AdamW step equals torch's reference (for-loop) AdamW to float rounding."""
    from torch import nn

    from obs_dist.trainer import TorchSlowWeights, TrainConfig

    cfg = TrainConfig(lr=3e-3, weight_decay=0.01, warmup=2, steps=10, grad_clip=0.5)
    torch.manual_seed(0)
    fused = nn.Sequential(nn.Embedding(300, 16), nn.Linear(16, 5))
    plain = nn.Sequential(nn.Embedding(300, 16), nn.Linear(16, 5))
    plain.load_state_dict(fused.state_dict())
    start = [p.detach().clone() for p in fused.parameters()]
    slow = TorchSlowWeights(fused, cfg)
    assert slow.optimizer.param_groups[0]["fused"]
    ref = torch.optim.AdamW(plain.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(ref, slow._factor)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        ids = torch.randint(0, 300, (8, 4), generator=gen)
        for model in (fused, plain):
            model(ids).pow(2).mean().backward()
        slow.step()
        nn.utils.clip_grad_norm_(plain.parameters(), cfg.grad_clip)
        ref.step()
        sched.step()
        ref.zero_grad(set_to_none=True)
    for a, b, before in zip(fused.parameters(), plain.parameters(), start):
        assert float((a.detach() - before).abs().max()) > 1e-3  # it trained
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
