"""Replay: recorded firing sequences are the window's writes, and consolidation replays them."""

from __future__ import annotations

import torch

from obs_dist.model.model import ModelConfig, OBSModel
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.window import WindowMemory
from obs_dist.model.writer import WriterConfig
from obs_dist.replay import (
    FiringRecorder,
    FiringSequence,
    ReplayBuffer,
    ReplayConfig,
    ReplayHook,
    firing_delta,
)
from obs_dist.tasks.continual import ContinualConfig, make_world, study_batches
from obs_dist.trainer import TrainConfig, Trainer

TASK = ContinualConfig(sets=2, objects_per_set=4, names=8, distractors=4, batch=6)


def _trainer() -> Trainer:
    torch.manual_seed(0)
    writer = WriterConfig(k_max=4, active=4, key_dim=8)
    model = OBSModel(ModelConfig(d_model=16, vocab=TASK.input_vocab, classes=TASK.classes,
                                 writer=writer), 64)
    state = BigState(StateConfig(nodes=64, partitions=2))
    cfg = TrainConfig(steps=10, lr=5e-3, warmup=1, progress=False)
    return Trainer(cfg, model, state, commit=True)


def test_reservoir_keeps_capacity_and_samples_all_history() -> None:
    buf = ReplayBuffer(capacity=50, seed=1)
    for i in range(1000):
        buf.add(FiringSequence({}, {}, tag=i // 100))
    assert len(buf) == 50 and buf.seen == 1000
    tags = buf.tags()
    assert len(tags) >= 7  # a uniform sample of ten tags, not the last ones only
    assert len(buf.sample(80)) == 50


def test_recorded_firing_of_every_stream_replays_the_window_delta_exactly() -> None:
    trainer = _trainer()
    buf = ReplayBuffer(capacity=100)
    recorder = FiringRecorder(buf, streams_per_window=TASK.batch)
    recorder.attach(trainer.model)
    batch = next(study_batches(TASK, make_world(TASK), 0))
    memory = WindowMemory(trainer.state.matrix(), TASK.batch)
    trainer.model.forward_window(batch, memory, trainer.model.initial_carry(TASK.batch, "cpu"))
    assert len(buf) == TASK.batch
    assert buf.items[0].inputs["tokens"].shape == (TASK.study_length,)
    expected = memory.to_delta()
    replayed = firing_delta(buf.items, 64, gain=1.0)
    assert torch.equal(replayed.rows, expected.rows) and torch.equal(replayed.cols, expected.cols)
    torch.testing.assert_close(replayed.values, expected.values, atol=1e-6, rtol=1e-5)
    doubled = firing_delta(buf.items, 64, gain=2.0)
    torch.testing.assert_close(doubled.values, 2 * expected.values, atol=1e-6, rtol=1e-5)


def test_eval_mode_windows_are_not_recorded() -> None:
    trainer = _trainer()
    buf = ReplayBuffer(capacity=10)
    FiringRecorder(buf, 2).attach(trainer.model)
    trainer.model.eval()
    batch = next(study_batches(TASK, make_world(TASK), 0))
    with torch.no_grad():
        trainer.model.forward_window(batch, WindowMemory(trainer.state.matrix(), TASK.batch),
                                     trainer.model.initial_carry(TASK.batch, "cpu"))
    assert len(buf) == 0


def test_hook_consolidates_by_writes_and_by_training() -> None:
    trainer = _trainer()
    hook = ReplayHook(ReplayConfig(capacity=32, streams_per_window=2, every=3, replays=4,
                                   mode="both"), trainer)
    trainer.hooks.add("replay", hook, stage="state")
    batches = study_batches(TASK, make_world(TASK), 0)
    trainer.cfg.steps = 2
    trainer.fit(batches)
    assert hook.consolidations == 0 and len(hook.buffer) == 4
    before_state = trainer.state.matrix().clone()
    before_weights = [p.detach().clone() for p in trainer.model.parameters()]
    carry = trainer.carry
    entries_before = trainer.counters["committed_entries_total"]
    trainer.cfg.steps = 3
    trainer.fit(batches)  # step 3 is due: one consolidation
    assert hook.consolidations == 1 and hook.replayed_steps == 1
    assert hook.replayed_entries > 0
    assert trainer.counters["committed_entries_total"] > entries_before + hook.replayed_entries - 1
    assert not torch.equal(trainer.state.matrix(), before_state)
    assert any(not torch.equal(a, b) for a, b in zip(before_weights, trainer.model.parameters()))
    assert trainer.carry is not None and carry is not None
    assert trainer.carry.ids.shape == carry.ids.shape  # the stream carry survived the replay
    assert len(hook.buffer) == 6  # replayed windows are not recorded again


def test_replay_writes_reinforce_what_was_recorded() -> None:
    trainer = _trainer()
    hook = ReplayHook(ReplayConfig(capacity=8, streams_per_window=1, every=0, replays=8,
                                   gain=1.0, mode="writes"), trainer)
    trainer.hooks.add("replay", hook, stage="state")
    trainer.cfg.steps = 1
    trainer.fit(study_batches(TASK, make_world(TASK), 0))
    expected = firing_delta(hook.buffer.items, 64, 1.0)
    before = trainer.state.matrix().clone()
    out = hook.consolidate(trainer)
    assert out["entries"] == expected.nnz > 0
    change = trainer.state.matrix() - before
    torch.testing.assert_close(change[expected.rows.long(), expected.cols.long()],
                               expected.values, atol=1e-6, rtol=1e-5)
    assert int((change != 0).sum()) == expected.nnz
