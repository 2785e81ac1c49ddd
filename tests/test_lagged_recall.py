"""``model.stream.recall_from = "previous_window"``: training recalls a window-old state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from obs_dist.model.av_stream import AVStreamModel
from obs_dist.model.lagged_recall import LaggedRecall
from obs_dist.model.model import ModelConfig, StreamConfig
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.window import WindowMemory
from obs_dist.model.writer import WriterConfig

NODES = 256


def _model(**stream: object) -> AVStreamModel:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="av", d_model=16, n_mels=8, image_size=16,
                      writer=WriterConfig(k_max=4, active=8, backward_links=True),
                      stream=StreamConfig(embed=8, **stream))  # type: ignore[arg-type]
    return AVStreamModel(cfg, NODES)


def _batch(b: int = 2, t: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(b, t, 8, 21, generator=g) - 8.0
    audio[:, ::2, :, 5:15] += 6.0  # every other clip loud (speech)
    return {"audio": audio,
            "video": torch.randint(0, 255, (b, t, 2, 3, 16, 16), generator=g, dtype=torch.uint8),
            "audio_mask": torch.ones(b, t, dtype=torch.bool),
            "video_mask": torch.ones(b, t, dtype=torch.bool)}


def test_each_window_reads_the_state_as_the_previous_window_began() -> None:
    lag = LaggedRecall()
    base = torch.zeros(8, 8)
    lag.begin_window(base)  # the first window: nothing older, it reads the state as it is
    assert lag.lagged is not None and torch.equal(lag.lagged, base)
    base[1, 2] = 1.0  # the first window's commit, in place
    lag.begin_window(base)
    assert lag.lagged is not None and float(lag.lagged.abs().sum()) == 0.0  # not yet seen
    base[3, 4] = 2.0
    lag.begin_window(base)
    assert lag.lagged is not None and float(lag.lagged[1, 2]) == 1.0
    assert float(lag.lagged[3, 4]) == 0.0  # the last window's commit is still unseen
    rows, weights = torch.tensor([[1, 3]]), torch.tensor([[0.5, 2.0]])
    want = F.embedding_bag(rows, lag.lagged, per_sample_weights=weights, mode="sum")
    assert torch.equal(lag.read(rows, weights, norm=False), want)
    assert torch.equal(lag.read(rows, weights, norm=True),
                       want / (1.0 + lag.lagged.abs().sum(0)))


def test_a_read_needs_a_window_and_a_dense_state() -> None:
    with pytest.raises(RuntimeError, match="begin_window"):
        LaggedRecall().read(torch.tensor([[0]]), torch.tensor([[1.0]]), norm=False)
    with pytest.raises(ValueError, match="dense committed state"):
        LaggedRecall().begin_window(None)


def test_the_hearing_step_does_not_read_this_windows_writes() -> None:
    model = _model(recall_from="previous_window")
    model.train()
    memory = WindowMemory(BigState(StateConfig(nodes=NODES, partitions=2,
                                               init_std=0.0)).matrix(), 2)
    assert model.lagged_recall is not None
    model.lagged_recall.begin_window(memory.base)
    f = torch.randn(2, 16)
    carry = model.initial_carry(2, "cpu")
    _, carry, _, _ = model._state_step(f, memory, carry, recall=False)
    _, carry, _, _ = model._state_step(f, memory, carry, recall=False)  # links written
    current, _, _, _ = model._state_step(f, memory, carry, recall=True)
    lagged, _, _, _ = model._state_step(f, memory, carry, recall=True,
                                        lag=model.lagged_recall)
    assert current is not None and float(current.detach().abs().sum()) > 0  # sees the window
    assert lagged is not None and float(lagged.detach().abs().sum()) == 0  # the empty older state


def test_training_windows_read_a_window_old_state_and_evaluation_the_current() -> None:
    model = _model(recall_from="previous_window")
    state = BigState(StateConfig(nodes=NODES, partitions=2, init_std=0.0))
    batch = _batch()
    lag = model.lagged_recall
    assert lag is not None
    model.eval()
    with torch.no_grad():
        model.window_objective(batch, WindowMemory(state.matrix(), 2),
                               model.initial_carry(2, "cpu"))
    assert lag.lagged is None  # a study pass or a trial reads the state as it is
    model.train()
    committed = []
    for _ in range(3):
        committed.append(state.matrix().clone())
        memory = WindowMemory(state.matrix(), 2)
        out = model.window_objective(batch, memory, model.initial_carry(2, "cpu"))
        assert torch.isfinite(out.loss_sum)
        state.apply(memory.to_delta())
        assert lag.lagged is not None
        assert torch.equal(lag.lagged, committed[max(len(committed) - 2, 0)])
    # Each window wrote, so "a window old" differs from "as this window began".
    assert float(committed[1].abs().sum()) > 0 and not torch.equal(committed[1], committed[2])


def test_recall_from_is_validated() -> None:
    with pytest.raises(ValueError, match="recall_from"):
        StreamConfig(recall_from="yesterday")
