"""Attention over the recent clips: the word–referent peer whose memory is a context window."""

from __future__ import annotations

import pytest
import torch

from obs_dist.model.av_stream import AVStreamModel
from obs_dist.model.model import ModelConfig, StreamConfig
from obs_dist.model.recent_attention import RecentAttention
from obs_dist.model.state import BigState, StateConfig
from obs_dist.model.window import WindowMemory
from obs_dist.model.writer import WriterConfig


def test_a_clip_reads_only_its_recordings_clips_gap_to_span_before() -> None:
    torch.manual_seed(0)
    att = RecentAttention(4, 3)
    fa, values = torch.randn(6, 4), torch.randn(6, 3)
    stream = torch.tensor([0, 0, 0, 0, 1, 1])
    when = torch.tensor([0, 1, 2, 3, 0, 5])
    present = torch.tensor([True, True, True, True, True, True])
    out = att.window_read(fa, values, stream, when, present, gap=2, span=3)
    # Clip 3 (recording 0, t = 3) reads t = 0 and t = 1 only; clip 2 reads t = 0.
    logits = att.query(fa[3]) @ att.key(fa[:2]).t() / 3 ** 0.5
    assert torch.allclose(out[3], torch.softmax(logits, 0) @ values[:2], atol=1e-6)
    assert torch.allclose(out[2], values[0], atol=1e-6)
    # Nothing in reach (too near, too far, or another recording's clip): nothing read.
    assert torch.equal(out[[0, 1, 4, 5]], torch.zeros(4, 3))
    # A clip without its picture is no context.
    present[0] = False
    assert torch.equal(att.window_read(fa, values, stream, when, present, 2, 3)[2],
                       torch.zeros(3))


def test_a_name_heard_with_a_picture_retrieves_that_picture() -> None:
    att = RecentAttention(4, 4)
    with torch.no_grad():
        att.query.weight.copy_(4 * torch.eye(4))
        att.key.weight.copy_(4 * torch.eye(4))
    words = torch.eye(4)  # four names heard, each while one picture was in view
    pictures = torch.eye(4)[[2, 0, 3, 1]]
    allowed = torch.ones(4, 4, dtype=torch.bool)
    retrieved = att.read(words, words, pictures, allowed)
    assert torch.equal(att.scores(retrieved, pictures).argmax(1), torch.arange(4))


def _model(**stream: object) -> AVStreamModel:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="av", d_model=16, n_mels=8, image_size=16,
                      writer=WriterConfig(k_max=4, active=8, backward_links=True),
                      stream=StreamConfig(embed=8, **stream))  # type: ignore[arg-type]
    return AVStreamModel(cfg, 256)


def _batch(b: int = 2, t: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(b, t, 8, 21, generator=g) - 8.0
    audio[:, ::2, :, 5:15] += 6.0  # every other clip has a loud stretch (speech)
    return {"audio": audio,
            "video": torch.randint(0, 255, (b, t, 2, 3, 16, 16), generator=g, dtype=torch.uint8),
            "audio_mask": torch.ones(b, t, dtype=torch.bool),
            "video_mask": torch.ones(b, t, dtype=torch.bool),
            "targets": torch.full((b, t), -100)}


def test_the_attention_peer_trains_its_path_and_answers_from_its_context() -> None:
    model = _model(state_path=False, recent=4, negative_gap=2)
    assert model.writer is None and model.recent is not None
    batch = _batch()
    memory = WindowMemory(BigState(StateConfig(nodes=256, partitions=2)).matrix(), 2)
    out = model.window_objective(batch, memory, model.initial_carry(2, "cpu"))
    assert torch.isfinite(out.loss_sum) and out.scored == 6
    out.loss_sum.backward()
    for p in (model.recent.query.weight, model.recent.key.weight, model.recent.scale):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # At test time a query attends over the clips it is given, and that changes its scores.
    model.eval()
    with torch.no_grad():
        fa, values = model.context_features(batch["audio"][0], batch["video"][0])
        allowed = torch.ones(2, 6, dtype=torch.bool)
        alone = model.probe(batch["audio"][1, :2], None)
        heard = model.probe(batch["audio"][1, :2], None, (fa, values, allowed))
        cands = model.candidates(batch["video"][1])
        assert alone.retrieved is None and heard.retrieved is not None
        assert not torch.allclose(model.answer_scores(alone, cands),
                                  model.answer_scores(heard, cands))


def test_the_peer_without_a_state_is_the_only_one_with_attention() -> None:
    with pytest.raises(ValueError, match="state_path"):
        StreamConfig(recent=16)
    with pytest.raises(ValueError, match="negative_gap"):
        StreamConfig(state_path=False, recent=8, negative_gap=8)
    with pytest.raises(ValueError, match="recent"):
        StreamConfig(state_path=False, recent=-1)
