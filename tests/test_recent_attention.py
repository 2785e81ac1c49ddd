"""Attention over the recent clips: the word–referent peer whose memory is a context window."""

from __future__ import annotations

import pytest
import torch

from obs_dist.model.model import StreamConfig
from obs_dist.model.recent_attention import RecentAttention


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


def test_the_peer_without_a_state_is_the_only_one_with_attention() -> None:
    with pytest.raises(ValueError, match="state_path"):
        StreamConfig(recent=16)
    with pytest.raises(ValueError, match="negative_gap"):
        StreamConfig(state_path=False, recent=8, negative_gap=8)
    with pytest.raises(ValueError, match="recent"):
        StreamConfig(state_path=False, recent=-1)


def test_matching_by_the_features_finds_the_same_sound_whatever_the_recording_shares() -> None:
    att = RecentAttention(4, 3, match="features")
    assert att.query is None and att.key is None
    room = torch.tensor([5.0, 5.0, 0.0, 0.0])  # what every clip of the recording shares
    sounds = room + torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0],
                                  [0, 0, 0, 1.0]])
    pictures = torch.eye(3)[[0, 1, 2, 0]]
    allowed = torch.ones(2, 4, dtype=torch.bool)
    heard = sounds[[2, 1]] + 0.05  # clips 2 and 1 heard again, slightly otherwise
    logits = att.match_logits(heard, sounds, allowed)
    centred = sounds - sounds.mean(0)
    expect = torch.nn.functional.cosine_similarity(
        (heard - sounds.mean(0))[:, None], centred[None], dim=-1) * 10.0
    torch.testing.assert_close(logits, expect, rtol=1e-5, atol=1e-5)
    assert logits.argmax(1).tolist() == [2, 1]
    retrieved = att.read(heard, sounds, pictures, allowed)
    assert att.scores(retrieved, torch.eye(3)).argmax(1).tolist() == [2, 1]
    # Each query is centred over its own context (another recording's clips are not in it).
    mine = torch.tensor([[True, True, False, False], [False, False, True, True]])
    one = att.match_logits(heard[:1], sounds[:2], mine[:1, :2])
    torch.testing.assert_close(att.match_logits(heard, sounds, mine)[0, :2], one[0])
    att.read(heard, sounds, pictures, allowed).sum().backward()
    assert att.sharpness.grad is not None and att.sharpness.grad != 0
    with pytest.raises(ValueError, match="recent_match"):
        StreamConfig(state_path=False, recent=16, recent_match="nearest")
